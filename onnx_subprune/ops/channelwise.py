"""Channel-wise ops: one output whose channels are those of the input, in place.

Each rule, given a node reached by a group (and the group's :class:`Layout` in its input),
returns the layout of its output and the per-channel parameters to slice, or raises
:class:`NotChannelWise` with the reason. :data:`THROUGH` maps op types to their rules;
:data:`GROUPED_CONV` is the rule of a Conv with group > 1 (depthwise, with or without a channel
multiplier, or grouped), which keeps whole conv groups apart.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import const_value
from ..types import Layout, PassThrough, SlicedParam
from .base import CoarserUnits, NotChannelWise, OpRule, only_first_output as _only_first_output
from .layers import is_depthwise


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
    if not layout.is_nchw:
        raise NotChannelWise("BatchNormalization does not act on the channel axis here")
    for tensor in node.inputs[1:]:
        if const_value(tensor) is None:
            raise NotChannelWise(f"BatchNormalization parameter {tensor.name} is not constant")
    return layout, tuple(SlicedParam(index=i, axis=0, block=layout.block) for i in range(1, 5))


def _pool(node: gs.Node, layout: Layout, group: set[str] | None):
    _only_first_output(node)
    if not layout.is_nchw:
        raise NotChannelWise(f"{node.op} is not applied to an N x C x ... tensor")
    return layout, ()


def _resize(node: gs.Node, layout: Layout, group: set[str] | None):
    """Resize/Upsample of the spatial axes only (constant scales of 1 on batch and channels)."""
    _only_first_output(node)
    if not layout.is_nchw:
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
    if not layout.is_nchw or node.attrs.get("axis", 1) != 1:
        raise NotChannelWise("Flatten does not map N x C x H x W to N x (C*H*W)")
    return _flat_layout(node, layout), ()


def _reshape(node: gs.Node, layout: Layout, group: set[str] | None):
    """Reshape N x C x H x W -> N x (C*H*W), written as [0|-1|N, C*H*W] or [0|N, -1]."""
    shape = const_value(node.inputs[1])
    if shape is None:
        raise NotChannelWise(f"Reshape {node.name} has a computed shape")
    flat = _flat_layout(node, layout) if layout.is_nchw else None
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
    block = layout.block * int(np.prod(spatial))  # a unit of several channels owns all their features
    return replace(layout, axis=-1, rank=2, block=block)


def _transpose(node: gs.Node, layout: Layout, group: set[str] | None):
    """Transpose moves the channel axis to wherever the permutation puts it."""
    _only_first_output(node)
    if layout.rank is None or layout.block != 1:
        raise NotChannelWise(f"Transpose {node.name} of a tensor of unknown rank")
    perm = list(node.attrs.get("perm", range(layout.rank)[::-1]))
    moved = perm.index(layout.rank + layout.axis)
    return replace(layout, axis=moved - layout.rank), ()


def _conv_groups(node: gs.Node, layout: Layout | None) -> tuple[str, int, int]:
    """(kind, a, b) of a Conv with group g > 1 and a constant weight (g*b, a, *kernel): conv group
    j reads input channels [j*a, (j+1)*a) and writes outputs [j*b, (j+1)*b). With ``layout`` (of
    the input), check that the input has the g*a channels."""
    kind = "depthwise" if is_depthwise(node) else "grouped"
    group = int(node.attrs.get("group", 1))
    shape = node.inputs[1].shape if len(node.inputs) > 1 else None
    known = shape is not None and len(shape) > 2 and all(isinstance(d, int) for d in shape[:2])
    if layout is not None and (
        not layout.is_nchw or not known or group * shape[1] != layout.width * layout.block
    ):
        raise NotChannelWise(f"{kind} Conv {node.name} does not match the {layout.width * layout.block} channels")
    if const_value(node.inputs[1]) is None or not known:
        raise NotChannelWise(f"weight of {kind} Conv {node.name} is not a constant")
    if shape[0] % group:
        raise NotChannelWise(f"{kind} Conv {node.name} has {shape[0]} outputs for {group} groups")
    return kind, int(shape[1]), int(shape[0]) // group


def _units_of(node: gs.Node, layout: Layout, channels: int, side: str) -> int:
    """Conv groups per unit of ``layout`` at the ``side`` of a grouped Conv whose conv groups
    have ``channels`` channels on that side; :class:`CoarserUnits` when a unit cuts one."""
    if layout.block % channels == 0:
        return layout.block // channels
    factor = math.lcm(layout.block, channels) // layout.block
    where = f"grouped Conv {node.name} has conv groups of {channels} {side} channels"
    if not layout.is_full:
        raise NotChannelWise(f"{where}, and its {side} holds channels of several groups")
    if layout.channels % factor or layout.channels // factor < 2:
        raise NotChannelWise(
            f"{where}: the group's {layout.channels * layout.block} channels do not make at "
            f"least 2 units of whole conv groups")
    raise CoarserUnits(factor, f"{where}, pruned {layout.block} at a time")


def _grouped_conv(node: gs.Node, layout: Layout, group: set[str] | None):
    """A Conv with group g > 1 keeps its conv groups apart, so it is channel-wise on units of
    whole conv groups: removing a unit of its input removes the unit's conv groups, their
    filters and bias entries, and their outputs. Its output carries the same units, each
    ``layout.block / a * b`` channels wide (a, b: input and output channels of a conv group).

    - depthwise (a = b = 1): one output channel per input channel, as before;
    - depthwise with a channel multiplier m (a = 1, b = m): a unit of the output is its input
      channel's m outputs (``Layout.block`` m), so every later op and consumer prunes them
      together;
    - grouped (a > 1): when the group's units are smaller than a conv group, the rule raises
      :class:`CoarserUnits` and analysis starts the group again with units of whole conv
      groups (the producer's outputs then go in blocks of a): the number of conv groups
      shrinks, every surviving conv group keeps its channels, and C_in and C_out stay
      multiples of the new group count.

    The other design, the same number of channels kept in every conv group, needs a selection
    constrained across conv groups and column blocks that are not contiguous; it is not done.
    """
    kind, per_in, per_out = _conv_groups(node, layout)
    out_block = _units_of(node, layout, per_in, "input") * per_out
    params = [SlicedParam(index=1, axis=0, block=out_block)]
    if len(node.inputs) > 2 and node.inputs[2].name:
        if const_value(node.inputs[2]) is None:
            raise NotChannelWise(f"bias of {kind} Conv {node.name} is not a constant")
        params.append(SlicedParam(index=2, axis=0, block=out_block))
    return replace(layout, block=out_block), tuple(params)


def _grouped_conv_upstream(node: gs.Node, output: Layout) -> Layout:
    """The input units of a grouped Conv from its output's (whole conv groups each)."""
    _, per_in, per_out = _conv_groups(node, None)
    if not output.is_nchw:
        raise NotChannelWise(f"grouped Conv {node.name} does not write the channels on axis 1")
    return replace(output, block=_units_of(node, output, per_out, "output") * per_in)


def _group_count(graph: gs.Graph, node: gs.Node, passthrough: PassThrough, mask: np.ndarray) -> None:
    """A grouped Conv keeps the conv groups of its surviving units (one per channel when
    depthwise)."""
    node.attrs["group"] = int(mask.sum()) * (int(node.attrs["group"]) // len(mask))


GROUPED_CONV = OpRule(through=_grouped_conv, upstream=_grouped_conv_upstream, resize=_group_count)
"""The rule of a Conv with group > 1 (a Conv with group = 1 is a layer: see :mod:`.layers`)."""

DEPTHWISE = GROUPED_CONV
"""A depthwise Conv is the grouped Conv whose conv groups have one input channel."""


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
