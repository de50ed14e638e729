"""What every op rule shares: the exception a rule raises when a node is not channel-wise,
and the shape of a rule (:class:`OpRule`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..types import Layout, PassThrough, SlicedParam


class NotChannelWise(Exception):
    """Raised by a rule: the node mixes channels or cannot be sliced (message = reason)."""


class CoarserUnits(NotChannelWise):
    """Raised by a grouped Conv's rule: the group's units (the channels pruned together, see
    :attr:`types.Layout.block`) cut one of its conv groups, and units ``factor`` times larger
    would hold whole conv groups. Analysis then starts the group again with those units; if it
    cannot, the message is the skip reason."""

    def __init__(self, factor: int, reason: str):
        super().__init__(reason)
        self.factor = factor


Through = Callable[[gs.Node, Layout, "set[str] | None"], tuple[Layout, tuple[SlicedParam, ...]]]
"""(node, layout of the group's input, names of the group's tensors) -> (output layout, params).

While the group is still being discovered the names are None: a non-constant input is then
accepted, and checked once the whole group is known.
"""

Route = Callable[[gs.Node, gs.Tensor, Layout], "list[Layout | None]"]
"""(node, group tensor it reads, layout) -> the group's layout in each output (None: none of
the group's channels there)."""

Upstream = Callable[[gs.Node, Layout], Layout]
"""(node, layout of its output) -> layout of its group input, walking the graph upstream."""

Inspect = Callable[[gs.Node, Layout], None]
"""(node, layout of the group tensor it reads) -> None, or :class:`NotChannelWise` when the node
depends on the channels (for an op that reads only the tensor's shape)."""

Resize = Callable[[gs.Graph, gs.Node, PassThrough, np.ndarray], None]
"""Rewrite hook: (graph, node, its description, surviving positions of its input's channel
axis) -> fix the channel counts the node holds in attributes or shape inputs."""


def same_layout(node: gs.Node, output: Layout) -> Layout:
    """The default :data:`Upstream`: the input lays the channels out as the output does."""
    return output


@dataclass(frozen=True)
class OpRule:
    """What an op type does to the channels of a group that reaches it: either ``through``
    (channel-wise: one output, per-channel parameters) or ``route`` (cuts the channel axis into
    outputs). ``upstream`` walks it from output to input; ``resize`` is the rewrite's extra step
    after its per-channel parameters are sliced (None: nothing else to change). ``data``: how
    many leading inputs may carry the channels (None: all); the others hold shapes or options.
    ``inspect`` is the third role, an op that reads only its input's shape (Shape): it checks
    that nothing depends on the channel count, and the node is left as it is."""

    through: Through | None = None
    route: Route | None = None
    upstream: Upstream = same_layout
    resize: Resize | None = None
    data: int | None = None
    inspect: Inspect | None = None


def only_first_output(node: gs.Node) -> None:
    """Raise unless every output but the first is unused."""
    for extra in node.outputs[1:]:
        if extra.outputs:
            raise NotChannelWise(f"second output {extra.name} of {node.op} is used")


_FUSED = "fused attention from onnxruntime's transformer optimizer, whose heads are not pruned: prune the " \
         "exported model before fusing it"
WHY_MIXED: dict[str, str] = {
    "Attention": _FUSED, "MultiHeadAttention": _FUSED, "GroupQueryAttention": _FUSED,
    "PackedAttention": _FUSED, "PackedMultiHeadAttention": _FUSED,
    "SkipLayerNormalization": "fused residual Add + LayerNormalization",
    "LayerNormalization": "normalizes across the channels",
}
"""Op types known to mix channels, with what to tell the user."""


def mixes(node: gs.Node) -> str:
    """``node`` named as an op that mixes channels, with the reason where one is known."""
    why = WHY_MIXED.get(node.op)
    return f"{node.op} {node.name}, which mixes channels" + (f" ({why})" if why else "")

