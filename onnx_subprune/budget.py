"""Compression targets: an exact size model of the pruned model and per-group budget allocation.

Size model
----------
Pruning group g to k_g channels changes the shape of every constant that carries g's channels:
the producers' weights (output axis) and biases, the per-channel parameters of the ops in
between (BatchNormalization, per-channel Mul/Add, a grouped or depthwise Conv's weight), and the
consumers' weights (input axis, ``block`` entries per channel). A group whose units span several
channels (:attr:`types.Layout.block`, after a grouped Conv) shrinks each such axis by the unit's
entries per removed unit. Such an axis has
``dim + sum_g coef_g * (k_g - n_g)`` entries, so a tensor's size is a product of affine forms
in k: bilinear in (k_g, k_h) for a layer that consumes g and produces h. With refit and bias
compensation the rewrite also gives a consumer without a bias a new one of m entries (a Conv or
Gemm input, or an Add after a MatMul), sliced again if the consumer is itself a producer, and a
scalar bias becomes m entries. It does so only where one of the groups the consumer reads loses
channels: a consumer all of whose groups keep every channel is left as it is, so that term
keeps its original size while they do.

Parameters are the float entries of all constants (:func:`metrics.count_params`). The MACs of a
Conv/Gemm/MatMul (:func:`metrics.count_macs`) are its weight's entry count times a factor that
pruning does not change (output positions per sample, tokens for a MatMul), so they follow the
same forms. A constant read by several nodes and sliced for one of them gets a fresh copy there
(as :func:`graph.set_const_value` does); the original stays while an unsliced reader remains.
Groups are whole in every tensor: analyze cuts a group where a Split or Slice would leave part
of it in a tensor, so an axis shrinks by exactly the channels its groups lose.

Allocation
----------
Each group may keep counts on a grid (at least a floor, multiples of ``round_to`` where the group
has that many channels, and always all n). ``uniform`` bisects one keep fraction, then adds
single grid steps to the groups furthest below it while the target holds; ``equal-loss`` (the
rule of Kuzmin et al. 2019) bisects a tolerated loss tau, gives each group the fewest channels
whose monotone loss envelope is <= tau, then spends what is left of the budget one grid step at a
time on the best loss decrease per unit of cost. Both stop only when no further step fits, so
the result is within one step (one channel, or ``round_to``) of the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from .errors import SubpruneError
from .graph import proto_attrs, subgraph_reads
from .metrics import FLOAT_TYPES, count_params, graph_params, layer_macs as macs_of_layers
from .ops import LAYERS, bias_add_name
from .types import ChannelGroup

_Axis = tuple[int, tuple[tuple[int, float], ...]]  # (axis, ((group index, coefficient), ...))


@dataclass(frozen=True)
class _Term:
    """One tensor of the pruned model: its original ``shape`` and the axes that shrink."""

    name: str
    shape: tuple[int, ...]
    axes: tuple[_Axis, ...]
    params: bool
    macs: float  # MACs per entry (0: not a layer weight)
    when: tuple[int, ...] = ()  # groups of a bias the refit creates or widens (see below)
    idle: int = 0  # its size while none of them loses a channel (the consumer is left as it is)

    def size(self, k: np.ndarray, n: np.ndarray) -> float:
        if self.when and all(k[g] == n[g] for g in self.when):
            return self.idle
        dims = list(self.shape)
        for axis, coefs in self.axes:
            dims[axis] = dims[axis] + sum(c * (k[g] - n[g]) for g, c in coefs)
        if all(float(d).is_integer() for d in dims):  # exact (Python ints), else an estimate (Split pieces)
            return math.prod(int(d) for d in dims)
        return float(np.prod(dims, dtype=np.float64))

    @property
    def groups(self) -> set[int]:
        return {g for _, coefs in self.axes for g, _ in coefs} | set(self.when)


class SizeModel:
    """Params and MACs of the model with group i pruned to ``k[i]`` channels, exactly as
    :func:`rewrite.rewrite` will build it (``refit``/``bias_compensation`` as in the run)."""

    def __init__(self, model: onnx.ModelProto, groups: Sequence[ChannelGroup], *,
                 refit: bool = True, bias_compensation: bool = True):
        self.groups = tuple(groups)
        self.channels = np.array([g.channels for g in groups], dtype=np.int64)
        layer_macs = dict(macs_of_layers(model))
        self.terms, fixed_params, fixed_macs = _build_terms(model, self.groups, refit and bias_compensation, layer_macs)
        self.fixed_params, self.fixed_macs = fixed_params, fixed_macs
        self.by_group: list[list[int]] = [[] for _ in groups]
        for index, term in enumerate(self.terms):
            for g in term.groups:
                self.by_group[g].append(index)
        self.params_before = count_params(model)
        self.macs_before = sum(layer_macs.values())  # = count_macs(model)

    def _k(self, k) -> np.ndarray:
        k = np.asarray(k, dtype=np.int64)
        if k.shape != self.channels.shape:
            raise ValueError(f"need {len(self.channels)} counts, got {k.shape}")
        return k

    def totals(self, k) -> tuple[int, int]:
        """(params, MACs) of the pruned model."""
        k = self._k(k)
        params, macs = self.fixed_params, self.fixed_macs
        for term in self.terms:
            size = term.size(k, self.channels)
            params += size if term.params else 0
            macs += size * term.macs
        return int(round(params)), int(round(macs))

    def group_totals(self, k, group: int) -> tuple[int, int]:
        """(params, MACs) of the tensors and layers whose size depends on ``group``."""
        k = self._k(k)
        params = macs = 0
        for index in self.by_group[group]:
            term = self.terms[index]
            size = term.size(k, self.channels)
            params += size if term.params else 0
            macs += size * term.macs
        return int(round(params)), int(round(macs))

    def step(self, k, group: int, new: int) -> tuple[float, float]:
        """Change of (params, MACs) when ``group`` goes from k[group] to ``new`` channels."""
        k = self._k(k)
        moved = k.copy()
        moved[group] = new
        before, after = self.group_totals(k, group), self.group_totals(moved, group)
        return after[0] - before[0], after[1] - before[1]


def _build_terms(model: onnx.ModelProto, groups: Sequence[ChannelGroup], new_biases: bool,
                 layer_macs: dict[str, int]):
    """Terms of every float constant and layer touched by a group; the rest as fixed sums."""
    graph = model.graph
    consts: dict[str, tuple[tuple[int, ...], bool]] = {
        init.name: (tuple(init.dims), init.data_type in FLOAT_TYPES) for init in graph.initializer
    }
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = (tuple(value.dims), value.data_type in FLOAT_TYPES)
    alias = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    nodes = {node.name: node for node in graph.node}

    def source(name: str) -> str | None:
        seen = 0
        while name not in consts and name in alias and seen < 64:
            name, seen = alias[name], seen + 1
        return name if name in consts else None

    # slot (node, input index) -> its constant's (new base shape, {axis: {group: coef}})
    slots: dict[tuple[str, int], list] = {}

    def slot(node: str, index: int, base: tuple[int, ...] | None = None) -> list:
        key = (node, index)
        if key not in slots:
            proto = nodes.get(node)
            name = source(proto.input[index]) if proto is not None and index < len(proto.input) else None
            shape = base if base is not None else (consts[name][0] if name else None)
            if shape is None:
                raise ValueError(f"input {index} of {node} is not a constant")
            slots[key] = [name, tuple(shape), {}]
        return slots[key]

    def shrink(entry: list, axis: int, group: int, coef: float) -> None:
        axis = axis % len(entry[1])
        entry[2].setdefault(axis, {}).setdefault(group, 0.0)
        entry[2][axis][group] += coef

    created: dict[tuple[str, int], list] = {}
    # slot or created bias -> (groups of its consumer, entries while the consumer is untouched)
    conditional: dict[tuple[str, int], tuple[set[int], int]] = {}

    def condition(key: tuple[str, int], g: int, idle: int) -> None:
        conditional.setdefault(key, (set(), idle))[0].add(g)

    # 1. consumer updates: bias shifts (new biases, broadcast scalar biases)
    if new_biases:
        for g, group in enumerate(groups):
            for consumer in group.consumers:
                proto, rule = nodes[consumer.node], LAYERS[consumer.op]
                weight_shape = consts[source(proto.input[1])][0]
                m = rule.outputs(proto_attrs(proto), weight_shape)
                if consumer.bias_node is not None:
                    add = nodes[consumer.bias_node]
                    index = 0 if add.input[0] == consumer.bias else 1
                    key = (add.name, index)
                    old = consts[source(add.input[index])][0]
                    if key not in slots:
                        slot(add.name, index, tuple(np.broadcast_shapes(old, (m,))))
                    if slots[key][1] != tuple(old):
                        condition(key, g, math.prod(old))
                elif rule.bias_input is not None:
                    index = rule.bias_input
                    has_bias = len(proto.input) > index and proto.input[index] != ""
                    key = (consumer.node, index)
                    if has_bias:
                        old = consts[source(proto.input[index])][0]
                        if key not in slots:
                            slot(consumer.node, index, tuple(np.broadcast_shapes(old, (m,))))
                        if slots[key][1] != tuple(old):
                            condition(key, g, math.prod(old))
                    else:
                        created.setdefault(key, [None, (m,), {}])
                        condition(key, g, 0)
                else:
                    key = (bias_add_name(consumer.node), 1)
                    created.setdefault(key, [None, (m,), {}])
                    condition(key, g, 0)
    # 2. slicing: producers, pass-through parameters, consumers' inputs. An axis holding a
    # window of the group's channels shrinks by the removed channels in it (analyze cuts a group
    # where a Split or Slice would leave a tensor with part of a window, so windows are whole).
    for g, group in enumerate(groups):
        n = group.channels
        for producer in group.producers:
            unit = 1 if producer.layout is None else producer.layout.block  # channels per unit
            made = (n if producer.layout is None else producer.layout.width) * unit  # the layer's outputs
            shrink(slot(producer.node, 1), producer.out_axis, g, float(unit))
            proto = nodes[producer.node]
            index = LAYERS[producer.op].bias_input
            if index is not None and len(proto.input) > index and proto.input[index] != "":
                entry = slot(producer.node, index)
                if entry[1] and entry[1][-1] == made:
                    shrink(entry, -1, g, float(unit))
            for key in ((producer.node, index), (bias_add_name(producer.node), 1)):
                if key in created and created[key][1][-1] == made:
                    shrink(created[key], -1, g, float(unit))
        for passthrough in group.passthrough:
            for param in passthrough.params:
                shrink(slot(passthrough.node, param.index), param.axis, g, float(param.block))
        for consumer in group.consumers:
            block = LAYERS[consumer.op].row_block(consumer)
            shrink(slot(consumer.node, 1), consumer.in_axis, g, float(block))
    # 3. terms: sliced slots; constants kept whole while an unsliced reader remains
    macs_per_entry = _macs_per_weight_entry(model, consts, source, layer_macs)
    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] in alias and source(node.output[0]):
            continue
        for index, name in enumerate(node.input):
            origin = source(name) if name else None
            if origin is not None:
                readers.setdefault(origin, []).append((node.name, index))
    for name in subgraph_reads(graph.node):  # outer constants an If / Loop body reads: kept whole
        origin = source(name)
        if origin is not None:
            readers.setdefault(origin, []).append(("", -1))
    terms: list[_Term] = []
    fixed_params = graph_params(graph) - graph_params(graph, nested=False)  # the bodies' own
    sliced_sources = set()
    for (node, index), (name, shape, axes) in slots.items():
        sliced_sources.add(name)
        is_float = consts[name][1] if name else True
        when, idle = conditional.get((node, index), ((), 0))
        terms.append(_Term(f"{node}:{index}", shape, _freeze(axes), is_float,
                           macs_per_entry.get(node, 0) if index == 1 else 0, tuple(sorted(when)), idle))
    for (node, index), (_, shape, axes) in created.items():
        when, idle = conditional[(node, index)]
        terms.append(_Term(f"{node}:{index} (new bias)", shape, _freeze(axes), True, 0, tuple(sorted(when)), idle))
    for name, (shape, is_float) in consts.items():
        users = readers.get(name, [])
        if not users:
            continue  # unused: dropped by the rewrite's cleanup
        if name in sliced_sources and all(user in slots for user in users):
            continue
        if is_float:
            fixed_params += math.prod(int(d) for d in shape)
    fixed_macs = sum(v for node, v in layer_macs.items()
                     if (node, 1) not in slots or macs_per_entry.get(node) is None)
    return terms, fixed_params, int(fixed_macs)


def _freeze(axes: dict) -> tuple[_Axis, ...]:
    return tuple((axis, tuple(sorted(coefs.items()))) for axis, coefs in sorted(axes.items()))


def _macs_per_weight_entry(model, consts, source, layer_macs: dict[str, int]) -> dict[str, float]:
    """Layer -> MACs per entry of its constant weight (output positions per sample)."""
    per_entry = {}
    nodes = {node.name: node for node in model.graph.node}
    for name, macs in layer_macs.items():
        origin = source(nodes[name].input[1])
        if origin is None:
            continue
        entries = math.prod(int(d) for d in consts[origin][0])
        if entries:
            per_entry[name] = macs // entries if macs % entries == 0 else macs / entries
    return per_entry


# ------------------------------------------------------------------------------------ grids


def grid(channels: int, floor: int, round_to: int = 1) -> np.ndarray:
    """Allowed kept counts of a group: ``floor``..n, or the multiples of ``round_to`` from
    ``floor`` up when the group has at least ``round_to`` channels; n itself is always allowed."""
    if round_to > 1 and channels >= round_to:
        first = max(round_to, -(-floor // round_to) * round_to)
        values = list(range(first, channels + 1, round_to))
        if not values or values[-1] != channels:
            values.append(channels)
        return np.array(values, dtype=np.int64)
    return np.arange(floor, channels + 1, dtype=np.int64)


def round_count(channels: int, wanted: float, floor: int, round_to: int = 1) -> int:
    """The allowed count nearest ``wanted`` (halves up)."""
    return _nearest(grid(channels, floor, round_to), wanted)


# ------------------------------------------------------------------------------------ allocation


@dataclass(frozen=True)
class Limits:
    """Largest params and MACs allowed (None: unconstrained)."""

    params: float | None = None
    macs: float | None = None

    @classmethod
    def from_ratios(cls, size: SizeModel, params: float | None, macs: float | None) -> "Limits":
        return cls(None if params is None else params * size.params_before,
                   None if macs is None else macs * size.macs_before)

    def fits(self, totals: tuple[int, int]) -> bool:
        params, macs = totals
        return (self.params is None or params <= self.params + 1e-6) and \
            (self.macs is None or macs <= self.macs + 1e-6)

    def cost(self, delta: tuple[float, float]) -> float:
        """A step's cost as the largest fraction of a budget it uses."""
        parts = []
        if self.params is not None:
            parts.append(delta[0] / max(self.params, 1.0))
        if self.macs is not None:
            parts.append(delta[1] / max(self.macs, 1.0))
        return max(parts) if parts else 0.0


