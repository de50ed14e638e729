"""Find the channel groups of a model: producer -> channel-wise ops -> consumers.

Every layer of :data:`ops.LAYERS` (Conv with group=1, Gemm, MatMul) with a constant weight is a
candidate producer. Its output channels are followed through the channel-wise and routing ops of
the :mod:`ops` registry to the layers that read them. A candidate that cannot be pruned safely is
reported as :class:`Skipped` with the reason.

A Conv with group > 1 is channel-wise on units of whole conv groups: when a group reaches one
with smaller units, the group is discovered again with units that many times larger (its
producers' outputs pruned that many at a time; ``ChannelGroup.channels`` counts units).
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import const_value, import_graph
from .metrics import count_params
from .ops import LAYERS, CoarserUnits, mixes, NotChannelWise, broadcasts, concat_layout, is_depthwise, is_grouped, layer_rule, rule_for
from .types import Analysis, ChannelGroup, Consumer, Layout, PassThrough, Producer, Skipped


def analyze(model: onnx.ModelProto, include: Sequence[str] = (), exclude: Sequence[str] = (),
            select_inputs: bool = False) -> Analysis:
    """Channel groups (in topological order of their first producer) and skipped producers;
    with ``select_inputs`` also the :func:`input_selections` of the layers no group reaches,
    each placed before the group its first consumer produces.

    ``exclude``: node-name globs; a group any of whose producers or consumers matches is not
    pruned. ``include``: when given, only groups with a producer (an input selection: a
    consumer) that matches are pruned.
    """
    graph = import_graph(model, values=True)
    found = _discover(graph)
    if select_inputs:
        found = Analysis(groups=_in_order(graph, [*found.groups, *input_selections(graph, found.groups)]),
                         skipped=found.skipped)
    groups, skipped = [], list(found.skipped)
    for group in found.groups:
        reason = _filtered(group, include, exclude)
        if reason is None:
            groups.append(group)
        else:
            skipped += [Skipped(p.node, p.op, reason) for p in group.producers]
    return Analysis(groups=tuple(groups), skipped=tuple(skipped))


def coverage(model: onnx.ModelProto, analysis: Analysis) -> dict:
    """How much of the model the groups reach: groups, channels, and the float parameters of
    the tensors whose shape the groups change (each counted once) as a fraction of all."""
    graph = import_graph(model)
    nodes, tensors = {node.name: node for node in graph.nodes}, graph.tensors()
    touched: dict[str, int] = {}
    for group in analysis.groups:
        names = [p.weight for p in group.producers] + [c.weight for c in group.consumers]
        names += [t.bias for t in (*group.producers, *group.consumers) if t.bias]
        names += [nodes[p.node].inputs[q.index].name for p in group.passthrough for q in p.params]
        for name in names:
            value = const_value(tensors[name])
            if value is not None and np.issubdtype(value.dtype, np.floating):
                touched[name] = value.size
    total = count_params(model)
    return {
        "groups": len(analysis.groups),
        "channels": sum(g.channels for g in analysis.groups),
        "params_in_groups": sum(touched.values()),
        "params_total": total,
        "fraction": sum(touched.values()) / total if total else 0.0,
    }


def analyze_selecting(model: onnx.ModelProto, include: Sequence[str], exclude: Sequence[str],
                      select_inputs: str) -> tuple[Analysis, Analysis]:
    """(the groups to prune when no target asks for more, every group found) for
    ``select_inputs`` "auto", "always" or "never" (:data:`config.SELECT_INPUTS`): the first has
    the input selections with "always", or with "auto" where there is no channel group; the
    second has them unless "never"."""
    found = analyze(model, include, exclude, select_inputs=select_inputs != "never")
    plain = found.channel_groups()
    return (found if select_inputs == "always" or not plain.groups else plain), found


def _filtered(group: ChannelGroup, include: Sequence[str], exclude: Sequence[str]) -> str | None:
    """Why ``group`` is left out by the include / exclude globs (None: it is kept)."""
    names = [p.node for p in group.producers] + [c.node for c in group.consumers]
    for pattern in exclude:
        hit = next((name for name in names if fnmatch.fnmatchcase(name, pattern)), None)
        if hit:
            return f"excluded by the pattern {pattern} ({hit})"
    if include and not any(fnmatch.fnmatchcase(name, pattern) for name in group.changes for pattern in include):
        return f"not matched by the include patterns {' '.join(include)}"
    return None


def _discover(graph: gs.Graph) -> Analysis:
    """Every channel group of ``graph`` and every candidate producer that is skipped."""
    boundary = _Boundary(graph)
    groups, skipped, taken = [], [], set()
    for node in graph.nodes:
        if node.op not in LAYERS or node.name in taken:
            continue
        try:
            producer, layout = _producer(node)
            group = _component_in_units(producer, layout, node.outputs[0], boundary)
        except NotChannelWise as reason:
            skipped.append(Skipped(node=node.name, op=node.op, reason=str(reason)))
            continue
        except Exception as error:  # an op, attribute or shape no rule foresaw: skip, never crash
            skipped.append(Skipped(node=node.name, op=node.op, reason=_unforeseen(error)))
            continue
        taken.update(p.node for p in group.producers)
        groups.extend(_atoms(group, graph))
    return Analysis(groups=tuple(groups), skipped=tuple(skipped))


MIN_SELECTED = 8
"""Fewest input channels a layer needs for an input selection: fewer are raw signals (colour
planes, audio channels) more than features."""

MIN_OUTPUTS_LAST_AXIS = 256
"""Fewest outputs (summed over the layers that share it) for an input selection on the last
axis. Such a Gather copies one element at a time: on onnxruntime CPU, magika's (2048 x 200 of
257) took 639 us, 1.56 ns an element, while the MatMul it fed did 0.0067 ns a MAC, so a
gathered element costs about 230 MACs; keeping k of n saves (n - k) * m MACs per k copied,
which is m at half kept. On the channel axis of a Conv the Gather copies whole planes (0.05 ns
an element) and pays for itself at any width."""


def input_selections(graph: gs.Graph, groups: Sequence[ChannelGroup]) -> list[ChannelGroup]:
    """An input selection (a :class:`ChannelGroup` without producers) for each tensor that
    layers read as their data input while no group prunes their input channels: the output of
    a LayerNorm, an LSTM, a residual sum, a Reshape no rule follows. The layers reading one
    tensor share the selection. Left out: graph inputs, tensors of a group, layers whose input
    no rule describes, fewer than :data:`MIN_SELECTED` channels, a last axis feeding fewer than
    :data:`MIN_OUTPUTS_LAST_AXIS` outputs, and a tensor of unknown rank before opset 11 (its
    Gather would need a negative axis)."""
    covered = {c.node for g in groups for c in g.consumers}
    whole = {name for g in groups for name, _ in g.tensors} | {t.name for t in graph.inputs}
    readers: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if layer_rule(node) is None or node.name in covered or len(node.inputs) <= 1:
            continue
        tensor = node.inputs[0]
        if tensor.name and tensor.name not in whole and const_value(tensor) is None:
            readers.setdefault(tensor.name, []).append(node)
    selections = []
    for name, nodes in readers.items():
        tensor = nodes[0].inputs[0]
        try:
            layouts = {LAYERS[node.op].input_layout(node) for node in nodes}
            if len(layouts) != 1:
                continue
            layout = layouts.pop()
            consumers = tuple(_consumer(node, tensor, layout) for node in nodes)
        except Exception:  # NotChannelWise or a shape no rule foresaw: the layer's inputs stay whole
            continue
        outputs = sum(LAYERS[node.op].outputs(node.attrs, const_value(node.inputs[1]).shape) for node in nodes)
        gatherable = layout.rank is not None or graph.opset >= 11  # a negative Gather axis needs opset 11
        if gatherable and layout.channels >= MIN_SELECTED and (layout.axis != -1 or outputs >= MIN_OUTPUTS_LAST_AXIS):
            selections.append(ChannelGroup(name=f"{nodes[0].name}:input", channels=layout.channels, producers=(),
                                           consumers=consumers, tensors=((name, layout),)))
    return selections


def _in_order(graph: gs.Graph, groups: Sequence[ChannelGroup]) -> tuple[ChannelGroup, ...]:
    """``groups`` in the topological order of the node each is led by (:attr:`ChannelGroup.lead`);
    an input selection before the group its consumer produces."""
    position = {node.name: index for index, node in enumerate(graph.nodes)}
    return tuple(sorted(groups, key=lambda g: (position[g.lead], not g.selects_input)))


def _unforeseen(error: Exception) -> str:
    """The skip reason for an error no rule raised on purpose (one line)."""
    text = " ".join(str(error).split())[:200]
    return f"the graph around it could not be analyzed ({type(error).__name__}: {text})"


def _atoms(group: ChannelGroup, graph: gs.Graph) -> list[ChannelGroup]:
    """Split ``group`` where a Split or Slice cuts its channels: each piece (a range of channels
    that every tensor holds whole or not at all) is pruned on its own, so that size targets can
    count it exactly. Pieces that no consumer reads are left as they are."""
    bounds = sorted({0, group.channels} | {b for _, layout in group.tensors for lo, hi, _ in layout.windows for b in (lo, hi)})
    if len(bounds) == 2:
        return [group]
    nodes = {node.name: node for node in graph.nodes}
    pieces = []
    for start, end in zip(bounds, bounds[1:]):
        layouts = {name: cut for name, layout in group.tensors if (cut := _cut(layout, start, end)) is not None}
        consumers = tuple(replace(c, layout=layouts[c.input]) for c in group.consumers if c.input in layouts)
        if not consumers:
            continue
        reads = lambda name: any(t.name in layouts for t in nodes[name].inputs)
        pieces.append(ChannelGroup(
            name=f"{group.name}[{start}:{end}]",
            channels=end - start,
            producers=tuple(replace(p, layout=layouts[p.output]) for p in group.producers if p.output in layouts),
            consumers=consumers,
            passthrough=tuple(p for p in group.passthrough if reads(p.node)),
            tensors=tuple(layouts.items()),
        ))
    return pieces


def _cut(layout: Layout, start: int, end: int) -> Layout | None:
    """The layout of the group's channels [start, end) alone, renumbered from 0."""
    windows = tuple(
        (max(lo, start) - start, min(hi, end) - start, offset + max(lo, start) - lo)
        for lo, hi, offset in layout.windows if max(lo, start) < min(hi, end)
    )
    return replace(layout, channels=end - start, windows=windows) if windows else None


