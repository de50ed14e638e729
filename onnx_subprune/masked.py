"""One group pruned by masking instead of removing its channels, for measuring its cost.

A group's removed channels reach nothing but its consumers (and channel-wise ops and shapes on
the way), so a model whose consumers read zero weights for them, and their new weights and bias
for the kept ones, computes what the pruned model computes. Only the consumers change: the
weight and bias they read are redirected to new initializers, a MatMul without a bias gets an
Add after it. No graph surgery, no shape renumbering: the sensitivity curves measure many such
models (:mod:`sensitivity`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import proto_attrs, read_constants
from .ops import LAYERS
from .ops.layers import BIAS, WEIGHT
from .rewrite import channel_masks, unit_columns
from .types import Consumer, ConsumerUpdate, GroupPlan


def masked(model: onnx.ModelProto, plan: GroupPlan) -> onnx.ModelProto:
    """A copy of ``model`` computing what ``rewrite(model, [plan])`` computes: the plan's
    consumers read zero weight rows for the removed channels, the plan's weights for the kept
    ones and their shifted bias."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    masks = channel_masks([plan])
    updates = {update.node: update for update in plan.updates}
    consumers = plan.group.consumers
    values = read_constants(model, {c.weight for c in consumers} | {c.bias for c in consumers if c.bias})
    nodes = {node.name: node for node in result.graph.node}
    for consumer in consumers:
        update = updates.get(consumer.node, ConsumerUpdate(consumer.node))
        _mask_consumer(result, nodes, consumer, update, masks[consumer.input], values)
    return result


def _mask_consumer(model: onnx.ModelProto, nodes: dict, consumer: Consumer, update: ConsumerUpdate,
                   mask: np.ndarray, values: dict[str, np.ndarray]) -> None:
    node, rule = nodes[consumer.node], LAYERS[consumer.op]
    weight = values[consumer.weight]
    rows = unit_columns(np.flatnonzero(mask), rule.row_block(consumer))
    where = [slice(None)] * weight.ndim
    where[consumer.in_axis] = rows
    full = np.zeros_like(weight)
    if update.weight is not None:
        full[tuple(where)] = rule.weight(consumer, update.weight, weight)
        if "alpha" in proto_attrs(node):  # the fitted weight has the scale folded in
            next(a for a in node.attribute if a.name == "alpha").f = 1.0
    else:
        full[tuple(where)] = weight[tuple(where)]
    node.input[WEIGHT] = _constant(model, f"{consumer.node}__masked_weight", full)
    if update.bias_shift is not None and np.any(update.bias_shift):
        _shift_bias(model, nodes, consumer, update.bias_shift.astype(weight.dtype), values)


def _shift_bias(model: onnx.ModelProto, nodes: dict, consumer: Consumer, shift: np.ndarray,
                values: dict[str, np.ndarray]) -> None:
    """Add ``shift`` (m,) to the consumer's bias (as the rewrite does), creating it where there is none."""
    name = f"{consumer.node}__masked_bias"
    old = values[consumer.bias] if consumer.bias else np.zeros_like(shift)
    bias = _constant(model, name, (np.broadcast_to(old, shift.shape) if consumer.bias_node is None else old) + shift)
    if consumer.bias_node is not None:
        add = nodes[consumer.bias_node]
        add.input[list(add.input).index(consumer.bias)] = bias
        return
    node = nodes[consumer.node]
    if LAYERS[consumer.op].bias_input is not None:
        while len(node.input) < BIAS:
            node.input.append("")
        if len(node.input) == BIAS:
            node.input.append(bias)
        else:
            node.input[BIAS] = bias
        return
    product = f"{node.output[0]}__before_bias"
    add = helper.make_node("Add", [product, bias], [node.output[0]], name=f"{consumer.node}__masked_bias_add")
    node.output[0] = product
    position = list(model.graph.node).index(node)
    model.graph.node.insert(position + 1, add)


def _constant(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name
