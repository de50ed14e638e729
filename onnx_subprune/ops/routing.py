"""Routing ops: Split and Slice cut the channel axis into windows, Concat joins windows of
several inputs. A group whose channels a Split or Slice cuts is pruned piece by piece (see
:func:`analyze._atoms`); the rewrite renumbers the cut points to the surviving channels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import const_value, set_const_value
from ..types import Layout, PassThrough
from .base import NotChannelWise, OpRule


def _channel_axis(node: gs.Node, layout: Layout, axis: int) -> bool:
    """Whether ``axis`` (an attribute, possibly negative) is the layout's channel axis."""
    if layout.rank is None:
        raise NotChannelWise(f"{node.op} {node.name} on a tensor of unknown rank")
    return axis % layout.rank == layout.rank + layout.axis


def _blocks(layout: Layout) -> str:
    """What a layout with ``block`` > 1 holds, for a reason that routing refuses it."""
    after = "a Flatten" if not layout.is_nchw else "a grouped Conv"
    return f"channels owned in blocks of {layout.block} (after {after})"


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
    if first.block != 1:
        raise NotChannelWise(f"Concat {node.name} joins {_blocks(first)}")
    if not _channel_axis(node, first, node.attrs["axis"]):
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
        raise NotChannelWise(f"Split {node.name} cuts {_blocks(layout)}")
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
        raise NotChannelWise(f"Slice {node.name} cuts {_blocks(layout)}")
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


def _split_sizes(graph: gs.Graph, node: gs.Node, passthrough: PassThrough, mask: np.ndarray) -> None:
    """New Split sizes: the surviving positions of each output's range (a channel-axis Split)."""
    rank = len(node.inputs[0].shape)
    if node.attrs.get("axis", 0) % rank != passthrough.channel_axis:
        return
    bounds = np.cumsum([0, *split_sizes(node, len(mask))])
    sizes = np.array([mask[s:e].sum() for s, e in zip(bounds[:-1], bounds[1:])], dtype=np.int64)
    if "split" in node.attrs:
        node.attrs["split"] = [int(s) for s in sizes]
        return
    node.attrs.pop("num_outputs", None)
    if len(node.inputs) > 1 and node.inputs[1].name:
        set_const_value(graph, node, 1, sizes)
    else:
        node.inputs.append(gs.Constant(f"{node.name}_sizes", sizes))


def _slice_bounds(graph: gs.Graph, node: gs.Node, passthrough: PassThrough, mask: np.ndarray) -> None:
    """New Slice bounds on the channel axis: the surviving positions before each bound."""
    rank = len(node.inputs[0].shape)
    window = slice_window(node, len(mask), passthrough.channel_axis, rank)
    if window is None:
        return
    starts, ends = const_value(node.inputs[1]).copy(), const_value(node.inputs[2]).copy()
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else np.arange(len(starts))
    index = next(i for i, axis in enumerate(axes) if int(axis) % rank == passthrough.channel_axis)
    starts[index], ends[index] = (int(mask[:bound].sum()) for bound in window)
    set_const_value(graph, node, 1, starts)
    set_const_value(graph, node, 2, ends)


ROUTING: dict[str, OpRule] = {
    "Split": OpRule(route=_split, resize=_split_sizes),
    "Slice": OpRule(route=_slice, resize=_slice_bounds),
}
"""Ops that cut the channel axis into outputs. Concat, which joins channels of several inputs,
is laid out by :func:`concat_layout` once all of its group inputs are known."""
