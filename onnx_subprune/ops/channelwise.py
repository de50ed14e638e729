"""Channel-wise ops: one output whose channels are those of the input, in place.

Each rule, given a node reached by a group (and the group's :class:`Layout` in its input),
returns the layout of its output and the per-channel parameters to slice, or raises
:class:`NotChannelWise` with the reason. :data:`THROUGH` maps op types to their rules.
"""

from __future__ import annotations

from dataclasses import replace
import numpy as np
import onnx_graphsurgeon as gs

from ..graph import const_value
from ..types import Layout, PassThrough, SlicedParam
from .base import NotChannelWise, OpRule, only_first_output as _only_first_output


def per_channel_param(value: np.ndarray, layout: Layout, index: int) -> SlicedParam | None:
    """How an elementwise constant broadcast against ``layout`` is sliced (None: not at all)."""
    if layout.rank is not None and value.ndim > layout.rank:
        raise NotChannelWise(f"constant of rank {value.ndim} broadcasts the tensor to a higher rank")
    position = value.ndim + layout.axis
    if position < 0 or value.shape[position] == 1:
        return None
    if value.shape[position] != layout.width * layout.block:
        raise NotChannelWise(
            f"constant of shape {list(value.shape)} does not match {layout.width} channels"
        )
    return SlicedParam(index=index, axis=position, block=layout.block)


def _unary(node: gs.Node, layout: Layout, group: set[str] | None) -> tuple[Layout, tuple[SlicedParam, ...]]:
    _only_first_output(node)
    return layout, ()


def _scalar_extra_inputs(node: gs.Node, layout: Layout, group: set[str] | None):
    """Clip (min/max), Dropout (ratio, training_mode): extra inputs must be constant scalars."""
    _only_first_output(node)
    for tensor in node.inputs[1:]:
        if tensor.name == "":
            continue
        value = const_value(tensor)
        if value is None or value.size != 1:
            raise NotChannelWise(f"input {tensor.name} of {node.op} is not a constant scalar")
    return layout, ()


def _elementwise(node: gs.Node, layout: Layout, group: set[str] | None):
    """Add/Sub/Mul/Div/Pow/PRelu: other inputs are group tensors or broadcastable constants."""
    _only_first_output(node)
    params = []
    for index, tensor in enumerate(node.inputs):
        if group is not None and tensor.name in group:
            continue
        value = const_value(tensor)
        if value is None and group is None:
            continue
        if value is None:
            raise NotChannelWise(
                f"channels meet tensor {tensor.name} from outside the group at {node.op} "
                f"{node.name} (residual or gating connection)"
            )
        param = per_channel_param(value, layout, index)
        if param is not None:
            params.append(param)
    return layout, tuple(params)


def _batchnorm(node: gs.Node, layout: Layout, group: set[str] | None):
    _only_first_output(node)
    if not layout.is_nchw or layout.block != 1:
        raise NotChannelWise("BatchNormalization does not act on the channel axis here")
    for tensor in node.inputs[1:]:
        if const_value(tensor) is None:
            raise NotChannelWise(f"BatchNormalization parameter {tensor.name} is not constant")
    return layout, tuple(SlicedParam(index=i, axis=0) for i in range(1, 5))


def _pool(node: gs.Node, layout: Layout, group: set[str] | None):
    _only_first_output(node)
    if not layout.is_nchw or layout.block != 1:
        raise NotChannelWise(f"{node.op} is not applied to an N x C x ... tensor")
    return layout, ()


def _resize(node: gs.Node, layout: Layout, group: set[str] | None):
    """Resize/Upsample of the spatial axes only (constant scales of 1 on batch and channels)."""
    _only_first_output(node)
    if not layout.is_nchw or layout.block != 1:
        raise NotChannelWise(f"{node.op} {node.name} is not applied to an N x C x ... tensor")
    if len(node.inputs) > 3 and node.inputs[3].name:
        raise NotChannelWise(f"{node.op} {node.name} resizes to given sizes")
    if "axes" in node.attrs:
        raise NotChannelWise(f"{node.op} {node.name} resizes chosen axes")
    index = 1 if node.op == "Upsample" or len(node.inputs) == 2 else 2
    scales = node.attrs.get("scales") if len(node.inputs) <= index else const_value(node.inputs[index])
    if scales is None or len(scales) < 2 or list(np.asarray(scales)[:2]) != [1, 1]:
        raise NotChannelWise(f"{node.op} {node.name} does not keep the batch and channel axes")
    for tensor in node.inputs[1:]:
        if tensor.name and const_value(tensor) is None:
            raise NotChannelWise(f"input {tensor.name} of {node.op} {node.name} is not a constant")
    return layout, ()


