"""Per-op channel rules: where a tensor carries channels and how each op type treats them.

A :class:`Layout` says where the channels of a group sit in a tensor. The registry
:data:`PASS_THROUGH` maps an op type to a rule that, given a node reached by the group, returns
the layout of its output and the per-channel parameters to slice, or a reason why it is not
channel-wise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .graph import const_value
from .types import Consumer, Layout, SlicedParam


class NotChannelWise(Exception):
    """Raised by a rule: the node mixes channels or cannot be sliced (message = reason)."""


Rule = Callable[[gs.Node, Layout, "set[str] | None"], tuple[Layout, tuple[SlicedParam, ...]]]
"""(node, layout of the group's input, names of the group's tensors) -> (output layout, params).

While the group is still being discovered the names are None: a non-constant input is then
accepted, and checked once the whole group is known.
"""


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


def is_depthwise(node: gs.Node) -> bool:
    """A Conv with one filter per input channel (group == channels, channel multiplier 1)."""
    shape = node.inputs[1].shape if node.op == "Conv" and len(node.inputs) > 1 else None
    group = node.attrs.get("group", 1)
    return group > 1 and shape is not None and len(shape) > 2 and shape[0] == group and shape[1] == 1


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


def input_layout(node: gs.Node, output: Layout) -> Layout:
    """The layout of a pass-through node's group input, given that of its output (walking
    the graph upstream)."""
    if node.op in ("Flatten", "Reshape"):
        raise NotChannelWise(f"channels reach {node.op} {node.name} from below")
    if node.op == "Transpose":
        if output.rank is None:
            raise NotChannelWise(f"Transpose {node.name} of a tensor of unknown rank")
        perm = list(node.attrs.get("perm", range(output.rank)[::-1]))
        return replace(output, axis=perm[output.rank + output.axis] - output.rank)
    return output


def rule_for(node: gs.Node) -> Rule | None:
    """The pass-through rule of ``node`` (None: the node is not channel-wise)."""
    if node.op == "Conv":
        return _depthwise if is_depthwise(node) else None
    return PASS_THROUGH.get(node.op)


def _only_first_output(node: gs.Node) -> None:
    for extra in node.outputs[1:]:
        if extra.outputs:
            raise NotChannelWise(f"second output {extra.name} of {node.op} is used")


PASS_THROUGH: dict[str, Rule] = {
    **{
        op: _unary
        for op in (
            "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Erf", "Gelu",
            "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Identity", "Neg", "Abs",
            "ThresholdedRelu",
        )
    },
    "Clip": _scalar_extra_inputs,
    "Dropout": _scalar_extra_inputs,
    **{op: _elementwise for op in ("Add", "Sub", "Mul", "Div", "Pow", "PRelu")},
    "BatchNormalization": _batchnorm,
    **{
        op: _pool
        for op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool")
    },
    "Resize": _resize,
    "Upsample": _resize,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
}


def consumer_matrix(consumer: Consumer, weight: np.ndarray) -> np.ndarray:
    """The consumer's weight as the (d, m) matrix W of ``rows @ W`` (alpha folded in)."""
    if consumer.op == "Conv":
        return weight.reshape(weight.shape[0], -1).T * consumer.scale
    matrix = weight if consumer.in_axis == 0 else weight.T
    return matrix * consumer.scale


