"""Residual statistics of one consumer during greedy selection (METHOD.md sec. 3).

For the kept set S and the effective Gram matrix G' = G (+ centering) + lambda I, the state holds

- ``diag`` (n, r, r): the diagonal blocks Gr[J, J] of Gr = G' - G'[:, S] G'[S, S]^+ G'[S, :];
- ``cross`` (d, m'): Cr = C - G'[:, S] G'[S, S]^+ C[S], with m' = min(m, d) (Gram form) or
  min(m, N) (row form) after :func:`~onnx_subprune.select.linalg.compress_columns`, which leaves
  every gain unchanged.

Gains and updates need only one block column ``g = Gr[:, J]`` (d, r) per step; the two storage
forms differ in how they produce it:

- Gram form (left-looking block Cholesky): Gr = G' - V V^T with V (d, s) grown by one block per
  step, so ``g = G'[:, J] - V V[J]^T``. The original Gram matrix is only read, never copied
  (centering and ridge are applied to each block column as it is read). Memory: V, k*r x d.
- Row form: whitened rows Bw (N, d), updated in place, with Gr = Bw^T Bw + lambda I on the
  unpicked channels and Cr = Bw^T Yw (Yw itself is never stored: Cr is updated like in the Gram
  form, and tr(Cr[J]^T Gr[J,J]^+ Cr[J]) = ||Q_J^T Yw||^2 for an orthonormal basis Q_J of
  Bw[:, J] when lambda = 0). Picking J with Bw[:, J] = Q diag(sigma) E^T maps
  Bw <- (I - Q diag(c) Q^T) Bw, c = 1 - sqrt(lambda / (lambda + sigma^2)): the plain projection
  when lambda = 0, and with lambda > 0 exactly the ridge objective (the same as appending
  sqrt(lambda) I rows to B and zero rows to Y) without forming any d x d matrix.
  Memory O(N d + d m').

The rank-r update ``Gr -= K Gr[J, :]``, ``Cr -= K Cr[J, :]`` with K = Gr[:, J] Gr[J, J]^+ is applied
through the factor ``v = g E Lambda^{-1/2}`` of the kept eigen-directions of Gr[J, J].

The gains read Cr only through the block energies ``energy`` (n, r, r), E[J] = Cr[J] Cr[J]^T,
so Cr itself is updated lazily (:meth:`Residual.commit`): a step reads Cr once (X = Cr R^T for
the energies' update) where an eager update read it twice and wrote it once, the memory traffic
that bounded the wide groups (ResNet-50's 2048-channel stage output, three consumers: the greedy
4.2 s -> 3.0 s, the same picks).

A greedy whose states hold more than :data:`SINGLE_STATE_ENTRIES` keeps Cr and V in float32
(:meth:`Residual.to_single`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from . import parallel
from .parallel import each, even_ranges
from .linalg import compress_columns, pinv_values, psd_tolerance, subtract_product
from .stats import ConsumerStats


class Residual(ABC):
    """Shared part of the residual state of one consumer (see the module docstring).

    ``diag`` (n, r, r) and ``cross`` (d, m') are the initial G and C blocks, without the ridge.
    ``anchored``: the ridge rows carry targets (see :func:`make_residual`), so a channel whose
    data block is spanned still has a gain through them. Once picks are made, ``cross`` holds Cr
    less the pending terms ``pending_left[:, :pending] @ pending_right[:pending]`` ((d, t) and
    (t, m')), and ``energy`` (n, r, r) the block energies of Cr itself.
    """

    def __init__(
        self,
        stats: ConsumerStats,
        diag: np.ndarray,
        cross: np.ndarray,
        lam: float,
        centered: bool,
        anchored: bool,
    ) -> None:
        self.n = stats.n_channels
        self.r = stats.block
        self.lam = lam
        self.floor = 0.0 if anchored else lam
        self.tol = psd_tolerance(stats.gram_diag(centered))
        self.diag = diag + lam * np.eye(self.r)
        self.cross = cross
        # (n,) channels not numerically dead in the original statistics
        self.live = np.linalg.eigvalsh(diag)[:, -1] > self.tol
        self.chunks = channel_chunks(self.n, stats.d * max(self.r, cross.shape[1]))
        self.energy = np.concatenate([self._energies(channels) for channels in self.chunks])
        width = max(PENDING_COLUMNS, self.r)
        self.pending_left = np.empty((stats.d, width))
        self.pending_right = np.empty((width, cross.shape[1]))
        self.pending = 0

    @property
    def entries(self) -> int:
        """Array entries a greedy step reads: the cross statistics and the form's own arrays."""
        return self.cross.size

    def to_single(self) -> None:
        """Hold Cr (and the Gram form's factor V) in float32 from now on; before any pick
        (see :data:`SINGLE_STATE_ENTRIES`)."""
        self.cross = self.cross.astype(np.float32)

    def _span(self, j: int) -> slice:
        return slice(j * self.r, (j + 1) * self.r)

    def _columns(self, channels: slice) -> slice:
        return slice(channels.start * self.r, channels.stop * self.r)

    def gains(self) -> tuple[np.ndarray, np.ndarray]:
        """Gains (n,) tr(Cr[J]^T Gr[J,J]^+ Cr[J]) of every channel, and the mask (n,) of alive ones.

        A channel is alive when its residual block (without the ridge, unless anchored) has an
        eigenvalue above the tolerance; dead channels get gain 0.
        """
        parts = each(self._gains, self.chunks)
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([gain for gain, _ in parts]), np.concatenate([alive for _, alive in parts])

    def _gains(self, channels: slice) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`gains` of the channels ``channels``, tr(Gr[J,J]^+ E[J]) with the block energies
        E[J] = Cr[J] Cr[J]^T."""
        diag, energy = self.diag[channels], self.energy[channels]
        if self.r == 1:  # 1 x 1 blocks are their own eigenvalues: no batched eigh per step
            w = diag[:, 0, 0]
            alive = w > self.floor + self.tol
            gain = np.maximum(energy[:, 0, 0], 0.0) * pinv_values(w, self.tol)
            return np.where(alive, gain, 0.0), alive
        if self.lam > DEFINITE_RIDGE * self.tol:
            try:
                factor = np.linalg.cholesky(diag)
            except np.linalg.LinAlgError:
                factor = None
            if factor is not None:  # tr((L L^T)^-1 E) = tr(L^-1 E L^-T), the pseudo-inverse being the inverse
                inverse = np.linalg.inv(factor)
                gain = np.maximum(np.einsum("nij,nij->n", inverse @ energy, inverse), 0.0)
                alive = self._alive(diag)
                return np.where(alive, gain, 0.0), alive
        w, e = np.linalg.eigh(diag)
        quad = np.sum(e * (energy @ e), axis=1)  # e_s^T E e_s per block: batched matmul, 3x a 3-operand einsum
        gain = np.maximum(np.sum(quad * pinv_values(w, self.tol), axis=1), 0.0)
        alive = w[:, -1] > self.floor + self.tol
        return np.where(alive, gain, 0.0), alive

    def _energies(self, channels: slice) -> np.ndarray:
        """E[J] = Cr[J] Cr[J]^T (len(channels), r, r) from the cross statistics as stored (the
        pending updates applied)."""
        blocks = self.cross[self._columns(channels)].reshape(channels.stop - channels.start, self.r, -1)
        blocks = blocks.astype(np.float64, copy=False)
        if self.r == 1:
            return np.einsum("nij,nij->n", blocks, blocks)[:, None, None]
        return blocks @ blocks.transpose(0, 2, 1)

    def _alive(self, diag: np.ndarray) -> np.ndarray:
        """Whether each block (n, r, r) (the ridge included) has its largest eigenvalue above
        ``floor + tol``, from bounds where they decide it: the largest diagonal entry and the
        trace enclose the largest eigenvalue of a PSD block; an eigenvalue solve for the rest."""
        entries = np.diagonal(diag, axis1=1, axis2=2) - self.lam  # the blocks without the ridge
        above = self.floor + self.tol - self.lam
        alive = entries.max(axis=1) > above
        unsure = ~alive & (entries.sum(axis=1) > above)
        if unsure.any():
            alive[unsure] = np.linalg.eigvalsh(diag[unsure])[:, -1] > self.floor + self.tol
        return alive

    def commit(self, j: int) -> None:
        """Add channel ``j`` to the kept set: Gr -= K Gr[J, :], Cr -= K Cr[J, :].

        Cr is updated lazily: the rank-r' terms V R (``pending_left``, ``pending_right``) of
        the last picks are subtracted in one product once they hold :data:`PENDING_COLUMNS`
        columns, and the block energies E, which the gains need, are updated at each step from
        X = Cr R^T instead: a step then reads Cr once and writes nothing."""
        span = self._span(j)
        parts = each(lambda channels: self.column(j, self._columns(channels)), self.chunks)
        g = parts[0] if len(parts) == 1 else np.concatenate(parts)
        g[span] += self.lam * np.eye(self.r)
        w, e = np.linalg.eigh(g[span])
        keep = w > self.tol
        factor = e[:, keep] / np.sqrt(w[keep])
        v = g @ factor
        right = factor.T @ self._current_cross(span)
        if self.pending + v.shape[1] > len(self.pending_right):
            self._apply_pending()
        pending = self.pending
        folded = self.pending_right[:pending] @ right.T
        square = right @ right.T
        right_t = right.T.astype(self.cross.dtype)

        def update(channels: slice) -> None:
            cols = self._columns(channels)
            vb = v[cols].reshape(channels.stop - channels.start, self.r, v.shape[1])
            self.diag[channels] -= vb @ vb.transpose(0, 2, 1)
            # X = Cr R^T (Cr the stored rows less the pending terms), in Cr's precision
            across = (self.cross[cols] @ right_t).astype(np.float64, copy=False)
            if pending:
                across -= self.pending_left[cols, :pending] @ folded
            mixed = vb @ across.reshape(vb.shape).transpose(0, 2, 1)
            self.energy[channels] -= mixed + mixed.transpose(0, 2, 1) - vb @ square @ vb.transpose(0, 2, 1)

        each(update, self.chunks)
        self.pending_left[:, pending : pending + v.shape[1]] = v
        self.pending_right[pending : pending + v.shape[1]] = right
        self.pending += v.shape[1]
        # J's own residual block is now zero up to rounding, which can leave it indefinite and
        # stop the batched Cholesky of the gains; the bare ridge factors, and J keeps a zero gain
        # (Cr[J] is zero too; the greedy never picks J again)
        self.diag[j] = self.lam * np.eye(self.r)
        self.energy[j] = 0.0
        self._extend(j, g, v, w, e)

    def _current_cross(self, span: slice) -> np.ndarray:
        """Rows ``span`` of Cr with the pending terms subtracted."""
        return self.cross[span] - self.pending_left[span, : self.pending] @ self.pending_right[: self.pending]

    def _apply_pending(self) -> None:
        """Subtract the pending terms from the stored Cr and recompute the block energies from
        it (no rounding carried over from the steps' updates)."""
        pending = self.pending

        def apply(channels: slice) -> None:
            cols = self._columns(channels)
            subtract_product(self.cross[cols], self.pending_left[cols, :pending], self.pending_right[:pending])
            self.energy[channels] = self._energies(channels)

        each(apply, self.chunks)
        self.pending = 0

    @abstractmethod
    def column(self, j: int, part: slice) -> np.ndarray:
        """Rows ``part`` of the block column Gr[:, J] (d, r) of the current residual Gram matrix,
        without the ridge (:meth:`commit` adds it)."""

    @abstractmethod
    def _extend(self, j: int, g: np.ndarray, v: np.ndarray, w: np.ndarray, e: np.ndarray) -> None:
        """Form-specific update after picking channel ``j``: ``g`` (d, r) is the block column
        :meth:`column` gave, ``v`` (d, r') the factor g E Lambda^{-1/2} and ``w`` (r,), ``e`` (r, r)
        the eigen-decomposition of Gr[J, J]."""


SINGLE_STATE_ENTRIES = 1 << 20
"""A greedy whose residual states hold more array entries than this in all (8 MiB in float64,
beyond what stays in cache from one step to the next; :attr:`Residual.entries`) keeps every
state's cross statistics Cr and factor V in float32 (:meth:`Residual.to_single`). Each step reads
all of Cr (X = Cr R^T) and of V (the block column), memory-bound, so half the bytes are nearly
half the time. ResNet-50's last stage, 256 of 512 3 x 3 blocks on d = 4608: 5.9 s -> 3.9 s with
V alone in float32 (a per-consumer rule before), 2.6-3.1 s -> 2.3-2.8 s with Cr too; the
2048-channel stage output, 1024 picks for three consumers: 3.3 s -> 1.8-2.3 s; the 1024-channel
one, 512 picks for seven consumers of at most 4 MiB each: 2.2-2.4 s -> 1.7-1.8 s. The products
are subtracted from float64 Gram columns, and X, the energies and the picked rows of Cr are
formed from the float32 arrays in float64. The rounding (about 6e-8 of the entries) is below
that of the float32 products the statistics were accumulated with; near-ties may be picked the
other way: on those three groups the picked sets' float64 objective F(S) moved by +1.0e-5,
+2.1e-6 and +6.6e-7 of itself."""


PENDING_COLUMNS = 64
"""Columns of the greedy's rank-r' updates of Cr held back and then subtracted at once (one
pass over Cr per this many columns instead of one per step)."""


DEFINITE_RIDGE = 1e3
"""When the ridge exceeds the rank tolerance this many times, every residual block with its ridge
(PSD up to rounding, plus the ridge) has all its eigenvalues far above the tolerance: the
pseudo-inverse of the gains is then the inverse, computed from a batched Cholesky factor, 2-8x
faster than the batched eigen-decomposition it replaces (512 blocks of 9 x 9: 5.9 -> 3.2 ms)."""


CHUNK_ENTRIES = 1 << 20
"""A consumer whose d x max(block, m') residual statistics hold more entries than this splits each
greedy step (gains, block column, update) into channel ranges run side by side
(:func:`.parallel.each`): one per worker. Below it a step is too short to share."""


def channel_chunks(n: int, entries: int) -> list[slice]:
    """Contiguous channel ranges covering ``range(n)``: one per worker when the statistics hold
    more than :data:`CHUNK_ENTRIES` ``entries``, else one."""
    return even_ranges(n, parallel.WORKERS if entries > CHUNK_ENTRIES else 1)


class GramResidual(Residual):
    """Residual state over Gram-form statistics (left-looking block Cholesky)."""

    def __init__(
        self, stats: ConsumerStats, lam: float, centered: bool, capacity: int, anchored: bool
    ) -> None:
        cross = stats.cross_matrix(centered)
        if anchored:
            cross += lam * stats.weight
        cross = compress_columns(cross)
        super().__init__(stats, stats.diag_blocks(centered), cross, lam, centered, anchored)
        self.gram = stats.gram
        self.scaled_mean = np.sqrt(stats.n_rows) * stats.mean_b if centered else None
        self.factor_t = np.empty((capacity * self.r, stats.d))
        self.rank = 0

    @property
    def entries(self) -> int:
        return super().entries + self.factor_t.size

    def to_single(self) -> None:
        if self.rank:
            raise ValueError("to_single comes before any pick")
        super().to_single()
        self.factor_t = np.empty(self.factor_t.shape, dtype=np.float32)

    def column(self, j: int, part: slice) -> np.ndarray:
        span = self._span(j)
        g = self.gram[span, part].T.copy()
        if self.scaled_mean is not None:
            g -= np.outer(self.scaled_mean[part], self.scaled_mean[span])
        done = self.factor_t[: self.rank]
        g -= done[:, part].T @ np.ascontiguousarray(done[:, span])  # BLAS gemv over a contiguous block
        return g

    def _extend(self, j: int, g: np.ndarray, v: np.ndarray, w: np.ndarray, e: np.ndarray) -> None:
        self.factor_t[self.rank : self.rank + v.shape[1]] = v.T
        self.rank += v.shape[1]


class RowResidual(Residual):
    """Residual state over row-form statistics (whitened rows updated in place)."""

    def __init__(self, stats: ConsumerStats, lam: float, centered: bool, anchored: bool) -> None:
        rows, targets = stats.row_matrices(centered)
        if anchored:
            cross = compress_columns(rows.T @ targets + lam * stats.weight)
        else:
            cross = rows.T @ compress_columns(targets)
        super().__init__(stats, stats.diag_blocks(centered), cross, lam, centered, anchored)
        self.rows = rows

    @property
    def entries(self) -> int:
        return super().entries + self.rows.size

    def column(self, j: int, part: slice) -> np.ndarray:
        span = self._span(j)
        # (Bw[:, J]^T Bw)^T: BLAS streams the rows untransposed, twice as fast as Bw^T Bw[:, J]
        return (np.ascontiguousarray(self.rows[:, span].T) @ self.rows[:, part]).T

    def _extend(self, j: int, g: np.ndarray, v: np.ndarray, w: np.ndarray, e: np.ndarray) -> None:
        span = self._span(j)
        sigma_sq = w - self.lam
        keep = sigma_sq > self.tol
        basis = e[:, keep] / np.sqrt(sigma_sq[keep])
        q = self.rows[:, span] @ basis
        shrink = 1.0 - np.sqrt(self.lam / w[keep])
        # q^T Bw = (Bw^T Bw[:, J] basis)^T, and Bw^T Bw[:, J] is g without its ridge: one pass over the rows fewer
        across = g @ basis
        across[span] -= self.lam * basis
        left, right = q * shrink, across.T
        each(lambda part: subtract_product(self.rows[part], left[part], right),
             even_ranges(len(self.rows), len(self.chunks)))


GRAM_FORM_MAX_COLUMNS = 8192
"""Row-form statistics of at most this many columns (a Gram matrix of at most 512 MiB) may be
run in the Gram form (see :func:`prefers_gram`)."""


def prefers_gram(stats: ConsumerStats, lam: float, capacity: int) -> bool:
    """Run row-form statistics in the Gram form: a step of the row form passes over the N x d
    rows three times (the block column, then the in-place update), one of the Gram form reads
    the t x d factor of the t columns picked so far, so over ``capacity`` picks of ``block``
    columns the Gram form reads less while capacity * block < 6 N (ResNet-50's last stage, 1568
    rows: a greedy of 1024 of 2048 channels 10.0 s -> 6.8 s, 256 of 512 3 x 3 blocks 9.2 s ->
    8.5 s, the same picks). Only with a ridge (the rows' Gram matrix is singular beyond N
    columns; the row form projects exactly) and d <= :data:`GRAM_FORM_MAX_COLUMNS`."""
    return (stats.is_row_form and lam > 0 and stats.d <= GRAM_FORM_MAX_COLUMNS
            and capacity * stats.block < 6 * stats.n_rows)


def make_residual(
    stats: ConsumerStats, *, lam: float, centered: bool, capacity: int, anchored: bool = False
) -> Residual:
    """Residual state for ``stats`` in its storage form (row form in the Gram form where
    :func:`prefers_gram`); ``capacity``: most channels picked.

    ``anchored``: the ridge pulls toward the original weight W instead of zero, i.e. the cross
    statistics are C + lam W (the rows sqrt(lam) I appended to B get targets sqrt(lam) W); the
    gains then miss the modular term -lam ||W_J||^2, which the caller subtracts.
    """
    if prefers_gram(stats, lam, capacity):
        stats = stats.as_gram()
    if stats.is_row_form:
        return RowResidual(stats, lam, centered, anchored)
    return GramResidual(stats, lam, centered, capacity, anchored)