@dataclass(frozen=True)
class Allocation:
    """Kept channels per group and the predicted size; ``tolerance``: the equal-loss threshold."""

    counts: tuple[int, ...]
    params: int
    macs: int
    tolerance: float | None = None
    fraction: float | None = None


def _unreachable(size: SizeModel, limits: Limits, smallest: np.ndarray) -> SubpruneError:
    params, macs = size.totals(smallest)
    parts = []
    if limits.params is not None:
        parts.append(f"{params / size.params_before:.1%} of the params")
    if limits.macs is not None:
        parts.append(f"{macs / max(size.macs_before, 1):.1%} of the MACs")
    return SubpruneError(
        f"target cannot be met: keeping the fewest channels allowed in every group (the minimum kept "
        f"fraction) still leaves {' and '.join(parts)}; lower the minimum kept fraction or raise the target")


def reachable(size: SizeModel, grids: Sequence[np.ndarray], limits: Limits) -> bool:
    """The fewest allowed channels everywhere meet the target."""
    return limits.fits(size.totals(np.array([values[0] for values in grids])))


def check_reachable(size: SizeModel, grids: Sequence[np.ndarray], limits: Limits) -> None:
    """:class:`SubpruneError` when even the fewest allowed channels everywhere miss the target."""
    if not reachable(size, grids, limits):
        raise _unreachable(size, limits, np.array([values[0] for values in grids]))


