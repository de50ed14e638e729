"""Least-squares statistics of one consumer of a channel group.

Notation (METHOD.md sec. 1-2): B (N, d) is the consumer's unfolded input, d = n * block, channel j
owning columns ``[j*block, (j+1)*block)``; W (d, m) is the consumer weight and Y (N, m) the target.
"Centered" quantities subtract the column means over the N rows (bias compensation, sec. 4):
``G_c = G - N mu mu^T``, ``C_c = C - N mu ybar^T``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .parallel import all_cores

_ARRAYS = ("b_sum", "y_sum", "weight", "gram", "cross", "rows", "targets")

SINGLE_GRAM_ENTRIES = 1 << 21
"""Row-form statistics whose Gram matrix holds more entries than this form it from float32
products (:meth:`ConsumerStats.as_gram`): only the greedy asks for it, and from this size on the
greedy keeps its factor in float32 anyway (``residual.SINGLE_STATE_ENTRIES``)."""

KEPT_PRODUCT_ENTRIES = 1 << 22
"""Kept-column products (s x (s + m) entries, 32 MiB) that :meth:`ConsumerStats.kept_products`
keeps for the next call; larger ones are made again."""

GRAM_ROWS = 2048
"""Rows per float32 product in :meth:`ConsumerStats.as_gram` (capture's block size)."""


@dataclass(frozen=True, eq=False)
class ConsumerStats:
    """Streaming least-squares statistics of one consumer. Two storage forms:

    Gram form: ``gram`` (d, d) = B^T B, ``cross`` (d, m) = B^T Y, float64.
    Row form (used when N < d): ``rows`` (N, d) = B, ``targets`` (N, m) = Y, float64;
    ``gram``/``cross`` None.
    Always: ``y_sq`` = ||Y||_F^2, ``b_sum`` (d,) column sums of B, ``y_sum`` (m,) column sums of Y,
    ``n_rows`` N, ``block`` columns per channel, ``weight`` (d, m) the consumer's original weight W.

    Arrays are converted to float64 on construction (no copy when they already are).
    ``eq=False``: instances compare by identity (arrays have no boolean equality).
    """

    block: int
    n_rows: int
    y_sq: float
    b_sum: np.ndarray
    y_sum: np.ndarray
    weight: np.ndarray
    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    rows: np.ndarray | None = None
    targets: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=np.float64))
        object.__setattr__(self, "y_sq", float(self.y_sq))
        self._validate()

    @classmethod
    def from_rows(
        cls, rows: np.ndarray, targets: np.ndarray, weight: np.ndarray, block: int
    ) -> ConsumerStats:
        """Row-form statistics of B = ``rows`` (N, d), Y = ``targets`` (N, m), weight W (d, m).

        The sums are computed here; the rows are kept (converted to float64).
        """
        rows = np.asarray(rows, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        if rows.ndim != 2 or targets.ndim != 2:
            raise ValueError(
                f"rows and targets must be 2-D, got shapes {rows.shape} and {targets.shape}"
            )
        return cls(
            block=block,
            n_rows=rows.shape[0],
            y_sq=float(np.sum(targets * targets)),
            b_sum=rows.sum(axis=0),
            y_sum=targets.sum(axis=0),
            weight=weight,
            rows=rows,
            targets=targets,
        )

    @classmethod
    def from_gram(
        cls,
        gram: np.ndarray,
        cross: np.ndarray,
        *,
        y_sq: float,
        b_sum: np.ndarray,
        y_sum: np.ndarray,
        n_rows: int,
        weight: np.ndarray,
        block: int,
    ) -> ConsumerStats:
        """Gram-form statistics: ``gram`` (d, d) = B^T B, ``cross`` (d, m) = B^T Y, and sums."""
        return cls(
            block=block,
            n_rows=n_rows,
            y_sq=y_sq,
            b_sum=b_sum,
            y_sum=y_sum,
            weight=weight,
            gram=gram,
            cross=cross,
        )

    def as_gram(self) -> ConsumerStats:
        """The same statistics in Gram form (itself when already so): G = B^T B (d, d) and
        C = B^T Y (d, m) from the rows; above :data:`SINGLE_GRAM_ENTRIES` as capture accumulates
        them, float32 products over :data:`GRAM_ROWS` rows at a time summed in float64 (within
        1e-6 of the largest entry; half the time of float64 products: 0.7 -> 0.35 s for ResNet-50's
        last 3 x 3 convs)."""
        if not self.is_row_form:
            return self
        with all_cores(float(self.n_rows) * self.d * (self.d + self.m)):
            if self.d * self.d <= SINGLE_GRAM_ENTRIES:
                gram, cross = self.rows.T @ self.rows, self.rows.T @ self.targets
            else:
                gram, cross = np.zeros((self.d, self.d)), np.zeros((self.d, self.m))
                for start in range(0, self.n_rows, GRAM_ROWS):
                    rows = self.rows[start : start + GRAM_ROWS].astype(np.float32)
                    gram += rows.T @ rows
                    cross += rows.T @ self.targets[start : start + GRAM_ROWS].astype(np.float32)
        return ConsumerStats.from_gram(gram, cross, y_sq=self.y_sq,
                                       b_sum=self.b_sum, y_sum=self.y_sum, n_rows=self.n_rows,
                                       weight=self.weight, block=self.block)

    # ----------------------------------------------------------------------------- shapes
    @property
    def d(self) -> int:
        """Number of input columns, n_channels * block."""
        return self.weight.shape[0]

    @property
    def m(self) -> int:
        """Number of output columns of the consumer."""
        return self.weight.shape[1]

    @property
    def entries(self) -> int:
        """d x (d + m): the entries of the Gram-form statistics, what a fit on them reads."""
        return self.d * (self.d + self.m)

    @property
    def n_channels(self) -> int:
        """Number of producer channels n."""
        return self.d // self.block

    @property
    def is_row_form(self) -> bool:
        """True when the statistics hold the rows themselves rather than Gram matrices."""
        return self.rows is not None

    @property
    def mean_b(self) -> np.ndarray:
        """Column means mu (d,) of B."""
        return self.b_sum / self.n_rows

    @property
    def mean_y(self) -> np.ndarray:
        """Column means ybar (m,) of Y."""
        return self.y_sum / self.n_rows

    # ----------------------------------------------------------------------------- accessors
    def columns(self, channels: np.ndarray) -> np.ndarray:
        """Column indices (len(channels) * block,) of the given channels, channel-major."""
        channels = np.asarray(channels, dtype=np.int64)
        return (channels[:, None] * self.block + np.arange(self.block)).ravel()

    def gram_diag(self, centered: bool) -> np.ndarray:
        """Diagonal (d,) of G (or of G_c when ``centered``)."""
        diag = self._uncentered_diag()
        if centered:
            diag -= self.n_rows * self.mean_b**2
        return diag

    def channel_energy(self, centered: bool) -> np.ndarray:
        """Energy (n,) of each input channel: the sum of its columns' diagonal of G (or G_c, the
        channel's variance times N, when ``centered``)."""
        return self.gram_diag(centered).reshape(self.n_channels, self.block).sum(axis=1)

    def diag_blocks(self, centered: bool) -> np.ndarray:
        """Per-channel diagonal blocks (n, block, block) of G (or G_c)."""
        n, r = self.n_channels, self.block
        if self.is_row_form:
            rows = self.row_matrices(centered)[0].reshape(-1, n, r)
            return np.einsum("kjr,kjs->jrs", rows, rows)
        blocks = np.diagonal(self.gram.reshape(n, r, n, r), axis1=0, axis2=2).transpose(2, 0, 1)
        blocks = blocks.copy()
        if centered:
            mu = self.mean_b.reshape(n, r)
            blocks -= self.n_rows * mu[:, :, None] * mu[:, None, :]
        return blocks

    def map_gram(self, centered: bool) -> np.ndarray:
        """Channel Gram matrix (n, n) of the input maps: sum over the block offsets o of
        G[(i, o), (j, o)] (of G_c, offset by offset, when ``centered``).

        A Conv consumer's column (j, o) holds channel j's map read at kernel offset o, and a
        Flatten consumer's column (j, o) its map at position o, so this is the Gram matrix of the
        channels over (nearly) every pixel of every sample: N * block rows instead of N.
        """
        gram = self._uncentered_map_gram()
        if centered:
            mu = self.mean_b.reshape(self.n_channels, self.block)
            gram -= self.n_rows * (mu @ mu.T)
        return gram

    def _uncentered_diag(self) -> np.ndarray:
        """New array: the diagonal (d,) of G."""
        if self.is_row_form:
            return np.einsum("ij,ij->j", self.rows, self.rows)
        return np.diag(self.gram).copy()

    def _uncentered_map_gram(self) -> np.ndarray:
        """New array: the uncentered channel map Gram matrix (n, n) of :meth:`map_gram`."""
        if self.is_row_form:
            return self.map_products().copy()
        n, r = self.n_channels, self.block
        return np.einsum("iojo->ij", self.gram.reshape(n, r, n, r))

    def parts(self) -> tuple[ConsumerStats, ...]:
        """Statistics of disjoint row sets whose union is this one's rows: the parts
        :func:`sum_stats` summed it from (cross-validation folds: split by sample; what
        :func:`leave_out` takes one of), else itself."""
        return self.__dict__.get("_parts", (self,))

    def map_products(self) -> np.ndarray:
        """Row form only: the uncentered channel map Gram matrix (n, n) of :meth:`map_gram`,
        computed once and kept (callers must not change it); for statistics summed from
        :meth:`parts`, the sum of theirs, so the folds of a cross-validation and their training
        sets pass over each row once between them."""
        if not self.is_row_form:
            raise ValueError("map_products needs row-form statistics (rows/targets)")
        products = self.__dict__.get("_map")  # a cache, not a field of the statistics
        if products is None:
            parts = self.parts()
            if len(parts) > 1:
                products = _total(part.map_products() for part in parts)
            else:
                products = map_products(self.rows.reshape(-1, self.n_channels, self.block))
            self.__dict__["_map"] = products
        return products

    def kept_products(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uncentered (G[cols, cols] (s, s), C[cols] (s, m)); those of the latest ``cols`` are
        kept while they hold at most :data:`KEPT_PRODUCT_ENTRIES`, so a fold's least-squares and
        shrunk refits, and the scoring of both on a held-out fold, gather (or in row form
        multiply) them once. Callers must not change them."""
        key = np.asarray(cols).tobytes()
        latest = self.__dict__.get("_kept")  # a cache, not a field of the statistics
        if latest is not None and latest[0] == key:
            return latest[1]
        products = self._kept_products_of(cols)
        if len(cols) * (len(cols) + self.m) <= KEPT_PRODUCT_ENTRIES:
            self.__dict__["_kept"] = (key, products)
        return products

    def _kept_products_of(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`kept_products` keeps, made anew."""
        if self.is_row_form:
            rows = self.rows[:, cols]
            with all_cores(float(self.n_rows) * rows.shape[1] * (rows.shape[1] + self.m)):
                return rows.T @ rows, rows.T @ self.targets
        return self.gram[np.ix_(cols, cols)], self.cross[cols]

    def gram_matrix(self, centered: bool, cols: np.ndarray | None = None) -> np.ndarray:
        """New array G[cols, cols] (s, s) (all columns when ``cols`` is None), centered if asked."""
        if cols is None and self.is_row_form:
            rows = self.row_matrices(centered)[0]
            return rows.T @ rows
        idx = np.arange(self.d) if cols is None else cols
        gram = self.gram[np.ix_(idx, idx)] if cols is None else self.kept_products(cols)[0].copy()
        if centered:
            mu = self.mean_b[idx]
            gram -= self.n_rows * np.outer(mu, mu)
        return gram

    def cross_matrix(self, centered: bool, cols: np.ndarray | None = None) -> np.ndarray:
        """C[cols] (s, m) (all columns when ``cols`` is None), centered if asked; a new array."""
        if cols is None and self.is_row_form:
            rows, targets = self.row_matrices(centered)
            return rows.T @ targets
        idx = np.arange(self.d) if cols is None else cols
        cross = self.cross[idx] if cols is None else self.kept_products(cols)[1].copy()
        if centered:
            cross -= self.n_rows * np.outer(self.mean_b[idx], self.mean_y)
        return cross

    def row_matrices(
        self, centered: bool, cols: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row form only: copies of (B[:, cols] (N, s), Y (N, m)), column-centered if asked."""
        if not self.is_row_form:
            raise ValueError("row_matrices needs row-form statistics (rows/targets)")
        rows = self.rows.copy() if cols is None else self.rows[:, cols]
        targets = self.targets.copy()
        if centered:
            rows -= self.mean_b if cols is None else self.mean_b[cols]
            targets -= self.mean_y
        return rows, targets

    def dual(self, centered: bool, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row form only: (B[:, cols] (N, s), Y (N, m), the kernel B[:, cols] B[:, cols]^T (N, N)),
        column-centered if asked: what a fit in the dual (s > N) solves with. The arrays of the
        latest arguments are kept, so a fold's least-squares and shrunk refits, or a refit and the
        spectrum of its shrinkage, form the N x N product once, and a loop over kept sets (the
        sensitivity curves) holds one set of them, not one per kept set; callers must not change
        them."""
        key = (centered, np.asarray(cols).tobytes())
        latest = self.__dict__.get("_dual")  # a cache, not a field of the statistics
        if latest is None or latest[0] != key:
            rows, targets = self.row_matrices(centered, cols)
            parts = self.parts()
            if len(parts) == 1:
                with all_cores(float(self.n_rows) ** 2 * rows.shape[1]):
                    kernel = rows @ rows.T
            else:  # from the parts' blocks, which the folds' training sets share
                kernel = np.block([[_kernel_block(p, q, cols) if i <= j else _kernel_block(q, p, cols).T
                                    for j, q in enumerate(parts)] for i, p in enumerate(parts)])
                if centered:  # (B - 1 mu^T)(B - 1 mu^T)^T with B mu = rows mu + mu^T mu
                    mu = self.mean_b[cols]
                    square = float(mu @ mu)
                    spread = rows @ mu + square
                    kernel -= spread[:, None] + spread[None, :]
                    kernel += square
            latest = self.__dict__["_dual"] = (key, (rows, targets, kernel))
        return latest[1]

    def target_energy(self, centered: bool) -> float:
        """||Y||_F^2, or ||Y - 1 ybar^T||_F^2 when ``centered``."""
        if centered:
            return self.y_sq - self.n_rows * float(self.mean_y @ self.mean_y)
        return self.y_sq

    def ridge_lambda(self, ridge: float, centered: bool) -> float:
        """Absolute ridge lambda = ``ridge`` * mean(diag(G)) (G centered when ``centered``)."""
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if ridge == 0:
            return 0.0
        return ridge * max(float(np.mean(self.gram_diag(centered))), 0.0)

    # ----------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        if not isinstance(self.block, (int, np.integer)) or self.block < 1:
            raise ValueError(f"block must be a positive integer, got {self.block!r}")
        if not isinstance(self.n_rows, (int, np.integer)) or self.n_rows < 1:
            raise ValueError(f"n_rows must be a positive integer, got {self.n_rows!r}")
        if self.weight.ndim != 2:
            raise ValueError(f"weight must be 2-D (d, m), got shape {self.weight.shape}")
        d, m = self.weight.shape
        if d == 0 or d % self.block:
            raise ValueError(
                f"weight has d={d} rows, not a positive multiple of block={self.block}"
            )
        gram_form = self.gram is not None or self.cross is not None
        row_form = self.rows is not None or self.targets is not None
        if gram_form == row_form:
            raise ValueError("give exactly one form: (gram, cross) or (rows, targets)")
        expected = {"b_sum": (d,), "y_sum": (m,)}
        if gram_form:
            expected.update(gram=(d, d), cross=(d, m))
        else:
            expected.update(rows=(self.n_rows, d), targets=(self.n_rows, m))
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is None:
                raise ValueError(f"{name} is missing")
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape} (d={d}, m={m})")
        if not np.isfinite(self.y_sq) or self.y_sq < 0:
            raise ValueError(f"y_sq must be finite and >= 0, got {self.y_sq}")


def sum_stats(parts: Sequence[ConsumerStats], inputs: ConsumerStats | None = None) -> ConsumerStats:
    """The statistics of the union of ``parts``' rows (disjoint row sets of one consumer, e.g.
    cross-validation folds): Gram form adds ``gram`` (d, d), ``cross`` (d, m), the sums,
    ``n_rows`` and ``y_sq``; row form concatenates ``rows`` (N_i, d) and ``targets`` (N_i, m).

    Every part must have the same form, block, d and m; the first part's ``weight`` is kept.
    ``inputs``: the sum of another consumer's parts that hold the same B (the same rows per part,
    e.g. shared by capture): its B statistics (rows or Gram matrix, column sums, row count) are
    taken as they are instead of summed again.
    """
    if len(parts) == 0:
        raise ValueError("sum_stats needs at least one part")
    first = parts[0]
    for index, part in enumerate(parts[1:], start=1):
        if (part.is_row_form, part.block, part.d, part.m) != (first.is_row_form, first.block, first.d, first.m):
            raise ValueError(
                f"part {index} has (row form, block, d, m) = {(part.is_row_form, part.block, part.d, part.m)}, "
                f"expected {(first.is_row_form, first.block, first.d, first.m)}"
            )
    if len(parts) == 1:
        return first
    common = dict(
        block=first.block, n_rows=sum(p.n_rows for p in parts), y_sq=sum(p.y_sq for p in parts),
        b_sum=inputs.b_sum if inputs else _total(p.b_sum for p in parts), y_sum=_total(p.y_sum for p in parts),
        weight=first.weight,
    )
    if first.is_row_form:
        rows = inputs.rows if inputs else np.concatenate([p.rows for p in parts])
        total = ConsumerStats(**common, rows=rows, targets=np.concatenate([p.targets for p in parts]))
    else:
        gram = inputs.gram if inputs else _total(p.gram for p in parts)
        total = ConsumerStats(**common, gram=gram, cross=_total(p.cross for p in parts))
    total.__dict__["_parts"] = tuple(parts)  # see ConsumerStats.parts
    return total


_CACHES = ("_dual", "_kept", "_map", "_kernels")
"""What statistics keep between calls (see :func:`forget_caches`)."""


def forget_caches(stats: Iterable[ConsumerStats]) -> None:
    """Drop what ``stats`` and their parts keep between calls (the dual arrays, the kept
    columns' and channel maps' products, the kernel blocks): for the end of a group's selection,
    so that statistics that stay alive after it (every group's, under the layer schedule and the
    sensitivity allocation) do not hold them."""
    for item in stats:
        for holder in (item, *item.parts()):
            for name in _CACHES:
                holder.__dict__.pop(name, None)


def _kernel_block(first: ConsumerStats, second: ConsumerStats, cols: np.ndarray) -> np.ndarray:
    """B1[:, cols] B2[:, cols]^T (N1, N2), uncentered, for two parts of row-form statistics
    (:meth:`ConsumerStats.parts`), ``first`` not after ``second`` in them (so every set that
    holds both asks for the same product, rounded the same way). The blocks of the latest
    ``cols`` are kept on ``first``, under its lock while they are made: the folds' training
    sets, fitted side by side, and the whole set share them, so their kernels
    (:meth:`ConsumerStats.dual`) cost one N x N x s product between them instead of one each."""
    key = np.asarray(cols).tobytes()
    with first.__dict__.setdefault("_kernel_lock", threading.Lock()):
        kept = first.__dict__.get("_kernels")  # a cache, not a field of the statistics
        if kept is None or kept[0] != key:
            kept = first.__dict__["_kernels"] = (key, {})
        other, block = kept[1].get(id(second), (None, None))
        if other is not second:
            with all_cores(float(first.n_rows) * second.n_rows * len(cols)):
                block = first.rows[:, cols] @ second.rows[:, cols].T
            kept[1][id(second)] = (second, block)
    return block


def leave_out(total: ConsumerStats, part: ConsumerStats) -> ConsumerStats:
    """The statistics of the rows of ``total`` outside ``part``, one of ``total.parts()`` (a
    cross-validation fold's training set): in Gram form the total less the part
    (:class:`_LeftOut`, which forms only the products a fit asks for), in row form the other
    parts summed."""
    parts = total.parts()
    if not any(p is part for p in parts) or len(parts) < 2:
        raise ValueError("leave_out needs one of the parts the statistics were summed from")
    others = [p for p in parts if p is not part]
    if total.is_row_form or len(others) == 1:
        return sum_stats(others)
    return _LeftOut(total, part, others)


class _LeftOut(ConsumerStats):
    """Gram-form statistics of ``total`` less ``part`` (:func:`leave_out`) whose products are
    differences formed when asked for: a fit on a fold's training set reads the kept columns'
    products (:meth:`kept_products`: the total's less the part's, both kept by them for the
    whole set's fit and the held-out scoring), the diagonal and the channel map Gram matrix,
    where the full difference G - G_part passed over d x d entries per fold (ResNet-50's
    3 x 3 consumers, d = 2304: 75 ms each). ``gram`` and ``cross`` themselves are formed on
    first use."""

    def __init__(self, total: ConsumerStats, part: ConsumerStats, others: Sequence[ConsumerStats]) -> None:
        fields = dict(block=total.block, n_rows=total.n_rows - part.n_rows, y_sq=max(total.y_sq - part.y_sq, 0.0),
                      b_sum=total.b_sum - part.b_sum, y_sum=total.y_sum - part.y_sum, weight=total.weight)
        self.__dict__.update(fields, rows=None, targets=None, _total=total, _less=part, _parts=tuple(others))

    @property
    def gram(self) -> np.ndarray:
        return self._difference("gram")

    @property
    def cross(self) -> np.ndarray:
        return self._difference("cross")

    def _difference(self, name: str) -> np.ndarray:
        """The total's array ``name`` less the part's, made on first use and kept."""
        kept = self.__dict__.setdefault("_differences", {})
        if name not in kept:
            kept[name] = getattr(self._total, name) - getattr(self._less, name)
        return kept[name]

    def _kept_products_of(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (gram, cross), (less_gram, less_cross) = self._total.kept_products(cols), self._less.kept_products(cols)
        return gram - less_gram, cross - less_cross

    def _uncentered_diag(self) -> np.ndarray:
        return self._total.gram_diag(False) - self._less.gram_diag(False)

    def _uncentered_map_gram(self) -> np.ndarray:
        return self._total.map_gram(False) - self._less.map_gram(False)


def merge_shared(consumers: Sequence[ConsumerStats]) -> list[ConsumerStats]:
    """``consumers`` with those that read the same input the same way (equal n_rows, block,
    column sums and Gram matrix or rows: the same B) merged into one consumer with their targets
    side by side: Y = [Y_1 ... Y_t], C = [C_1 ... C_t], W = [W_1 ... W_t], ||Y||^2 summed.

    Least squares on B separates by target column, so every greedy gain and every kept set's
    residual is the sum of the merged consumers' (a detector's class and box convs on one feature
    map: one Gram factor instead of two). Order: each merged consumer where its first member was.
    """
    merged: list[list[ConsumerStats]] = []
    for stats in consumers:
        for members in merged:
            if _same_input(members[0], stats):
                members.append(stats)
                break
        else:
            merged.append([stats])
    return [_side_by_side(members) for members in merged]


def _same_input(a: ConsumerStats, b: ConsumerStats) -> bool:
    if (a.is_row_form, a.block, a.n_rows, a.d) != (b.is_row_form, b.block, b.n_rows, b.d):
        return False
    if not np.array_equal(a.b_sum, b.b_sum):
        return False
    mine, theirs = (a.rows, b.rows) if a.is_row_form else (a.gram, b.gram)
    return mine is theirs or np.array_equal(mine, theirs)


def _side_by_side(members: Sequence[ConsumerStats]) -> ConsumerStats:
    first = members[0]
    if len(members) == 1:
        return first
    common = dict(block=first.block, n_rows=first.n_rows, y_sq=sum(m.y_sq for m in members), b_sum=first.b_sum,
                  y_sum=np.concatenate([m.y_sum for m in members]),
                  weight=np.hstack([m.weight for m in members]))
    if first.is_row_form:
        return ConsumerStats(**common, rows=first.rows, targets=np.hstack([m.targets for m in members]))
    return ConsumerStats(**common, gram=first.gram, cross=np.hstack([m.cross for m in members]))


def _total(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Sum of same-shaped arrays into one new array (no temporaries beyond it)."""
    arrays = iter(arrays)
    total = next(arrays).copy()
    for array in arrays:
        total += array
    return total


def group_channels(consumers: Sequence[ConsumerStats]) -> int:
    """Common n_channels of a group's consumers; ValueError if empty or inconsistent."""
    if len(consumers) == 0:
        raise ValueError("a channel group needs at least one consumer")
    counts = {c.n_channels for c in consumers}
    if len(counts) != 1:
        raise ValueError(f"consumers disagree on the number of channels: {sorted(counts)}")
    return counts.pop()


def check_k(k: int, n: int) -> None:
    """ValueError unless 1 <= k <= n."""
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n_channels={n}, got {k}")


def map_products(maps: np.ndarray) -> np.ndarray:
    """(n, n) sum over rows k and offsets o of maps[k, i, o] * maps[k, j, o], for ``maps``
    (rows, n, block): one matrix product (an einsum over both axes is ~50x slower)."""
    flat = np.ascontiguousarray(maps.transpose(1, 0, 2)).reshape(maps.shape[1], -1)
    return flat @ flat.T