def _flatten(node: gs.Node, layout: Layout, group: set[str] | None):
    if not layout.is_nchw or layout.block != 1 or node.attrs.get("axis", 1) != 1:
        raise NotChannelWise("Flatten does not map N x C x H x W to N x (C*H*W)")
    return _flat_layout(node, layout), ()


def _reshape(node: gs.Node, layout: Layout, group: set[str] | None):
    """Reshape N x C x H x W -> N x (C*H*W), written as [0|-1|N, C*H*W] or [0|N, -1]."""
    shape = const_value(node.inputs[1])
    if shape is None:
        raise NotChannelWise(f"Reshape {node.name} has a computed shape")
    flat = _flat_layout(node, layout) if layout.is_nchw and layout.block == 1 else None
    features = None if flat is None else flat.channels * flat.block
    if flat is None or shape.size != 2 or not (
        shape[1] == features or (shape[1] == -1 and shape[0] != -1)
    ):
        raise NotChannelWise(f"Reshape {node.name} to {shape.tolist()} is not a flatten")
    return flat, ()


def _flat_layout(node: gs.Node, layout: Layout) -> Layout:
    dims = node.inputs[0].shape
    spatial = dims[2:] if dims is not None else None
    if not spatial or not all(isinstance(d, int) for d in spatial):
        raise NotChannelWise(f"spatial size before {node.op} {node.name} is unknown")
    block = int(np.prod(spatial))
    return replace(layout, axis=-1, rank=2, block=block)


def _transpose(node: gs.Node, layout: Layout, group: set[str] | None):
    """Transpose moves the channel axis to wherever the permutation puts it."""
    _only_first_output(node)
    if layout.rank is None or layout.block != 1:
        raise NotChannelWise(f"Transpose {node.name} of a tensor of unknown rank")
    perm = list(node.attrs.get("perm", range(layout.rank)[::-1]))
    moved = perm.index(layout.rank + layout.axis)
    return replace(layout, axis=moved - layout.rank), ()


def _depthwise(node: gs.Node, layout: Layout, group: set[str] | None):
    """A depthwise Conv keeps channels apart: its filters and bias are sliced with them."""
    if not layout.is_nchw or layout.block != 1 or node.attrs["group"] != layout.width:
        raise NotChannelWise(f"depthwise Conv {node.name} does not match the {layout.width} channels")
    if const_value(node.inputs[1]) is None:
        raise NotChannelWise(f"weight of depthwise Conv {node.name} is not a constant")
    params = [SlicedParam(index=1, axis=0)]
    if len(node.inputs) > 2 and node.inputs[2].name:
        if const_value(node.inputs[2]) is None:
            raise NotChannelWise(f"bias of depthwise Conv {node.name} is not a constant")
        params.append(SlicedParam(index=2, axis=0))
    return layout, tuple(params)


def _group_count(graph: gs.Graph, node: gs.Node, passthrough: PassThrough, mask: np.ndarray) -> None:
    """A depthwise Conv keeps one group per surviving channel."""
    node.attrs["group"] = int(mask.sum())


DEPTHWISE = OpRule(through=_depthwise, resize=_group_count)
"""The rule of a depthwise Conv (a Conv is a layer otherwise: see :mod:`.layers`)."""


def _transpose_upstream(node: gs.Node, output: Layout) -> Layout:
    if output.rank is None:
        raise NotChannelWise(f"Transpose {node.name} of a tensor of unknown rank")
    perm = list(node.attrs.get("perm", range(output.rank)[::-1]))
    return replace(output, axis=perm[output.rank + output.axis] - output.rank)


def _no_upstream(node: gs.Node, output: Layout) -> Layout:
    raise NotChannelWise(f"channels reach {node.op} {node.name} from below")


THROUGH: dict[str, OpRule] = {
    **{
        op: OpRule(through=_unary)
        for op in (
            "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Erf", "Gelu",
            "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Identity", "Neg", "Abs",
            "ThresholdedRelu",
        )
    },
    "Clip": OpRule(through=_scalar_extra_inputs),
    "Dropout": OpRule(through=_scalar_extra_inputs),
    **{op: OpRule(through=_elementwise) for op in ("Add", "Sub", "Mul", "Div", "Pow", "PRelu")},
    "BatchNormalization": OpRule(through=_batchnorm),
    **{
        op: OpRule(through=_pool)
        for op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool")
    },
    "Resize": OpRule(through=_resize),
    "Upsample": OpRule(through=_resize),
    "Flatten": OpRule(through=_flatten, upstream=_no_upstream),
    "Reshape": OpRule(through=_reshape, upstream=_no_upstream),
    "Transpose": OpRule(through=_transpose, upstream=_transpose_upstream),
}
"""Channel-wise op type -> its rule."""