def _fill(size: SizeModel, grids: Sequence[np.ndarray], limits: Limits, counts: np.ndarray,
          score: Callable[[int, int, int, float], tuple]) -> np.ndarray:
    """Add single grid steps while one fits; each time take the step with the highest
    ``score(group, current, next, cost)`` (a sort key; ties to the lowest group index)."""
    counts = counts.copy()
    totals = size.totals(counts)
    while True:
        best, best_key = None, None
        for g, values in enumerate(grids):
            position = int(np.searchsorted(values, counts[g]))
            if position + 1 >= len(values) or values[position] != counts[g]:
                continue
            new = int(values[position + 1])
            delta = size.step(counts, g, new)
            after = (totals[0] + delta[0], totals[1] + delta[1])
            if not limits.fits((round(after[0]), round(after[1]))):
                continue
            key = score(g, int(counts[g]), new, limits.cost(delta))
            if best_key is None or key > best_key:
                best, best_key = (g, new), key
        if best is None:
            return counts
        counts[best[0]] = best[1]
        totals = size.totals(counts)


def allocate_uniform(size: SizeModel, grids: Sequence[np.ndarray], limits: Limits) -> Allocation:
    """One keep fraction f for every group (count nearest f*n on its grid), the largest that
    fits, found by bisection; then single steps to the groups furthest below f while they fit."""
    channels = size.channels
    check_reachable(size, grids, limits)
    smallest = np.array([values[0] for values in grids])

    def counts_at(f: float) -> np.ndarray:
        return np.array([_nearest(values, f * n) for n, values in zip(channels, grids)])

    low, high = 0.0, 1.0
    if limits.fits(size.totals(counts_at(1.0))):
        low = 1.0
    else:
        for _ in range(60):
            middle = (low + high) / 2
            if limits.fits(size.totals(counts_at(middle))):
                low = middle
            else:
                high = middle
    counts = np.maximum(counts_at(low), smallest)
    counts = _fill(size, grids, limits, counts,
                   lambda g, k, new, cost: (-k / channels[g], -cost, -g))
    params, macs = size.totals(counts)
    return Allocation(tuple(int(c) for c in counts), params, macs, fraction=low)


