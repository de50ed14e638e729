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

from ..graph import const_value, set_const_value
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


def broadcasts(tensor: gs.Tensor, layout: Layout) -> bool:
    """``tensor`` (from outside a group) has one entry, or none, on the channel axis of a group
    tensor laid out as ``layout``, so that an elementwise op spreads it over every channel alike
    (an attention mask [N, 1, 1, S] added to the scores of every head, a spatial gate
    [N, 1, H, W]); its shape must be known to say so."""
    shape = tensor.shape
    if shape is None or layout.rank is None or len(shape) > layout.rank:
        return False
    position = len(shape) + layout.axis
    return position < 0 or shape[position] == 1


def _elementwise(node: gs.Node, layout: Layout, group: set[str] | None):
    """Add/Sub/Mul/Div/Pow/PRelu/Where: other inputs are group tensors, broadcastable constants
    or tensors that broadcast over the channel axis (:func:`broadcasts`)."""
    _only_first_output(node)
    params = []
    for index, tensor in enumerate(node.inputs):
        if group is not None and tensor.name in group:
            continue
        if const_value(tensor) is None and broadcasts(tensor, layout):
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
    """A Reshape that flattens channels (:func:`_flatten_reshape`), splits them into attention
    heads (:func:`heads`) or merges heads back (:func:`_merge_heads`)."""
    rank = _rank(node.outputs[0], node.inputs[1])
    if group is not None:
        _own_shape(node, group)
    if layout.rank is not None and not layout.is_nchw and rank == layout.rank + 1 and layout.axis == -1:
        return heads(node, layout), ()
    if layout.rank is not None and not layout.is_nchw and rank == layout.rank - 1 and layout.axis == -2:
        return _merge_heads(node, layout), ()
    return _flatten_reshape(node, layout), ()


def _flatten_reshape(node: gs.Node, layout: Layout) -> Layout:
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
    return flat


