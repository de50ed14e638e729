"""Apply pruning plans to a model with onnx-graphsurgeon.

For every group: consumers get their re-fitted weights and bias shifts (or their kept input
rows), an input selection's consumers read a Gather of the kept channels, then producers and
per-channel parameters of pass-through ops are sliced to the kept channels, and the channel
counts ops hold in attributes or shape inputs (Reshape, grouped Conv, Split, Slice) are
renumbered. Consumer updates come first, so a node that is the consumer of one
group and the producer of the next receives both.
"""

from __future__ import annotations

import gc
from typing import Collection, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import const_value, import_graph, infer_shapes_in_place, is_huge, set_const_value
from .ops import LAYERS, bias_add_name, new_bias_name, rule_for
from .ops.layers import WEIGHT
from .types import Consumer, ConsumerUpdate, GroupPlan, PassThrough, Producer


def rewrite(model: onnx.ModelProto, plans: Sequence[GroupPlan]) -> onnx.ModelProto:
    """The pruned model: same opset, IR version, metadata and names of untouched nodes; shapes
    re-inferred.

    A consumer shared by several groups (after a Concat) takes the update of the last plan that
    touches it: that update was fitted with the earlier groups already pruned.
    """
    pruned = _pruned(model, plans)
    if is_huge(model):  # free the graphsurgeon graph, a reference cycle holding a copy of the weights
        gc.collect()
    return infer_shapes_in_place(pruned)


def rewrite_part(part: onnx.ModelProto, plans: Sequence[GroupPlan]) -> onnx.ModelProto:
    """``part``, some of a model's nodes with their own graph inputs and outputs (as
    :mod:`frontier` runs them), pruned by ``plans``: each node of the plans that ``part`` holds
    changes exactly as :func:`rewrite` changes it in the whole model; shapes are not inferred.
    ``part``'s inputs must be declared with the shapes they have in the unpruned model."""
    return _pruned(part, plans, partial=True)


def _pruned(model: onnx.ModelProto, plans: Sequence[GroupPlan], partial: bool = False) -> onnx.ModelProto:
    """The pruned model as graphsurgeon exports it (see :func:`rewrite`), shapes not inferred;
    ``partial``: the plans' nodes that ``model`` lacks are left out."""
    graph = import_graph(model)
    nodes = {node.name: node for node in graph.nodes}
    here = (lambda name: name in nodes) if partial else (lambda name: True)
    masks = channel_masks(plans)
    added_bias: dict[str, gs.Node] = {}
    for consumer, update in latest_updates(plans).values():
        if here(consumer.node):
            _update_consumer(graph, nodes, consumer, update, masks[consumer.input], added_bias)
    sliced: set[str] = set()
    for plan in plans:
        if plan.group.selects_input:
            _select_input(graph, nodes, plan, masks, here)
        for producer in plan.group.producers:
            if producer.node not in sliced and here(producer.node):
                sliced.add(producer.node)
                _slice_producer(graph, nodes[producer.node], producer, masks[producer.output], added_bias)
        for passthrough in plan.group.passthrough:
            if passthrough.node not in sliced and here(passthrough.node):
                sliced.add(passthrough.node)
                _slice_passthrough(graph, nodes[passthrough.node], passthrough, masks)
    return _export(graph, model)