def _nearest(values: np.ndarray, wanted: float) -> int:
    """The grid value nearest ``wanted`` (halves up)."""
    return int(values[int(np.argmin(np.abs(values - wanted - 1e-9)))])


def allocate_equal_loss(size: SizeModel, grids: Sequence[np.ndarray],
                        losses: Sequence[Callable[[int], float]], limits: Limits) -> Allocation:
    """Equal-loss allocation: the smallest tolerated loss tau whose counts (fewest channels with
    envelope <= tau per group) fit, then the left-over budget by loss decrease per cost.

    ``losses[g](k)``: predicted loss of the model with group g alone pruned to k channels.
    """
    check_reachable(size, grids, limits)
    envelopes = [monotone_envelope([losses[g](int(k)) for k in values]) for g, values in enumerate(grids)]

    def counts_at(tau: float) -> np.ndarray:
        return np.array([int(values[int(np.argmax(env <= tau))]) for values, env in zip(grids, envelopes)])

    taus = np.unique(np.concatenate(envelopes))
    low, high = 0, len(taus) - 1  # counts_at(taus[-1]) is the smallest model: it fits
    while low < high:
        middle = (low + high) // 2
        if limits.fits(size.totals(counts_at(taus[middle]))):
            high = middle
        else:
            low = middle + 1
    tau = float(taus[low])
    counts = counts_at(tau)
    lookup = [dict(zip(values.tolist(), env.tolist())) for values, env in zip(grids, envelopes)]

    def score(g, k, new, cost):
        gain = lookup[g][k] ** 2 - lookup[g][new] ** 2
        return (gain / max(cost, 1e-18), -cost, -g)

    counts = _fill(size, grids, limits, counts, score)
    params, macs = size.totals(counts)
    return Allocation(tuple(int(c) for c in counts), params, macs, tolerance=tau)


