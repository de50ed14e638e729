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

from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from . import runtime
from .frontier import Wiring
from .graph import proto_attrs, read_constants, shape_info
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
        self.original, self.providers = model, providers
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.consumers = list({c.node: c for group in groups for c in group.consumers}.values())
        self.values = read_constants(model, {c.weight for c in self.consumers} | {c.bias for c in self.consumers if c.bias})
        nodes = {node.name: node for node in self.model.graph.node}
        self.defaults: dict[str, np.ndarray] = {}
        for consumer in self.consumers:
            self._open(nodes, consumer)
        self._session = None

    @property
    def session(self):
        """The session of the whole model with the consumers' weights as inputs (made once)."""
        if self._session is None:
            self._session = runtime.session(self.model, self.providers)
        return self._session

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

    def outputs_each(self, feeds: dict[str, np.ndarray], batch_size: int,
                     plans: Sequence[GroupPlan]) -> list[dict[str, np.ndarray]]:
        """:meth:`outputs` for each of ``plans``, computing what they share once: per batch, the
        part of the model above the consumers (:class:`_Downstream`) runs once, and only the
        part from the consumers on runs for every plan. A model that fixes its batch above 1
        runs whole for each plan (its last batch would need padding inside the part)."""
        if (runtime.fixed_batch(self.original, feeds) or 1) > 1:
            return [self.outputs(feeds, batch_size, plan) for plan in plans]
        split = _Downstream(self.original, self.model, self.consumers, self.providers)
        inputs = [{**self.defaults, **self.plan_inputs(plan)} for plan in plans]
        parts: list[dict[str, list[np.ndarray]]] = [{} for _ in plans]
        samples = len(next(iter(feeds.values())))
        for feed in runtime.batches(feeds, np.arange(samples), batch_size):
            shared, boundary = split.upstream(feed)
            for index, extra in enumerate(inputs):
                values = {**shared, **split.downstream(boundary, extra)}
                for value in self.model.graph.output:  # the model's order
                    parts[index].setdefault(value.name, []).append(values[value.name])
        return [{name: np.concatenate(values) for name, values in part.items()} for part in parts]


class _Downstream:
    """A model cut at the consumers of a masked group: the nodes that descend from them (the
    part a mask changes) and the tensors they read from above (the boundary). The part above
    runs on the original model, whose outputs the masks do not reach are taken from it."""

    def __init__(self, original: onnx.ModelProto, opened: onnx.ModelProto, consumers: Sequence[Consumer],
                 providers: list[str]):
        wiring = Wiring(opened)
        starts = {c.node for c in consumers}
        below: set[int] = set()
        changed: set[str] = set()
        for index, node in enumerate(wiring.nodes):  # topological order
            if node.name in starts or wiring.reads[index] & changed:
                below.add(index)
                changed.update(wiring.outputs(index))
        reads = set().union(*(wiring.reads[i] for i in below))
        below |= {wiring.made_by[name] for name in reads  # the Constant nodes the part reads come along
                  if name in wiring.made_by and wiring.nodes[wiring.made_by[name]].op_type == "Constant"}
        declared = {value.name for value in original.graph.input}
        weights = [name for name in wiring.inputs if name not in declared]
        boundary = sorted(name for name in reads - changed - wiring.initializers if wiring.made_by.get(name) not in below)
        self.computed = [name for name in boundary if name in wiring.made_by]
        self.given = [name for name in boundary if name in wiring.inputs and name not in weights]
        outputs = [value.name for value in opened.graph.output]
        self.kept_outputs = [name for name in outputs if name not in changed]
        self.part_outputs = [name for name in outputs if name in changed]
        asked = tuple(dict.fromkeys([*self.computed, *self.kept_outputs]))
        self.above = runtime.session(original, providers, asked) if asked else None
        types = {value.name: value.type.tensor_type.elem_type for value in shape_info(original).graph.value_info
                 if value.type.HasField("tensor_type")}
        inputs = [wiring.inputs[name] if name in wiring.inputs else helper.make_tensor_value_info(
            name, types.get(name, onnx.TensorProto.FLOAT), None) for name in [*self.given, *self.computed, *weights]]
        graph = opened.graph
        part = helper.make_graph(
            [wiring.nodes[i] for i in sorted(below)], f"{graph.name}-below", inputs,
            [value for value in graph.output if value.name in changed],
            initializer=[init for init in graph.initializer if init.name in reads],
            sparse_initializer=[s for s in graph.sparse_initializer if s.values.name in reads],
        )
        model = helper.make_model(part, opset_imports=opened.opset_import, ir_version=opened.ir_version)
        model.functions.extend(opened.functions)
        self.below = runtime.session(model, providers)

    def upstream(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """For one batch: the model outputs no mask reaches, and the boundary tensors."""
        values = runtime.run(self.above, feed, [*self.computed, *self.kept_outputs]) if self.above else {}
        boundary = {name: feed[name] for name in self.given}
        boundary.update({name: values[name] for name in self.computed})
        return {name: values[name] for name in self.kept_outputs}, boundary

    def downstream(self, boundary: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """For one batch: the outputs the mask reaches, with the consumers' weights ``extra``."""
        return runtime.run(self.below, boundary, self.part_outputs, extra=extra) if self.part_outputs else {}