def matrix_to_weight(consumer: Consumer, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Inverse of :func:`consumer_matrix` for a matrix with fewer rows; alpha is taken as 1."""
    if consumer.op == "Conv":
        return matrix.T.reshape(like.shape[0], -1, *like.shape[2:]).astype(like.dtype)
    return (matrix if consumer.in_axis == 0 else matrix.T).astype(like.dtype)


def _channel_axis(node: gs.Node, layout: Layout, axis: int) -> bool:
    """Whether ``axis`` (an attribute, possibly negative) is the layout's channel axis."""
    if layout.rank is None:
        raise NotChannelWise(f"{node.op} {node.name} on a tensor of unknown rank")
    return axis % layout.rank == layout.rank + layout.axis


def _window(layout: Layout, start: int, end: int) -> Layout | None:
    """The layout of positions [start, end) of the channel axis (None: no group channel there)."""
    windows = []
    for lo, hi, offset in layout.windows:
        first, last = max(start, offset), min(end, offset + hi - lo)
        if first < last:
            windows.append((lo + first - offset, lo + last - offset, first - start))
    return replace(layout, windows=tuple(windows), total=end - start) if windows else None


def concat_layout(node: gs.Node, layouts: dict[str, Layout]) -> Layout:
    """The group's layout in the output of a channel-axis Concat, from its inputs' layouts
    (``layouts``: tensor name -> layout, for the inputs that carry the group)."""
    first = next(layouts[t.name] for t in node.inputs if t.name in layouts)
    if first.block != 1 or not _channel_axis(node, first, node.attrs["axis"]):
        raise NotChannelWise(f"Concat {node.name} is not on the channel axis")
    windows, position = [], 0
    for tensor in node.inputs:
        if tensor.name in layouts:
            windows += [(lo, hi, position + offset) for lo, hi, offset in layouts[tensor.name].windows]
        position += _static_dim(node, tensor, first)
    if len({lo for lo, _, _ in windows}) != len(windows):
        raise NotChannelWise(f"Concat {node.name} repeats the channels")
    return replace(first, windows=tuple(sorted(windows)), total=position)


def _split(node: gs.Node, tensor: gs.Tensor, layout: Layout) -> list[Layout | None]:
    """Split on the channel axis: each output holds a window of the group's channels."""
    if not _channel_axis(node, layout, node.attrs.get("axis", 0)):
        return [layout] * len(node.outputs)
    if layout.block != 1:
        raise NotChannelWise(f"Split {node.name} after a Flatten")
    sizes = split_sizes(node, layout.width)
    bounds = np.cumsum([0, *sizes])
    return [_window(layout, int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:])]


def split_sizes(node: gs.Node, width: int) -> list[int]:
    """Output sizes of a Split of ``width`` positions (input, attribute, or equal parts)."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        sizes = const_value(node.inputs[1])
        if sizes is None:
            raise NotChannelWise(f"Split {node.name} has computed sizes")
        return [int(s) for s in sizes]
    if "split" in node.attrs:
        return [int(s) for s in node.attrs["split"]]
    parts = len(node.outputs)
    if width % parts:
        raise NotChannelWise(f"Split {node.name} of {width} channels into {parts} unequal parts")
    return [width // parts] * parts


def _slice(node: gs.Node, tensor: gs.Tensor, layout: Layout) -> list[Layout | None]:
    """Slice: a window of the channel axis (step 1), or any slicing of other axes."""
    if layout.rank is None:
        raise NotChannelWise(f"Slice {node.name} on a tensor of unknown rank")
    window = slice_window(node, layout.width, layout.rank + layout.axis, layout.rank)
    if window is None:
        return [layout]
    if layout.block != 1:
        raise NotChannelWise(f"Slice {node.name} after a Flatten")
    return [_window(layout, *window)]


def slice_window(node: gs.Node, width: int, channel_axis: int, rank: int) -> tuple[int, int] | None:
    """[start, end) that a Slice (opset >= 10) keeps of the channel axis of ``width`` positions
    (None: it does not slice that axis)."""
    present = [len(node.inputs) > i and bool(node.inputs[i].name) for i in range(1, 5)]
    starts, ends, axes, steps = (const_value(node.inputs[i + 1]) if p else None for i, p in enumerate(present))
    if any(p and v is None for p, v in zip(present, (starts, ends, axes, steps))):
        raise NotChannelWise(f"Slice {node.name} has computed bounds")
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if int(axis) % rank != channel_axis:
            continue
        if step != 1:
            raise NotChannelWise(f"Slice {node.name} with step {step} on the channel axis")
        first, last = (int(np.clip(v + width if v < 0 else v, 0, width)) for v in (start, end))
        return first, last
    return None


def _static_dim(node: gs.Node, tensor: gs.Tensor, layout: Layout) -> int:
    shape = tensor.shape
    dim = shape[layout.rank + layout.axis] if shape is not None and len(shape) == layout.rank else None
    if not isinstance(dim, int):
        raise NotChannelWise(f"channel count of {tensor.name} at {node.op} {node.name} is unknown")
    return dim


ROUTING = {"Split": _split, "Slice": _slice}
"""Ops that cut the channel axis: (node, group tensor, layout) -> layout per output (None: the
output holds none of the group's channels). Concat is handled by :func:`concat_layout`."""
