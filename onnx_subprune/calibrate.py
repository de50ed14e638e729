"""Streaming least-squares statistics of every consumer of the given channel groups.

Each batch is run through onnxruntime once per model; each consumer's input is unfolded into
rows (:mod:`unfold`) and folded into Gram matrices, so memory is O(d^2) per consumer whatever
the number of samples. When a consumer will see fewer rows than it has columns, its rows are
kept instead (O(N d)). Where A comes from a reference model (the original, for asym), each
consumer's targets Y = A W are read off its output there (:class:`Product`) instead of being
computed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

import onnx

from .data import check_finite
from .graph import read_constants
from .ops import LAYERS
from .patches import RowWindows, Totals, UnfoldedRows
from .runtime import batches, run
from .select.stats import ConsumerStats, sum_stats
from .types import ChannelGroup, Consumer
from .unfold import unfold_conv, unfold_dense

CHUNK_ELEMENTS = 1 << 22
"""Unfolded entries processed at once (float32: 16 MiB), bounding memory per batch."""

GRAM_BLOCK = 2048
"""Rows whose products are summed in float32 (BLAS sgemm) before they are added to the float64
totals: rounding grows with the rows summed in single precision, and 2048 keeps the statistics
within 1e-6 (relative, Frobenius) of float64 ones on the test architectures
(tests/test_calibrate.py) at half the time of 256."""

GATHER_ROWS = 8192
"""Rows of B below which a consumer's batches are gathered before they are folded in: a model
with a fixed batch of 1 gives one sample per batch, and its products were then 1.4x (windows) to
1.6x (unfolded rows) slower per sample than with four samples (a 96-channel 3x3 Conv on 52x52
maps, ddddocr_det's widest, 2 cores)."""

GATHER_ENTRIES = 1 << 20
"""Input entries (float32: 4 MiB) at which gathered batches are folded in whatever their rows,
bounding the memory that gathering holds per consumer."""

Progress = Callable[[str, int, int], None]


CV_FOLDS = 4
"""Cross-validation folds of the statistics with ``holdout="auto"`` and few samples."""

CV_BELOW = 128
"""With ``holdout="auto"``, fewer samples than this are all used for the statistics, split into
:data:`CV_FOLDS` folds for a cross-validated explained variance; from this many on,
:data:`AUTO_HOLDOUT` of them are held out. On the digits models at 1/8 of the params
(docs/results/data_efficiency.md), holding 20% out cost 1-12 points of test accuracy at 8-32
images (the most at 8), under 1 at 64 and none at 128 or more."""

AUTO_HOLDOUT = 0.2
"""Fraction held out with ``holdout="auto"`` from :data:`CV_BELOW` samples on."""


@dataclass(frozen=True)
class Split:
    """Sample indices used for the statistics (calibration) and kept out of them (holdout).

    ``folds``: a partition of ``calibration`` into cross-validation folds (each sorted), whose
    statistics are kept apart; empty when the estimate is not cross-validated.
    ``originals``: with augmented samples (:func:`expand_split`), how many of the first samples
    are originals (the rest are copies, which only the statistics use); None without.
    """

    calibration: np.ndarray
    holdout: np.ndarray
    folds: tuple[np.ndarray, ...] = ()
    originals: int | None = None

    @property
    def plain_calibration(self) -> np.ndarray:
        """The calibration samples that are originals, not augmented copies."""
        if self.originals is None:
            return self.calibration
        return self.calibration[self.calibration < self.originals]

    @property
    def kind(self) -> str:
        """What the held-out explained variance is measured on: ``cv-K`` (K folds), ``fixed``
        (the held-out samples) or ``none``."""
        if self.folds:
            return f"cv-{len(self.folds)}"
        return "fixed" if len(self.holdout) else "none"

    def fold_of(self) -> np.ndarray:
        """(len(calibration),) the fold of each calibration sample (zeros without folds)."""
        parts = np.zeros(len(self.calibration), dtype=np.int64)
        for fold, indices in enumerate(self.folds):
            parts[np.searchsorted(self.calibration, indices)] = fold
        return parts


def split_samples(samples: int, holdout: float | str, seed: int) -> Split:
    """Hold out ``round(holdout * samples)`` random samples (at least 1 if holdout > 0 and
    samples > 1), keeping at least one for calibration. ``holdout="auto"``: below
    :data:`CV_BELOW` samples, none held out and min(:data:`CV_FOLDS`, samples) random folds of
    near-equal size (none for a single sample); else :data:`AUTO_HOLDOUT`."""
    order = np.random.default_rng(seed).permutation(samples)
    if holdout == "auto":
        if samples < CV_BELOW:
            folds = np.array_split(order, min(CV_FOLDS, samples)) if samples > 1 else []
            return Split(calibration=np.arange(samples), holdout=order[:0],
                         folds=tuple(np.sort(fold) for fold in folds))
        holdout = AUTO_HOLDOUT
    count = min(samples - 1, max(1, round(holdout * samples))) if holdout > 0 else 0
    return Split(calibration=np.sort(order[count:]), holdout=np.sort(order[:count]))


def expand_split(split: Split, source: np.ndarray) -> Split:
    """``split`` of the original samples carried over to augmented ones: ``source`` (rows,) is
    the original each row comes from (originals first, ``source[i] == i``; :func:`augment.augment`).
    A copy joins its original's calibration set and fold; held-out originals' copies are dropped,
    so that held-out samples stay unseen originals."""
    originals = int(source.max()) + 1
    if not np.array_equal(source[:originals], np.arange(originals)):
        raise ValueError("augmented samples must start with the originals in order")
    members = lambda indices: np.flatnonzero(np.isin(source, indices))
    return Split(calibration=members(split.calibration), holdout=split.holdout,
                 folds=tuple(members(fold) for fold in split.folds), originals=originals)


@dataclass(frozen=True)
class GroupStats:
    """Statistics of a group's consumers (in ``group.consumers`` order) on both sample sets;
    ``folds``: per cross-validation fold of the calibration samples, its consumers'
    statistics (they sum to ``calibration``), or None."""

    calibration: tuple[ConsumerStats, ...]
    holdout: tuple[ConsumerStats, ...] | None
    folds: tuple[tuple[ConsumerStats, ...], ...] | None = None


def capture_stats(
    groups: Sequence[ChannelGroup],
    source,
    reference,
    weights: dict[str, np.ndarray],
    feeds: dict[str, np.ndarray],
    split: Split,
    batch_size: int,
    progress: Progress | None = None,
    targets: dict[str, np.ndarray] | None = None,
    products: dict[str, Product] | None = None,
) -> list[GroupStats]:
    """Statistics for every consumer of ``groups``.

    source: gives B: an onnxruntime session that outputs every consumer's input tensor, or a
    :class:`frontier.Frontier` (called with a key naming the batch, its feeds and the names);
    reference: gives A from the original model (the same kinds), or None for A = B;
    weights: consumer node name -> (d, m) weight matrix W whose rows match B's columns;
    targets: consumer node name -> (d_A, m) matrix W_A with Y = A W_A, when it differs from W
    (a consumer whose other input channels were already pruned in the source model);
    products: consumer node -> where its targets are read in ``reference`` (whose consumers
    have the target weights): the reference then gives the tensors :func:`capture_names`
    lists. Without a reference, Y = B W is computed from B's rows: a session that gives every
    consumer's output besides its input holds both for a whole batch (ResNet-50 x32 layer:
    7.4 instead of 6.2 GB peak).
    With ``split.folds``, each fold's statistics are accumulated apart in the same pass over
    the calibration samples, and the calibration statistics are their sum.
    """
    consumers = list({c.node: c for group in groups for c in group.consumers}.values())  # shared once
    leads = _shared_inputs(consumers, weights)
    products = (products or {}) if reference is not None else {}
    capture = _SetCapture(consumers, leads, source, reference, weights, targets or {}, products, feeds,
                          batch_size, progress)
    folds = capture("calibration", split.calibration, split.fold_of()) if split.folds else None
    if folds:
        calibration = {}
        for c in consumers:  # a lead comes before its followers, whose B is the lead's
            lead = leads[c.node]
            calibration[c.node] = sum_stats([fold[c.node] for fold in folds],
                                            inputs=None if lead == c.node else calibration[lead])
    else:
        calibration = capture("calibration", split.calibration)[0]
    holdout = capture("holdout", split.holdout)[0] if len(split.holdout) else None

    def pick(found: dict[str, ConsumerStats], group: ChannelGroup) -> tuple[ConsumerStats, ...]:
        return tuple(found[c.node] for c in group.consumers)

    return [
        GroupStats(
            calibration=pick(calibration, group),
            holdout=None if holdout is None else pick(holdout, group),
            folds=None if folds is None else tuple(pick(fold, group) for fold in folds),
        )
        for group in groups
    ]


@dataclass
class _SetCapture:
    """Runs a set of samples through the models once and accumulates every consumer's
    statistics, one accumulator per part of the set (the arguments of :func:`capture_stats`)."""

    consumers: list[Consumer]
    leads: dict[str, str]  # consumer node -> the consumer whose unfolding it shares (_shared_inputs)
    source: object
    reference: object
    weights: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    products: dict[str, Product]
    feeds: dict[str, np.ndarray]
    batch_size: int
    progress: Progress | None

    def __call__(self, label: str, indices: np.ndarray, parts: np.ndarray | None = None) -> list[dict[str, ConsumerStats]]:
        """Per part (``parts`` (len(indices),): the part of each sample; None: one part), node ->
        statistics. Every part has the storage form the whole set would have."""
        parts = np.zeros(len(indices), dtype=np.int64) if parts is None else parts
        accumulators = [
            {c.node: _Accumulator(self.weights[c.node], self.targets.get(c.node, self.weights[c.node]), c.block,
                                  len(indices), self.products.get(c.node))
             for c in self.consumers}
            for _ in range(int(parts.max()) + 1)
        ]
        members: dict[str, list[Consumer]] = {}  # lead -> it and its followers, in their accumulators' order
        for consumer in self.consumers:
            members.setdefault(self.leads[consumer.node], []).append(consumer)
            for part in accumulators:
                if self.leads[consumer.node] != consumer.node:
                    part[consumer.node].follow(part[self.leads[consumer.node]])
        b_names, a_names = capture_names(self.consumers, self.products)
        total = -(-len(indices) // self.batch_size)
        for key, feed in keyed_batches(label, self.feeds, indices, self.batch_size):
            done = key[1]
            tensors_b = _tensors(self.source, key, feed, b_names)
            tensors_a = tensors_b if self.reference is None else _tensors(self.reference, key, feed, a_names)
            check_finite(tensors_b, tensors_a)
            chunk = parts[(done - 1) * self.batch_size : done * self.batch_size]
            for part in np.unique(chunk):
                picked = slice(None) if (chunk == part).all() else chunk == part  # no copy for one part
                for lead, shared in members.items():
                    x_b, x_a = tensors_b[shared[0].input], tensors_a.get(shared[0].input)
                    mine = x_b[picked]
                    products = [tensors_a[self.products[c.node].output][picked] if c.node in self.products else None
                                for c in shared]
                    theirs = None if x_a is None else mine if x_a is x_b else x_a[picked]
                    accumulators[part][lead].add(shared[0], mine, theirs, products)
            if self.progress:
                self.progress(f"capture ({label})", done, total)
        return [{node: acc.stats() for node, acc in part.items()} for part in accumulators]


def keyed_batches(label: str, feeds: dict[str, np.ndarray], indices: np.ndarray,
                  batch_size: int) -> Iterator[tuple[tuple[str, int], dict[str, np.ndarray]]]:
    """The batches of samples ``indices`` that :func:`capture_stats` runs for the set named
    ``label``, each with the key that names it in a :class:`frontier.Frontier`'s cache."""
    for done, feed in enumerate(batches(feeds, indices, batch_size), start=1):
        yield (label, done), feed


def _shared_inputs(consumers: Sequence[Consumer], weights: dict[str, np.ndarray]) -> dict[str, str]:
    """Consumer node -> the first consumer that unfolds the same input tensor the same way (the
    same geometry, block and column count; itself when none came before): one unfolding and
    one Gram matrix serve them all (a detector's box and class convs reading one feature map)."""
    first: dict[tuple, str] = {}
    return {c.node: first.setdefault((c.input, c.conv, c.block, weights[c.node].shape[0]), c.node)
            for c in consumers}


def _tensors(source, key: tuple[str, int], feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The tensors ``names`` of batch ``key`` (its inputs ``feed``) from a session or a frontier."""
    return source(key, feed, names) if callable(source) else run(source, feed, names)


def consumer_weights(model: onnx.ModelProto, groups: Sequence[ChannelGroup]) -> dict[str, np.ndarray]:
    """Consumer node -> its weight in ``model`` as the (d, m) matrix W of ``rows @ W``."""
    consumers = [c for g in groups for c in g.consumers]
    values = read_constants(model, {c.weight for c in consumers})
    return {c.node: LAYERS[c.op].matrix(c, values[c.weight]) for c in consumers}


@dataclass(frozen=True)
class Product:
    """Where a consumer's targets Y = A W can be read in a model that has the consumer as it
    is in the original (its weight W): ``output``, the consumer's output tensor, less ``bias``
    ((m,) float32, None when the output holds none). Onnxruntime computes that output anyway,
    so the capture need not unfold A to multiply it by W."""

    output: str
    bias: np.ndarray | None = None


def consumer_products(model: onnx.ModelProto, groups: Sequence[ChannelGroup],
                      weights: dict[str, np.ndarray]) -> dict[str, Product]:
    """Consumer node -> its :class:`Product`, for the consumers whose output is exactly their
    product plus a bias of their m output channels (or a scalar one): those with a float32
    weight (``weights``: as :func:`consumer_weights` reads them) and a constant bias, or none
    within the layer (a MatMul's is the Add after it)."""
    consumers = {c.node: c for g in groups for c in g.consumers}
    outputs = {node.name: node.output[0] for node in model.graph.node if node.name in consumers and node.output}
    own_biases = {node: c.bias for node, c in consumers.items() if c.bias and LAYERS[c.op].bias_input is not None}
    biases = read_constants(model, set(own_biases.values()))
    found = {}
    for node, consumer in consumers.items():
        m = weights[node].shape[1]
        own_bias = own_biases.get(node)
        bias = biases.get(own_bias) if own_bias else None
        if (node not in outputs or weights[node].dtype != np.float32
                or (own_bias and (bias is None or bias.size not in (1, m)))):
            continue
        found[node] = Product(outputs[node], None if bias is None else
                              np.broadcast_to(bias.reshape(-1).astype(np.float32), (m,)).copy())
    return found


def capture_names(consumers: Sequence[Consumer], products: dict[str, Product]) -> tuple[list[str], list[str]]:
    """The tensors a capture with a reference asks for: B's of the source (every consumer
    input) and A's of the reference (the outputs of the consumers with a product, the inputs of
    the others), each without repeats."""
    b_names = list(dict.fromkeys(c.input for c in consumers))
    a_names = list(dict.fromkeys(products[c.node].output if c.node in products else c.input for c in consumers))
    return b_names, a_names


def unfold(consumer: Consumer, x: np.ndarray) -> np.ndarray:
    """Rows of ``consumer``'s least-squares problem from its input ``x`` (first axis = samples)."""
    if consumer.conv is not None:
        return unfold_conv(x, consumer.conv)
    return unfold_dense(x)


def _concatenated(parts: list[np.ndarray]) -> np.ndarray:
    """Batches (n_i, ...) as one (sum n_i, ...) array (the one batch itself when alone)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _Accumulator:
    """Running B^T B, B^T Y, ||Y||^2 and column sums of one consumer (or its rows when few)."""

    def __init__(self, weight: np.ndarray, target: np.ndarray, block: int, samples: int,
                 product: Product | None = None):
        self.product = product  # where the targets are read (the batches then bring them), or None
        self.weight = np.asarray(weight, dtype=np.float64)
        self.target = np.asarray(target, dtype=np.float64)
        self.target32 = self.target.astype(np.float32)
        self.block = block
        self.samples = samples
        d, m = self.weight.shape
        self.totals: Totals | None = None  # the Gram form's sums, in the layout of ``form``
        self.form: type[UnfoldedRows] | type[RowWindows] = UnfoldedRows
        self._finished: Totals | None = None
        self.rows: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.b_sum, self.y_sum = np.zeros(d), np.zeros(m)  # b_sum: the row form's
        self.y_sq, self.n_rows = 0.0, 0
        self.row_form: bool | None = None
        self.per_sample = self.step = 0
        self.consumer: Consumer | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray | None, list]] = []  # (B's input, A's, products) not folded in
        self.lead: _Accumulator | None = None  # whose rows (B) these are, when shared
        self.followers: list[_Accumulator] = []
        self._joined: np.ndarray | None = None

    def follow(self, lead: _Accumulator) -> None:
        """Take B (its Gram matrix or rows, column sums, row count) from ``lead``, a consumer
        that unfolds the same input the same way; only the targets are this consumer's."""
        self.lead = lead
        lead.followers.append(self)

    def add(self, consumer: Consumer, x_b: np.ndarray, x_a: np.ndarray | None,
            products: Sequence[np.ndarray | None] | None = None) -> None:
        """Fold in one batch of the consumer's input from both models, (n, ...) each, and into
        its followers' statistics (unfolded once for all of them). ``products``: for this
        consumer and each follower in turn, its output in the model that gives A ((n, m, ...)
        for a Conv, (n, ..., m) else), from which its targets are read (:class:`Product`), or
        None where they are computed from A; ``x_a`` may be None when none is. Small batches
        are gathered up to :data:`GATHER_ROWS` rows or :data:`GATHER_ENTRIES` input entries (a
        fixed batch of 1 would otherwise make many small products); :meth:`flush` (called by
        :meth:`stats`) folds in the rest, in chunks of about :data:`CHUNK_ELEMENTS` unfolded
        entries. The Gram form of a stride-1 2-D Conv on large enough maps never unfolds every
        kernel offset (:class:`RowWindows`), and its chunks hold more samples."""
        d = self.weight.shape[0]
        if self.row_form is None:
            self.consumer = consumer
            self.per_sample = max(1, unfold(consumer, x_b[:1]).shape[0])
            row_form = self.per_sample * self.samples < d
            windows = not row_form and RowWindows.fits(consumer.conv, x_b.shape, d)
            for accumulator in [self, *self.followers]:
                accumulator.row_form = row_form
                accumulator.form = RowWindows if windows else UnfoldedRows
            shrink = consumer.conv.kernel[0] if windows else 1  # windows hold 1/kh of the unfolded entries
            self.step = max(1, CHUNK_ELEMENTS * shrink // (self.per_sample * d))
        self.pending.append((x_b, x_a, list(products or [None] * (1 + len(self.followers)))))
        samples = sum(len(x) for x, *_ in self.pending)
        if samples * self.per_sample >= GATHER_ROWS or samples * x_b[0].size >= GATHER_ENTRIES:
            self.flush()

    def flush(self) -> None:
        """Fold in the gathered batches (:meth:`add`)."""
        if not self.pending:
            return
        members = [self, *self.followers]
        same = all(a is b for b, a, _ in self.pending)
        x_b = _concatenated([b for b, *_ in self.pending])
        if same or any(a is None for _, a, _ in self.pending):  # A is B, or every target is read off
            x_a = x_b if same else None
        else:
            x_a = _concatenated([a for _, a, _ in self.pending])
        products = [None if parts[0] is None else _concatenated(parts)
                    for parts in zip(*(given for *_, given in self.pending))]
        self.pending = []
        d = self.weight.shape[0]
        for start in range(0, len(x_b), self.step):
            chunk = slice(start, start + self.step)
            b = self._patches(self.consumer, x_b[chunk])
            if b.width != d:
                raise ValueError(f"{self.consumer.node}: unfolded {b.width} columns, weight has {d}")
            a = None
            for accumulator, product in zip(members, products):
                if product is None:
                    if a is None:
                        a = b if same else self._patches(self.consumer, x_a[chunk])
                    y = None
                else:
                    y = b.product_rows(product[chunk], accumulator.product.bias)
                if self.row_form:
                    accumulator._keep(b.rows, a.rows if y is None else None, y)
                else:
                    accumulator._fold(b, a, y)

    def _patches(self, consumer: Consumer, x: np.ndarray) -> UnfoldedRows | RowWindows:
        """One chunk of ``x`` (n, ...) in this consumer's form."""
        if self.form is RowWindows:
            return RowWindows(x, consumer.conv, GRAM_BLOCK)
        return UnfoldedRows(unfold(consumer, x), GRAM_BLOCK, conv=consumer.conv is not None)

    def _fold(self, b: UnfoldedRows | RowWindows, a: UnfoldedRows | RowWindows | None,
              targets: np.ndarray | None = None) -> None:
        """Add a chunk of B and its targets: ``targets`` (r, m) float32 in B's row order, or
        None: Y = A W_A from ``a``, the chunk of A. Y, B^T B and B^T Y are computed in float32
        (BLAS), summed over at most :data:`GRAM_BLOCK` rows, then added to float64 totals."""
        own = self.lead is None  # B's statistics are the lead's
        if self.totals is None:
            self.totals = b.new_totals(self.weight.shape[1], gram=own)
        if targets is None:
            targets = a.times(self.target32)
        b.add(self.totals, targets)
        if own:
            self.n_rows += b.count
        self._add_target_sums(targets)

    def _keep(self, rows: np.ndarray, source: np.ndarray | None, product: np.ndarray | None = None) -> None:
        """Row form: keep a chunk of rows B (r, d) and its targets in float64: ``product`` (r, m)
        when given, else Y = A W_A of its rows A (r, d_A), ``source``."""
        own = self.lead is None
        wide = rows.astype(np.float64) if own else self.lead.rows[-1]
        if product is not None:
            targets = product.astype(np.float64)
        else:
            targets = (wide if source is rows else source.astype(np.float64)) @ self.target
        if own:
            self.b_sum += wide.sum(axis=0)
            self.n_rows += rows.shape[0]
            self.rows.append(wide)
        self.targets.append(targets)
        self._add_target_sums(targets)

    def _add_target_sums(self, targets: np.ndarray) -> None:
        self.y_sum += targets.sum(axis=0, dtype=np.float64)
        self.y_sq += float(np.einsum("ij,ij->", targets, targets, dtype=np.float64))

    def _gram_totals(self) -> Totals:
        """The Gram form's sums in B's column order (made once)."""
        if self._finished is None:
            self._finished = self.form.finish(self.totals)
            self.totals = None
        return self._finished

    def stats(self) -> ConsumerStats:
        inputs = self.lead or self
        inputs.flush()
        common = dict(block=self.block, n_rows=inputs.n_rows, y_sq=self.y_sq, y_sum=self.y_sum, weight=self.weight)
        if self.row_form:
            return ConsumerStats(**common, b_sum=inputs.b_sum, rows=inputs._joined_rows(),
                                 targets=np.concatenate(self.targets))
        b_totals = inputs._gram_totals()
        return ConsumerStats(**common, b_sum=b_totals.b_sum, gram=b_totals.gram, cross=self._gram_totals().cross)

    def _joined_rows(self) -> np.ndarray:
        """The rows B (N, d) in one array, made once for this consumer and its followers."""
        if self._joined is None:
            self._joined = np.concatenate(self.rows)
        return self._joined
