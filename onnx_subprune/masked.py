"""One group pruned by masking instead of removing its channels, for measuring its cost.

A group's removed channels reach nothing but its consumers (and channel-wise ops and shapes on
the way), so a model whose consumers read zero weights for them, and their new weights and bias
for the kept ones, computes what the pruned model computes. Only the consumers change, and no
shape: :class:`MaskedRunner` makes their weights and biases inputs of one session (a MatMul
without a bias gets an Add after it), so that the sensitivity curves (:mod:`sensitivity`)
measure a group at every count without a rewritten model or a session each. Only the given
groups' consumers read inputs: onnxruntime optimizes the other layers as constants (on
MiniLM, one session for all groups made each run so much slower that it lost to a session per
point).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from . import runtime
from .graph import proto_attrs, read_constants
from .ops import LAYERS
from .ops.layers import BIAS, WEIGHT
from .rewrite import channel_masks, unit_columns
from .types import Consumer, ConsumerUpdate, GroupPlan
from .verify import predict_with


class MaskedRunner:
    """One session of ``model`` whose consumers of ``groups`` read their weight and bias from
    inputs (Gemm's alpha folded into the weight; a bias of zeros where there was none): run it
    with the original values, or with one group's masked ones (:meth:`outputs`)."""

    def __init__(self, model: onnx.ModelProto, groups, providers: list[str]):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        consumers = list({c.node: c for group in groups for c in group.consumers}.values())
        self.values = read_constants(model, {c.weight for c in consumers} | {c.bias for c in consumers if c.bias})
        nodes = {node.name: node for node in self.model.graph.node}
        self.defaults: dict[str, np.ndarray] = {}
        for consumer in consumers:
            self._open(nodes, consumer)
        self.session = runtime.session(self.model, providers)

    def _open(self, nodes: dict, consumer: Consumer) -> None:
        """Make the consumer's weight and bias inputs ``<node>__weight`` / ``<node>__bias``."""
        node, rule = nodes[consumer.node], LAYERS[consumer.op]
        weight = self.values[consumer.weight] * np.asarray(consumer.scale, self.values[consumer.weight].dtype)
        if "alpha" in proto_attrs(node):
            next(a for a in node.attribute if a.name == "alpha").f = 1.0
        node.input[WEIGHT] = self._input(f"{consumer.node}__weight", weight)
        width = rule.matrix(consumer, weight).shape[1]
        bias = self.values[consumer.bias] if consumer.bias else np.zeros(width, weight.dtype)
        name = self._input(f"{consumer.node}__bias", bias)
        if consumer.bias_node is not None:
            add = nodes[consumer.bias_node]
            add.input[list(add.input).index(consumer.bias)] = name
        elif rule.bias_input is not None:
            while len(node.input) < BIAS:
                node.input.append("")
            if len(node.input) == BIAS:
                node.input.append(name)
            else:
                node.input[BIAS] = name
        else:
            product = f"{node.output[0]}__before_bias"
            add = helper.make_node("Add", [product, name], [node.output[0]], name=f"{consumer.node}__bias_add")
            node.output[0] = product
            self.model.graph.node.insert(list(self.model.graph.node).index(node) + 1, add)

    def _input(self, name: str, value: np.ndarray) -> str:
        self.model.graph.input.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), None))
        self.defaults[name] = np.ascontiguousarray(value)
        return name

    def plan_inputs(self, plan: GroupPlan) -> dict[str, np.ndarray]:
        """The weight and bias inputs of ``plan``'s consumers for the model it prunes."""
        masks = channel_masks([plan])
        updates = {update.node: update for update in plan.updates}
        inputs = {}
        for consumer in plan.group.consumers:
            update = updates.get(consumer.node, ConsumerUpdate(consumer.node))
            rule = LAYERS[consumer.op]
            weight = self.defaults[f"{consumer.node}__weight"]
            rows = unit_columns(np.flatnonzero(masks[consumer.input]), rule.row_block(consumer))
            where = [slice(None)] * weight.ndim
            where[consumer.in_axis] = rows
            full = np.zeros_like(weight)
            full[tuple(where)] = weight[tuple(where)] if update.weight is None else rule.weight(consumer, update.weight, weight)
            inputs[f"{consumer.node}__weight"] = full
            if update.bias_shift is not None and np.any(update.bias_shift):
                old = self.defaults[f"{consumer.node}__bias"]
                shift = update.bias_shift.astype(weight.dtype)
                inputs[f"{consumer.node}__bias"] = (old if consumer.bias_node is not None
                                                    else np.broadcast_to(old, shift.shape)) + shift
        return inputs

    def outputs(self, feeds: dict[str, np.ndarray], batch_size: int,
                plan: GroupPlan | None = None) -> dict[str, np.ndarray]:
        """The model's outputs on ``feeds`` (first axis = samples) with ``plan``'s group masked
        (None: the original), run in batches and concatenated along axis 0."""
        inputs = {**self.defaults, **(self.plan_inputs(plan) if plan is not None else {})}
        return predict_with(self.session, feeds, batch_size, inputs)