def monotone_envelope(values: Sequence[float]) -> np.ndarray:
    """Running minimum from the fewest channels up: the loss never rises as channels are added."""
    return np.minimum.accumulate(np.asarray(values, dtype=np.float64))


def allocate_marginal(size: SizeModel, grids: Sequence[np.ndarray],
                      losses: Sequence[Callable[[int], float]], limits: Limits) -> Allocation:
    """The ``marginal`` allocation, an alternative to the equal-loss rule on the same curves: from every
    group whole, repeatedly take away the grid step that adds the least squared loss per unit of
    cost saved until the target holds, then refill as :func:`allocate_equal_loss` does. It
    minimizes the sum of the groups' squared losses (their errors taken as independent) greedily.
    """
    check_reachable(size, grids, limits)
    envelopes = [monotone_envelope([losses[g](int(k)) for k in values]) for g, values in enumerate(grids)]
    lookup = [dict(zip(values.tolist(), (env ** 2).tolist())) for values, env in zip(grids, envelopes)]
    counts = np.array([values[-1] for values in grids])
    while not limits.fits(size.totals(counts)):
        best, best_key = None, None
        for g, values in enumerate(grids):
            position = int(np.searchsorted(values, counts[g]))
            if position == 0:
                continue
            new = int(values[position - 1])
            saved = -limits.cost(size.step(counts, g, new))
            key = ((lookup[g][new] - lookup[g][int(counts[g])]) / max(saved, 1e-18), g)
            if best_key is None or key < best_key:
                best, best_key = (g, new), key
        counts[best[0]] = best[1]

    def score(g, k, new, cost):
        return ((lookup[g][k] - lookup[g][new]) / max(cost, 1e-18), -cost, -g)

    counts = _fill(size, grids, limits, counts, score)
    params, macs = size.totals(counts)
    return Allocation(tuple(int(c) for c in counts), params, macs)
