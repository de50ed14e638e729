"""Layer rules: Conv, Gemm and MatMul with a constant weight, the ops whose output channels are
pruned (producers) and whose input channels are re-fitted (consumers).

One :class:`LayerRule` per op type says how to describe the node as a producer or a consumer,
how its weight maps to the (d, m) matrix W of ``rows @ W`` and back, how many outputs it has,
what it costs (MACs per sample) and where a bias created by the rewrite goes. Attributes are
read from a plain mapping, so that the rules serve graphsurgeon nodes (``node.attrs``) and
NodeProtos (:func:`graph.proto_attrs`) alike.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import const_value
from ..types import Consumer, ConvGeometry, Layout, Producer
from .base import NotChannelWise

WEIGHT, BIAS = 1, 2
"""Input indices of a layer's weight and (Conv, Gemm) bias."""


def new_bias_name(node: str) -> str:
    """Name of the bias constant the rewrite creates for layer ``node``."""
    return f"{node}_bias"


def bias_add_name(node: str) -> str:
    """Name of the Add node the rewrite appends to a MatMul ``node`` to hold a new bias."""
    return f"{node}_bias_add"


class LayerRule:
    """What the pruner knows about one layer op type (see the module docstring)."""

    op: str = ""
    bias_input: int | None = BIAS
    """Input index of the layer's own bias (None: a bias is an Add after the layer)."""

    def producer(self, node: gs.Node) -> tuple[Producer, Layout]:
        """``node`` as a producer, and the layout of its output channels."""
        raise NotImplementedError

    def consumer(self, node: gs.Node, tensor: gs.Tensor, layout: Layout) -> Consumer:
        """``node`` as a consumer reading the group's channels from ``tensor``."""
        raise NotImplementedError

    def input_layout(self, node: gs.Node) -> Layout:
        """Where all the layer's input channels sit in its data input (for an input selection)."""
        raise NotImplementedError

    def outputs(self, attrs: Mapping[str, Any], weight_shape: tuple[int, ...]) -> int:
        """Output channels m of the layer."""
        raise NotImplementedError

    def macs(self, attrs: Mapping[str, Any], out_shape: list[int], weight_shape: list[int]) -> int:
        """Multiply-accumulates for one sample, from the output and weight shapes."""
        raise NotImplementedError

    def scale(self, attrs: Mapping[str, Any]) -> float:
        """The factor the layer applies to its product (Gemm's alpha), 1 elsewhere."""
        return 1.0

    def reset_scale(self, attrs: dict[str, Any]) -> None:
        """Set the factor to 1, for a weight that has it folded in."""

    def row_block(self, consumer: Consumer) -> int:
        """Consecutive entries of the weight's input axis owned by one input channel."""
        return consumer.block

    def matrix(self, consumer: Consumer, weight: np.ndarray) -> np.ndarray:
        """The consumer's weight as the (d, m) matrix W of ``rows @ W`` (scale folded in)."""
        matrix = weight if consumer.in_axis == 0 else weight.T
        return matrix * consumer.scale

    def weight(self, consumer: Consumer, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`matrix` for a matrix with fewer rows; the scale is taken as 1."""
        return (matrix if consumer.in_axis == 0 else matrix.T).astype(like.dtype)


class _Conv(LayerRule):
    op = "Conv"

    def producer(self, node: gs.Node) -> tuple[Producer, Layout]:
        weight = own_constant(node, WEIGHT)
        if node.attrs.get("group", 1) != 1:
            raise NotChannelWise(f"grouped Conv (group={node.attrs['group']})")
        bias = optional_constant(node, BIAS)
        producer = Producer(node.name, node.op, node.inputs[WEIGHT].name, 0, bias, node.outputs[0].name)
        return producer, Layout(channels=weight.shape[0], axis=1 - weight.ndim, rank=weight.ndim)

    def consumer(self, node: gs.Node, tensor: gs.Tensor, layout: Layout) -> Consumer:
        """A Conv with group=1 reading the group on axis 1; a unit of ``layout.block`` input
        channels owns their kernel windows' columns (grouped Convs are channel-wise instead:
        :data:`.channelwise.GROUPED_CONV`)."""
        weight = own_constant(node, WEIGHT)
        if node.attrs.get("group", 1) != 1:
            raise NotChannelWise(f"channels reach grouped Conv {node.name}")
        if not layout.is_nchw or weight.shape[1] != layout.width * layout.block:
            raise NotChannelWise(f"Conv {node.name} does not read the channels on axis 1")
        return Consumer(
            node.name, node.op, tensor.name, node.inputs[WEIGHT].name, in_axis=1,
            block=layout.block * int(np.prod(weight.shape[2:])), bias=optional_constant(node, BIAS),
            conv=_geometry(node, weight, tensor), layout=layout,
        )

    def input_layout(self, node: gs.Node) -> Layout:
        weight = own_constant(node, WEIGHT)
        return Layout(channels=weight.shape[1], axis=1 - weight.ndim, rank=weight.ndim)

    def outputs(self, attrs, weight_shape) -> int:
        return int(weight_shape[0])

    def macs(self, attrs, out_shape, weight_shape) -> int:
        return int(math.prod(out_shape[1:]) * math.prod(weight_shape[1:]))

    def row_block(self, consumer: Consumer) -> int:
        # the weight's axis 1 is the channel (block of them per unit); the kernel window has axes of its own
        return consumer.layout.block if consumer.layout is not None else 1

    def matrix(self, consumer: Consumer, weight: np.ndarray) -> np.ndarray:
        return weight.reshape(weight.shape[0], -1).T * consumer.scale

    def weight(self, consumer: Consumer, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
        return matrix.T.reshape(like.shape[0], -1, *like.shape[2:]).astype(like.dtype)


class _Gemm(LayerRule):
    op = "Gemm"

    def producer(self, node: gs.Node) -> tuple[Producer, Layout]:
        weight = own_constant(node, WEIGHT)
        if node.attrs.get("transA", 0):
            raise NotChannelWise("Gemm with transA=1")
        axis = 0 if node.attrs.get("transB", 0) else 1
        bias = optional_constant(node, BIAS)
        if bias is not None and node.attrs.get("beta", 1.0) != 1.0:
            raise NotChannelWise("Gemm with beta != 1")
        producer = Producer(node.name, node.op, node.inputs[WEIGHT].name, axis, bias, node.outputs[0].name)
        return producer, Layout(channels=weight.shape[axis], axis=-1, rank=2)

    def consumer(self, node: gs.Node, tensor: gs.Tensor, layout: Layout) -> Consumer:
        weight = own_constant(node, WEIGHT)
        _last_axis(node, layout)
        if node.attrs.get("transA", 0):
            raise NotChannelWise(f"Gemm {node.name} with transA=1")
        bias = optional_constant(node, BIAS)
        if bias is not None and node.attrs.get("beta", 1.0) != 1.0:
            raise NotChannelWise(f"Gemm {node.name} with beta != 1")
        in_axis = 1 if node.attrs.get("transB", 0) else 0
        _check_inputs(node, weight, in_axis, layout)
        return Consumer(
            node.name, node.op, tensor.name, node.inputs[WEIGHT].name, in_axis=in_axis,
            block=layout.block, bias=bias, scale=self.scale(node.attrs), layout=layout,
        )

    def input_layout(self, node: gs.Node) -> Layout:
        weight = own_constant(node, WEIGHT)
        return Layout(channels=weight.shape[1 if node.attrs.get("transB", 0) else 0], axis=-1, rank=2)

    def outputs(self, attrs, weight_shape) -> int:
        return int(weight_shape[0] if attrs.get("transB", 0) else weight_shape[1])

    def macs(self, attrs, out_shape, weight_shape) -> int:
        trans_b = bool(attrs.get("transB", 0))
        return int(math.prod(out_shape[1:]) * weight_shape[1 if trans_b and len(weight_shape) > 1 else 0])

    def scale(self, attrs) -> float:
        return float(attrs.get("alpha", 1.0))

    def reset_scale(self, attrs: dict[str, Any]) -> None:
        attrs["alpha"] = 1.0


class _MatMul(LayerRule):
    op = "MatMul"
    bias_input = None

    def producer(self, node: gs.Node) -> tuple[Producer, Layout]:
        weight = own_constant(node, WEIGHT)
        if weight.ndim != 2:
            raise NotChannelWise(f"MatMul weight has rank {weight.ndim}, not 2")
        producer = Producer(node.name, node.op, node.inputs[WEIGHT].name, 1, output=node.outputs[0].name)
        shape = node.outputs[0].shape
        return producer, Layout(channels=weight.shape[1], axis=-1, rank=len(shape) if shape else None)

    def consumer(self, node: gs.Node, tensor: gs.Tensor, layout: Layout) -> Consumer:
        weight = own_constant(node, WEIGHT)
        _last_axis(node, layout)
        if weight.ndim != 2:
            raise NotChannelWise(f"MatMul {node.name} weight has rank {weight.ndim}, not 2")
        bias_node, bias = _bias_add(node, weight.shape[1])
        _check_inputs(node, weight, 0, layout)
        return Consumer(
            node.name, node.op, tensor.name, node.inputs[WEIGHT].name, in_axis=0,
            block=layout.block, bias=bias, bias_node=bias_node, layout=layout,
        )

    def input_layout(self, node: gs.Node) -> Layout:
        weight, shape = own_constant(node, WEIGHT), node.inputs[0].shape
        return Layout(channels=weight.shape[0], axis=-1, rank=len(shape) if shape is not None else None)

    def outputs(self, attrs, weight_shape) -> int:
        return int(weight_shape[-1])

    def macs(self, attrs, out_shape, weight_shape) -> int:
        return int(math.prod(out_shape[1:]) * (weight_shape[-2] if len(weight_shape) >= 2 else 1))


LAYERS: dict[str, LayerRule] = {rule.op: rule for rule in (_Conv(), _Gemm(), _MatMul())}
"""Layer op type -> its rule."""


def is_grouped(node: gs.Node) -> bool:
    """A Conv with group > 1 (depthwise or not): channel-wise, never a producer or consumer."""
    return node.op == "Conv" and node.attrs.get("group", 1) != 1


def is_depthwise(node: gs.Node) -> bool:
    """A Conv with one filter per input channel (group == channels, channel multiplier 1)."""
    shape = node.inputs[1].shape if node.op == "Conv" and len(node.inputs) > 1 else None
    group = node.attrs.get("group", 1)
    return group > 1 and shape is not None and len(shape) > 2 and shape[0] == group and shape[1] == 1


def is_batched_matmul(node: gs.Node) -> bool:
    """A MatMul of two activations (attention's scores and context), no weight to prune."""
    return node.op == "MatMul" and len(node.inputs) > WEIGHT and \
        const_value(node.inputs[WEIGHT]) is None and const_value(node.inputs[0]) is None


def layer_rule(node: gs.Node) -> LayerRule | None:
    """The layer rule of ``node`` (None: not a layer, a grouped Conv, which is channel-wise, or a
    MatMul of two activations, which is channel-wise on its batch axes)."""
    if node.op not in LAYERS or is_grouped(node) or is_batched_matmul(node):
        return None
    return LAYERS[node.op]


def _last_axis(node: gs.Node, layout: Layout) -> None:
    if layout.axis != -1:
        raise NotChannelWise(f"{node.op} {node.name} does not read the channels on the last axis")


def _check_inputs(node: gs.Node, weight: np.ndarray, in_axis: int, layout: Layout) -> None:
    width = layout.width * layout.block
    if weight.shape[in_axis] != width:
        raise NotChannelWise(f"{node.op} {node.name} weight does not have {width} inputs")


def _bias_add(node: gs.Node, width: int) -> tuple[str | None, str | None]:
    """The Add of a constant bias (``width`` entries) right after a MatMul."""
    out = node.outputs[0]
    if len(out.outputs) != 1 or out.outputs[0].op != "Add":
        return None, None
    add = out.outputs[0]
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    value = const_value(other)
    if value is None or value.size != width or value.shape[-1:] != (width,):
        return None, None
    if len(other.outputs) != 1:
        return None, None
    return add.name, other.name


def _geometry(node: gs.Node, weight: np.ndarray, tensor: gs.Tensor) -> ConvGeometry:
    kernel = tuple(int(k) for k in node.attrs.get("kernel_shape", weight.shape[2:]))
    dims = len(kernel)
    strides = tuple(node.attrs.get("strides", (1,) * dims))
    dilations = tuple(node.attrs.get("dilations", (1,) * dims))
    pads = tuple(node.attrs.get("pads", (0,) * (2 * dims)))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(node, tensor, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID":
        pads = (0,) * (2 * dims)
    return ConvGeometry(kernel, strides, dilations, pads)


def _same_pads(node, tensor, kernel, strides, dilations, upper: bool) -> tuple[int, ...]:
    spatial = tensor.shape[2:] if tensor.shape is not None else None
    if not spatial or not all(isinstance(d, int) for d in spatial):
        raise NotChannelWise(f"Conv {node.name} uses auto_pad with an unknown input size")
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return tuple(begin + end)


def own_constant(node: gs.Node, index: int) -> np.ndarray:
    """The constant at input ``index`` (a weight); it must be read by ``node`` alone."""
    if len(node.inputs) <= index:
        raise NotChannelWise(f"{node.op} {node.name} has no weight input")
    tensor = node.inputs[index]
    value = const_value(tensor)
    if value is None:
        source = tensor.inputs[0] if tensor.inputs else None
        what = f"computed by {source.op} {source.name}" if source else "a graph input"
        raise NotChannelWise(f"weight {tensor.name} is {what}, not a constant")
    others = [user.name for user in tensor.outputs if user is not node]
    if others:
        raise NotChannelWise(f"weight {tensor.name} is shared with {others[0]}")
    return value


def optional_constant(node: gs.Node, index: int) -> str | None:
    """Name of the constant bias at input ``index`` (None when absent)."""
    if len(node.inputs) <= index or node.inputs[index].name == "":
        return None
    tensor = node.inputs[index]
    if const_value(tensor) is None:
        raise NotChannelWise(f"bias {tensor.name} of {node.op} {node.name} is not a constant")
    return tensor.name