def heads(node: gs.Node, layout: Layout) -> Layout:
    """Reshape ... x (n*d) -> ... x n x d: the channels split into n attention heads of d. A
    head is a unit of the group (``Layout.block`` d where the channels come from a layer):
    when the group's units are smaller, :class:`CoarserUnits` asks for units of whole heads;
    a unit of several heads spans that many positions of the head axis."""
    if not layout.is_full:
        raise NotChannelWise(f"Reshape {node.name} splits a tensor that also holds other channels")
    width = layout.channels * layout.block
    count, size = _head_shape(node, width)
    if layout.block % size:
        factor = math.lcm(layout.block, size) // layout.block
        if layout.channels % factor or layout.channels // factor < 2:
            raise NotChannelWise(f"Reshape {node.name} splits the {width} channels into {count} heads of {size}, "
                                 "fewer than 2 units of whole heads")
        raise CoarserUnits(factor, f"Reshape {node.name} splits the channels into heads of {size}")
    return Layout(channels=layout.channels, axis=-2, rank=layout.rank + 1, block=layout.block // size)


def _head_shape(node: gs.Node, width: int) -> tuple[int, int]:
    """(n, d) of a Reshape splitting ``width`` channels into n heads of d: from the last two
    entries of its target shape (constant, or constant pieces of a computed one), where an
    entry is -1 from the other one, or from the output's inferred shape."""
    tail = _shape_tail(node.inputs[1])
    entries = [tail[i] if len(tail) >= -i else None for i in (-2, -1)]
    if 0 in entries:
        raise NotChannelWise(f"Reshape {node.name} copies an input dim into the heads")
    count, size = _output_dim(node, tail, -2), _output_dim(node, tail, -1)
    if count is None and size:
        count = width // size
    if size is None and count:
        size = width // count
    if not count or not size or count * size != width or entries[0] is None:
        raise NotChannelWise(f"Reshape {node.name} does not split the {width} channels into heads of a known size")
    return count, size


def _merge_heads(node: gs.Node, layout: Layout) -> Layout:
    """Reshape ... x n x d -> ... x (n*d): heads merged back into channels; a unit then owns
    its heads' d features each (``Layout.block``)."""
    if not layout.is_full:
        raise NotChannelWise(f"Reshape {node.name} merges a tensor that also holds other channels")
    dims = node.inputs[0].shape
    size = dims[-1] if dims and isinstance(dims[-1], int) else None
    tail, out = _shape_tail(node.inputs[1]), node.outputs[0].shape or [None]
    width = layout.width * layout.block * size if size else None
    inferred = tail[-1:] == [-1] and (out[-1] == width or len(tail) == layout.rank - 1 and set(tail[:-1]) == {0})
    if width is None or not (tail[-1:] == [width] or inferred):  # -1 must not take tokens in too
        raise NotChannelWise(f"Reshape {node.name} does not merge the heads into one axis")
    return Layout(channels=layout.channels, axis=-1, rank=layout.rank - 1, block=layout.block * size)


def _reshape_upstream(node: gs.Node, output: Layout) -> Layout:
    """The layout of a head split's input from its output's (a flattening or merging Reshape is
    walked downstream only)."""
    if output.rank is None or output.axis != -2 or not output.is_full or _rank(node.inputs[0], None) != output.rank - 1:
        raise NotChannelWise(f"channels reach {node.op} {node.name} from below")
    size = _output_dim(node, _shape_tail(node.inputs[1]), -1)
    if size is None:
        raise NotChannelWise(f"Reshape {node.name} splits the channels into heads of unknown size")
    _head_shape(node, output.channels * output.block * size)
    return Layout(channels=output.channels, axis=-1, rank=output.rank - 1, block=output.block * size)


def _output_dim(node: gs.Node, tail: list[int | None], index: int) -> int | None:
    """Dim ``index`` (negative) of a Reshape's output: its target shape's entry there (``tail``:
    :func:`_shape_tail`) where that is a size, else the output's inferred dim (None: unknown)."""
    entry = tail[index] if len(tail) >= -index else None
    if entry is not None and entry > 0:
        return entry
    out = node.outputs[0].shape or []
    return out[index] if len(out) >= -index and isinstance(out[index], int) else None


def _rank(tensor: gs.Tensor, shape: gs.Tensor | None) -> int | None:
    """Rank of ``tensor`` from its inferred shape, or from the length of the ``shape`` input
    that a Reshape gives it (None: unknown)."""
    if tensor.shape is not None:
        return len(tensor.shape)
    dims = shape.shape if shape is not None else None
    return dims[0] if dims and len(dims) == 1 and isinstance(dims[0], int) else None


def _shape_tail(shape: gs.Tensor) -> list[int | None]:
    """The last entries of a Reshape's target ``shape`` as far as they are known: all of a
    constant; of a shape computed by Concat (as exporters write ``x.view(n, s, heads, d)``),
    those of its trailing pieces back to the first piece of unknown length (None: an entry
    computed at run time)."""
    value = const_value(shape)
    if value is not None:
        return [int(v) for v in value.ravel()]
    tail: list[int | None] = []
    for piece, _ in reversed(_concat_pieces(shape)):
        value = const_value(piece)
        if value is not None:
            tail[:0] = [int(v) for v in value.ravel()]
        elif piece.shape is not None and len(piece.shape) == 1 and isinstance(piece.shape[0], int):
            tail[:0] = [None] * piece.shape[0]
        else:
            break
    return tail


def _concat_pieces(shape: gs.Tensor) -> list[tuple[gs.Tensor, int]]:
    """The inputs (and their indices) of the Concat that computes ``shape`` (none otherwise)."""
    source = shape.inputs[0] if len(shape.inputs) == 1 else None
    if source is None or source.op != "Concat" or source.attrs.get("axis", 0) not in (0, -1):
        return []
    return [(piece, index) for index, piece in enumerate(source.inputs)]


def _own_shape(node: gs.Node, group: set[str]) -> None:
    """The computed shape of a Reshape the rewrite renumbers must serve this group's Reshapes
    only (a shape shared with another layer's Reshape would be changed for it too)."""
    shape = node.inputs[1]
    if const_value(shape) is not None or not _concat_pieces(shape):
        return
    for reader in shape.outputs:
        if reader.op != "Reshape" or reader.inputs[0].name not in group:
            raise NotChannelWise(f"the shape of Reshape {node.name} is also used by {reader.op} {reader.name}")


def _reshape_counts(graph: gs.Graph, node: gs.Node, passthrough: PassThrough, mask: np.ndarray) -> None:
    """Renumber the entry of a Reshape's target shape that counts the channels (the features
    of a flatten, the heads of a split, the width of a merge: the entry at its output's channel
    axis) to the surviving share; an entry of -1 or 0 (inferred, copied) stays."""
    shape, position = node.inputs[1], passthrough.channel_axis
    value = const_value(shape)
    if value is not None:
        value = _renumbered(value, position, mask)
        if value is not None:
            set_const_value(graph, node, 1, value)
        return
    pieces = _concat_pieces(shape)
    concat = shape.inputs[0]
    from_end = _rank(node.outputs[0], shape) - position
    for piece, index in reversed(pieces):
        length = _length(piece)
        if from_end <= length:
            value = _renumbered(const_value(piece), length - from_end, mask)
            if value is not None:
                set_const_value(graph, concat, index, value)
            return
        from_end -= length


def _length(piece: gs.Tensor) -> int:
    """Entries of a 1-D piece of a computed shape."""
    value = const_value(piece)
    return int(value.size) if value is not None else int(piece.shape[0])


def _renumbered(value: np.ndarray, position: int, mask: np.ndarray) -> np.ndarray | None:
    """``value`` with entry ``position`` scaled to the surviving positions of ``mask`` (None:
    the entry is -1 or 0 and stays)."""
    if value[position] <= 0:
        return None
    value = value.copy()
    value[position] = value[position] // len(mask) * int(mask.sum())
    return value


def _flat_layout(node: gs.Node, layout: Layout) -> Layout:
    dims = node.inputs[0].shape
    spatial = dims[2:] if dims is not None else None
    if not spatial or not all(isinstance(d, int) for d in spatial):
        raise NotChannelWise(f"spatial size before {node.op} {node.name} is unknown")
    block = layout.block * int(np.prod(spatial))  # a unit of several channels owns all their features
    return replace(layout, axis=-1, rank=2, block=block, flat=True)


def _batched_matmul(node: gs.Node, layout: Layout, group: set[str] | None):
    """MatMul of two activations whose channel axis is a batch axis of the product (not one of
    the two matrix axes): attention's scores ``Q K^T`` and context ``P V`` per head. Each
    channel's matrices multiply only each other, so the product keeps the channels in place."""
    _only_first_output(node)
    if layout.rank is None or layout.rank < 3 or layout.axis > -3:
        raise NotChannelWise(f"MatMul {node.name} multiplies along the channel axis")
    for tensor in node.inputs:
        if group is not None and tensor.name not in group and not broadcasts(tensor, layout):
            raise NotChannelWise(f"MatMul {node.name} multiplies the channels with {tensor.name} from outside the group")
        if tensor.shape is None or len(tensor.shape) != layout.rank:
            raise NotChannelWise(f"MatMul {node.name} multiplies tensors of different or unknown ranks")
    return layout, ()


def _softmax(node: gs.Node, layout: Layout, group: set[str] | None):
    """Softmax/LogSoftmax normalizing axes after the channel axis (each channel apart)."""
    _only_first_output(node)
    if layout.rank is None or "axis" not in node.attrs:
        raise NotChannelWise(f"{node.op} {node.name} over an axis of unknown position")
    axis = node.attrs["axis"] % layout.rank
    if layout.rank + layout.axis >= axis:  # before opset 13 the axes from `axis` on are one
        raise NotChannelWise(f"{node.op} {node.name} normalizes across the channels")
    return layout, ()


def _transpose(node: gs.Node, layout: Layout, group: set[str] | None):
    """Transpose moves the channel axis to wherever the permutation puts it."""
    _only_first_output(node)
    if layout.rank is None or layout.block != 1:
        raise NotChannelWise(f"Transpose {node.name} of a tensor of unknown rank")
    perm = list(node.attrs.get("perm", range(layout.rank)[::-1]))
    moved = perm.index(layout.rank + layout.axis)
    return replace(layout, axis=moved - layout.rank), ()


def _squeezed_axes(node: gs.Node, count_rank: int, inserts: bool) -> list[int]:
    """The axes (0-based, sorted) that a Squeeze removes or an Unsqueeze inserts: its ``axes``
    attribute (before opset 13) or constant input, taken modulo the rank they index (``inserts``:
    the output's, ``count_rank`` plus their number; else ``count_rank``). A Squeeze without axes
    removes every dim of static size 1."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = const_value(node.inputs[1])
        if axes is None:
            raise NotChannelWise(f"{node.op} {node.name} has computed axes")
    if axes is None:
        shape = node.inputs[0].shape if node.op == "Squeeze" else None
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise NotChannelWise(f"{node.op} {node.name} without axes on a tensor of unknown shape")
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = [int(a) for a in np.ravel(axes)]
    rank = count_rank + len(axes) if inserts else count_rank
    return sorted(a % rank for a in axes)


def _squeeze_move(node: gs.Node, layout: Layout, removes: bool) -> Layout:
    """The layout after the node's axes are removed (``removes``: Squeeze going down, Unsqueeze
    going up) or inserted (Unsqueeze going down, Squeeze going up) around the channel axis."""
    if layout.rank is None:
        raise NotChannelWise(f"{node.op} {node.name} of a tensor of unknown rank")
    position = layout.rank + layout.axis
    axes = _squeezed_axes(node, layout.rank, inserts=not removes)
    if removes:
        if position in axes:
            raise NotChannelWise(f"{node.op} {node.name} removes the channel axis")
        rank = layout.rank - len(axes)
        position -= sum(a < position for a in axes)
    else:
        rank = layout.rank + len(axes)
        position = [i for i in range(rank) if i not in axes][position]
    return replace(layout, axis=position - rank, rank=rank)


def _squeeze(node: gs.Node, layout: Layout, group: set[str] | None):
    """Squeeze/Unsqueeze of axes other than the channel axis: the channels stay, on an axis
    renumbered for the new rank."""
    _only_first_output(node)
    return _squeeze_move(node, layout, removes=node.op == "Squeeze"), ()


def _squeeze_upstream(node: gs.Node, output: Layout) -> Layout:
    return _squeeze_move(node, output, removes=node.op == "Unsqueeze")


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


def _shape_of(node: gs.Node, layout: Layout) -> None:
    """Shape of a group tensor, as exporters compute a reshape's leading dims from it
    (``Shape -> Gather 0 -> Concat``): fine as long as no reader takes the channel count."""
    if layout.rank is None:
        raise NotChannelWise(f"Shape {node.name} of a tensor of unknown rank")
    start, end = (node.attrs.get(key, default) for key, default in (("start", 0), ("end", layout.rank)))
    dims = list(range(layout.rank))[start:end]
    if layout.rank + layout.axis not in dims:
        return
    position = dims.index(layout.rank + layout.axis)
    for reader in node.outputs[0].outputs:
        picked = _picked(reader, len(dims))
        if picked is None or position in picked:
            raise NotChannelWise(f"the channel count read by Shape {node.name} is used by {reader.op} {reader.name}")


def _picked(reader: gs.Node, length: int) -> set[int] | None:
    """Entries of a ``length``-long shape vector that a Gather or Slice with constant indices
    takes (None: another reader, or indices computed at run time)."""
    if reader.op == "Gather" and reader.attrs.get("axis", 0) == 0:
        indices = const_value(reader.inputs[1])
        return None if indices is None else {int(i) % length for i in np.ravel(indices)}
    if reader.op == "Slice" and len(reader.inputs) >= 3:
        bounds = [const_value(t) for t in reader.inputs[1:]]
        if any(b is None for b in bounds) or any(np.ravel(a).tolist() != [0] for a in bounds[2:3]):
            return None
        step = int(np.ravel(bounds[3])[0]) if len(bounds) > 3 else 1
        return set(range(length)[slice(int(np.ravel(bounds[0])[0]), int(np.ravel(bounds[1])[0]), step)])
    return None


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
    "Reshape": OpRule(through=_reshape, upstream=_reshape_upstream, resize=_reshape_counts, data=1),
    "Where": OpRule(through=_elementwise),
    "Softmax": OpRule(through=_softmax),
    "LogSoftmax": OpRule(through=_softmax),
    "MatMul": OpRule(through=_batched_matmul),
    "Shape": OpRule(inspect=_shape_of),
    "Transpose": OpRule(through=_transpose, upstream=_transpose_upstream),
    "Squeeze": OpRule(through=_squeeze, upstream=_squeeze_upstream, data=1),
    "Unsqueeze": OpRule(through=_squeeze, upstream=_squeeze_upstream, data=1),
}
"""Channel-wise op type -> its rule."""