def channel_masks(plans: Sequence[GroupPlan], names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Tensor name -> which positions of its channel axis survive (bool, one per position), for
    every tensor the plans prune, or only for those of ``names`` (a group's consumer inputs:
    asked once per group, all tensors would make a deep model's run quadratic in its depth)."""
    masks: dict[str, np.ndarray] = {}
    for plan in plans:
        chosen = np.asarray(plan.kept, dtype=np.int64)
        for name, layout in plan.group.tensors:
            if names is not None and name not in names:
                continue
            mask = masks.setdefault(name, np.ones(layout.width, dtype=bool))
            where = layout.positions()
            kept = np.zeros(max(layout.channels, int(chosen.max(initial=-1)) + 1), dtype=bool)
            kept[chosen] = True
            seen = where >= 0
            mask[where[seen]] = kept[: layout.channels][seen]
    return masks


def latest_updates(plans: Sequence[GroupPlan]) -> dict[str, tuple[Consumer, ConsumerUpdate]]:
    """Consumer node -> (the consumer, its update) of the last plan that touches it (a consumer
    shared by several groups, after a Concat, takes that plan's update: it was fitted with the
    earlier groups already pruned)."""
    latest: dict[str, tuple[Consumer, ConsumerUpdate]] = {}
    for plan in plans:
        updates = {update.node: update for update in plan.updates}
        for consumer in plan.group.consumers:
            latest[consumer.node] = (consumer, updates.get(consumer.node, ConsumerUpdate(consumer.node)))
    return latest


def updated_weight(consumer: Consumer, update: ConsumerUpdate, mask: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The consumer's weight tensor in the pruned model, from its original ``weight``: the
    update's re-fitted rows (the layer's scale then taken as 1), or the original rows of the input
    channels that ``mask`` (one per input channel position) keeps."""
    rule = LAYERS[consumer.op]
    if update.weight is not None:
        if update.weight.shape[0] != int(mask.sum()) * consumer.block:
            raise ValueError(f"{consumer.node}: update has {update.weight.shape[0]} rows, expected {int(mask.sum()) * consumer.block}")
        return rule.weight(consumer, update.weight, weight)
    return np.take(weight, unit_columns(np.flatnonzero(mask), rule.row_block(consumer)), axis=consumer.in_axis)


def _update_consumer(graph, nodes, consumer: Consumer, update: ConsumerUpdate,
                     mask: np.ndarray, added_bias: dict[str, gs.Node]) -> None:
    node = nodes[consumer.node]
    weight = const_value(node.inputs[WEIGHT])
    set_const_value(graph, node, WEIGHT, updated_weight(consumer, update, mask, weight))
    if update.weight is not None:
        LAYERS[consumer.op].reset_scale(node.attrs)
    if update.bias_shift is not None and np.any(update.bias_shift):
        _shift_bias(graph, nodes, consumer, update.bias_shift.astype(weight.dtype), added_bias)


def _shift_bias(graph, nodes, consumer: Consumer, shift: np.ndarray, added_bias) -> None:
    """Add ``shift`` (m,) to the consumer's bias, creating the bias where there is none."""
    if consumer.bias_node is not None:
        if consumer.bias_node not in nodes:
            return  # a part without the bias Add (rewrite_part): nothing it computes reads it
        add = nodes[consumer.bias_node]
        index = 0 if add.inputs[0].name == consumer.bias else 1
        set_const_value(graph, add, index, const_value(add.inputs[index]) + shift)
        return
    node, index = nodes[consumer.node], LAYERS[consumer.op].bias_input
    if index is not None:
        if consumer.bias is None:
            while len(node.inputs) < index:
                node.inputs.append(gs.Variable.empty())
            node.inputs.append(gs.Constant(new_bias_name(node.name), shift))
        else:
            old = np.broadcast_to(const_value(node.inputs[index]), shift.shape)
            set_const_value(graph, node, index, old + shift)
        return
    out = node.outputs[0]
    product = gs.Variable(f"{out.name}_before_bias", dtype=out.dtype)
    node.outputs.clear()
    node.outputs.append(product)
    bias = gs.Constant(new_bias_name(node.name), shift)
    add = gs.Node("Add", bias_add_name(node.name), inputs=[product, bias], outputs=[out])
    graph.nodes.append(add)
    added_bias[node.name] = add


def _slice_producer(graph, node: gs.Node, producer: Producer, mask: np.ndarray,
                    added_bias: dict[str, gs.Node]) -> None:
    """Keep the producer's output channels that survive in its output tensor (each position of
    ``mask`` is ``block`` consecutive channels where the group's units span several)."""
    block = producer.layout.block if producer.layout is not None else 1
    rows = unit_columns(np.flatnonzero(mask), block)
    set_const_value(graph, node, WEIGHT, np.take(const_value(node.inputs[WEIGHT]), rows, axis=producer.out_axis))
    index = LAYERS[producer.op].bias_input
    if index is not None and len(node.inputs) > index and node.inputs[index].name:
        _slice_last(graph, node, index, rows, len(mask) * block)
    if producer.node in added_bias:
        _slice_last(graph, added_bias[producer.node], 1, rows, len(mask) * block)


def _select_input(graph: gs.Graph, nodes: dict[str, gs.Node], plan: GroupPlan, masks: dict[str, np.ndarray],
                  here) -> None:
    """Feed an input selection's consumers (those ``here``) a Gather of the kept channels of
    its tensor, which its other readers keep reading whole. Nothing where all are kept."""
    name, layout = plan.group.tensors[0]
    mask = masks[name]
    readers = [nodes[c.node] for c in plan.group.consumers if here(c.node)]
    if mask.all() or not readers:
        return
    tensor = readers[0].inputs[0]
    axis = layout.axis if layout.rank is None else layout.rank + layout.axis
    kept = gs.Variable(f"{plan.group.name}/kept", dtype=tensor.dtype)
    indices = gs.Constant(f"{plan.group.name}/kept_channels", np.flatnonzero(mask).astype(np.int64))
    graph.nodes.append(gs.Node("Gather", f"{plan.group.name}/select", attrs={"axis": axis},
                               inputs=[tensor, indices], outputs=[kept]))
    for node in readers:
        node.inputs[0] = kept


def _slice_passthrough(graph, node: gs.Node, passthrough: PassThrough, masks: dict[str, np.ndarray]) -> None:
    """Slice a pass-through node's per-channel parameters (or fix its channel sizes) to the
    surviving positions of its input."""
    mask = masks[next(t.name for t in node.inputs if t.name in masks)]
    survivors = np.flatnonzero(mask)
    rule = rule_for(node)
    for param in passthrough.params:
        value = const_value(node.inputs[param.index])
        set_const_value(graph, node, param.index, np.take(value, unit_columns(survivors, param.block), axis=param.axis))
    if rule is not None and rule.resize is not None:  # None: a Concat, whose inputs hold the counts
        rule.resize(graph, node, passthrough, mask)


def _slice_last(graph, node: gs.Node, index: int, kept: np.ndarray, channels: int) -> None:
    """Slice a bias-like constant along its last axis if it has one entry per channel."""
    value = const_value(node.inputs[index])
    if value.ndim and value.shape[-1] == channels:
        set_const_value(graph, node, index, np.take(value, kept, axis=-1))


def _hoist_outer_initializers(model: onnx.ModelProto, outer: set[str]) -> None:
    """Move back to the main graph the initializers ``outer`` (the original's) that export put
    into subgraphs: onnx-graphsurgeon gives every If / Loop body that reads an outer weight its
    own copy, which would store a weight read by two branches twice."""
    kept = {init.name for init in model.graph.initializer}

    def hoist(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            for attr in node.attribute:
                if attr.type != onnx.AttributeProto.GRAPH:
                    continue
                inner = attr.g.initializer
                moved = [init for init in inner if init.name in outer]
                for init in moved:
                    if init.name not in kept:
                        model.graph.initializer.append(init)
                        kept.add(init.name)
                remaining = [init for init in inner if init.name not in outer]
                del inner[:]
                inner.extend(remaining)
                hoist(attr.g)

    hoist(model.graph)


def unit_columns(kept: Sequence[int] | np.ndarray, block: int) -> np.ndarray:
    """Indices of the ``block`` consecutive entries owned by each kept channel."""
    kept = np.asarray(kept, dtype=np.int64)
    return (kept[:, None] * block + np.arange(block)).ravel()


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export with the original's IR version, opsets and metadata."""
    keep = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep:
            tensor.shape = None
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    _hoist_outer_initializers(model, {init.name for init in original.graph.initializer})
    model.ir_version = original.ir_version
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(original, field))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    return model