class _Boundary:
    """Graph inputs and outputs, where a group must not reach."""

    def __init__(self, graph: gs.Graph):
        self.inputs = {t.name for t in graph.inputs}
        self.outputs = {t.name for t in graph.outputs}


def _producer(node: gs.Node) -> tuple[Producer, Layout]:
    """The producer description of ``node`` and the layout of its output channels."""
    if is_depthwise(node):
        raise NotChannelWise("depthwise Conv: its channels are pruned with its input's group")
    if is_grouped(node):
        raise NotChannelWise(f"grouped Conv (group={node.attrs['group']}): its channels are pruned "
                             "with its input's group, whole conv groups at a time")
    producer, layout = LAYERS[node.op].producer(node)
    if layout.channels < 2:
        raise NotChannelWise("only one output channel")
    return producer, layout


_MAX_REGROUPING = 8
"""How many times a group may be discovered again with coarser units (grouped Convs)."""


def _component_in_units(producer: Producer, layout: Layout, start: gs.Tensor, boundary: _Boundary) -> ChannelGroup:
    """:func:`_component`, started again with units ``factor`` times larger each time a grouped
    Conv asks for them (:class:`ops.CoarserUnits`): the producer's outputs are then pruned in
    blocks of consecutive channels, and so is every tensor of the group."""
    for _ in range(_MAX_REGROUPING):
        try:
            return _component(producer, layout, start, boundary)
        except CoarserUnits as need:
            if not layout.is_full or layout.channels % need.factor:
                raise NotChannelWise(str(need)) from None
            layout = Layout(channels=layout.channels // need.factor, axis=layout.axis, rank=layout.rank,
                            block=layout.block * need.factor)
            producer = replace(producer, layout=layout)
    raise NotChannelWise("grouped Convs ask for ever larger units of channels")


def _component(producer: Producer, layout: Layout, start: gs.Tensor, boundary: _Boundary) -> ChannelGroup:
    """All tensors tied to the channels of ``start``, walking both ways through channel-wise ops.

    Downstream, a tensor's readers are consumers (Conv/Gemm/MatMul) or pass-through ops; an
    elementwise op joining another tensor (residual Add, gating Mul) pulls that tensor in too.
    Upstream, a tensor comes from a pass-through op or from another producer, which then joins
    the group (its output channels are pruned identically).
    """
    layouts: dict[str, Layout] = {start.name: layout}
    producers: dict[str, Producer] = {producer.node: producer}
    passthrough: dict[str, PassThrough] = {}
    consumers: dict[str, Consumer] = {}
    nodes: dict[str, gs.Node] = {}
    queue = [start]

    def reach(tensor: gs.Tensor, tensor_layout: Layout) -> None:
        known = layouts.get(tensor.name)
        if known is None:
            layouts[tensor.name] = tensor_layout
            queue.append(tensor)
        elif known != tensor_layout:
            raise NotChannelWise(f"tensor {tensor.name} carries the channels in two layouts")

    def add_passthrough(node: gs.Node, in_layout: Layout) -> None:
        rule = rule_for(node)
        out_layout, params = rule.through(node, in_layout, None)
        axis = None if out_layout.rank is None else out_layout.rank + out_layout.axis
        passthrough[node.name] = PassThrough(node.name, node.op, params, channel_axis=axis)
        nodes[node.name] = node
        for tensor in node.inputs[:rule.data]:
            if const_value(tensor) is None and tensor.name and not broadcasts(tensor, in_layout):
                reach(tensor, in_layout)
        reach(node.outputs[0], out_layout)

    concats: dict[str, gs.Node] = {}
    while queue or any(name not in passthrough for name in concats):
        if not queue:
            for name, node in concats.items():
                if name not in passthrough:
                    passthrough[name] = PassThrough(name, node.op)
                    reach(node.outputs[0], concat_layout(node, layouts))
            continue
        tensor = queue.pop(0)
        current = layouts[tensor.name]
        if tensor.name in boundary.outputs:
            raise NotChannelWise(f"channels reach graph output {tensor.name}")
        if tensor.name in boundary.inputs:
            raise NotChannelWise(f"channels are tied to graph input {tensor.name}")
        source = tensor.inputs[0] if tensor.inputs else None
        if source is not None and source.name not in producers and source.name not in passthrough:
            rule = rule_for(source)
            if layer_rule(source) is not None:
                try:
                    other, other_layout = _producer(source)
                except NotChannelWise as reason:
                    raise NotChannelWise(f"channels are tied to {source.op} {source.name}, not prunable: {reason}") from None
                if (other_layout.channels, other_layout.axis) != (current.seen * current.block, current.axis) or \
                        current.total != current.seen or len(current.windows) != 1 or \
                        current.flat:  # a block of features, not of channels
                    raise NotChannelWise(f"{source.op} {source.name} joins the group with other channels")
                whole = current.is_full and current.block == 1
                producers[source.name] = other if whole else replace(other, layout=current)
            elif rule is not None and rule.through is not None:
                add_passthrough(source, rule.upstream(source, current))
            elif rule is not None:
                raise NotChannelWise(f"channels are tied to the output of {source.op} {source.name}")
            else:
                raise NotChannelWise(f"channels come from {mixes(source)}")
        for node in tensor.outputs:
            if node.op == "Concat" and node.name in passthrough:
                raise NotChannelWise(f"channels reach Concat {node.name} after its output was laid out")
            if node.name in passthrough or node.name in consumers:
                continue
            rule = rule_for(node)
            if node.op == "Concat":
                concats[node.name] = node
            elif layer_rule(node) is not None:
                consumers[node.name] = _consumer(node, tensor, current)
            elif rule is not None and rule.inspect is not None:
                rule.inspect(node, current)
            elif rule is not None and rule.route is not None:
                axis = None if current.rank is None else current.rank + current.axis
                passthrough[node.name] = PassThrough(node.name, node.op, channel_axis=axis)
                for out, out_layout in zip(node.outputs, rule.route(node, tensor, current)):
                    if out_layout is not None:
                        reach(out, out_layout)
            elif rule is not None:
                add_passthrough(node, current)
            else:
                raise NotChannelWise(f"channels reach {mixes(node)}")
    for node in nodes.values():
        _check_inputs(node, layouts)
    if not consumers:
        raise NotChannelWise("channels reach no Conv, Gemm or MatMul")
    return ChannelGroup(
        name=producer.node,
        channels=layout.channels,
        producers=tuple(producers.values()),
        consumers=tuple(consumers.values()),
        passthrough=tuple(passthrough.values()),
        tensors=tuple(layouts.items()),
    )


def _check_inputs(node: gs.Node, layouts: dict[str, Layout]) -> None:
    """Every non-constant input of a pass-through node must carry the group, laid out alike."""
    seen = [layouts[t.name] for t in node.inputs if t.name in layouts]
    if any(other != seen[0] for other in seen[1:]):
        raise NotChannelWise(f"inputs of {node.op} {node.name} lay the channels out differently")
    rule_for(node).through(node, seen[0], set(layouts))


def _consumer(node: gs.Node, tensor: gs.Tensor, layout: Layout) -> Consumer:
    """Describe ``node`` reading the group's channels from ``tensor``."""
    if node.inputs[0] is not tensor:
        raise NotChannelWise(f"channels reach {node.op} {node.name} as its weight operand")
    return LAYERS[node.op].consumer(node, tensor, layout)
