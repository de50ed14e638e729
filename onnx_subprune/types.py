"""Frozen dataclasses passed between the stages; tensors and nodes are referred to by name."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ConvGeometry:
    """How a Conv consumer unfolds its input: spatial kernel, strides, dilations, pads.

    ``pads`` is ONNX-ordered: (begin_0, begin_1, ..., end_0, end_1, ...).
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """Where a group's channels sit in a tensor.

    ``axis`` (negative, from the end) of a tensor of ``rank`` (None: unknown) has ``total``
    positions; each window (lo, hi, offset) puts the group's channels [lo, hi) (of ``channels``)
    at positions [offset, offset + hi - lo). One full window unless a Split, Slice or Concat cut
    or combined channels; positions outside every window hold other channels.

    Each position owns ``block`` consecutive entries of the axis (which has ``total * block``):
    1 for plain channels; after a Flatten, the H*W features of a channel; on an N x C x ...
    tensor, the channels that are pruned together as one *unit* because of a grouped Conv (a
    whole conv group, several of them, or a depthwise Conv's ``multiplier`` outputs per input
    channel; see :mod:`ops.channelwise`), or a transformer's attention head (its head_dim
    consecutive features, see :func:`ops.channelwise.heads`). A group's ``channels`` then count
    units. ``flat``: the block holds the H*W features of flattened channels (after a Flatten),
    so the tensor is not another layer's channels, whatever its block.
    """

    channels: int
    axis: int
    rank: int | None
    block: int = 1
    windows: tuple[tuple[int, int, int], ...] | None = None
    total: int | None = None
    flat: bool = False

    def __post_init__(self) -> None:
        if self.windows is None:
            object.__setattr__(self, "windows", ((0, self.channels, 0),))
        if self.total is None:
            object.__setattr__(self, "total", max(offset + hi - lo for lo, hi, offset in self.windows))

    @property
    def width(self) -> int:
        """Positions on the channel axis (``total``)."""
        return self.total

    @property
    def seen(self) -> int:
        """How many of the group's channels the tensor holds."""
        return sum(hi - lo for lo, hi, _ in self.windows)

    def positions(self) -> np.ndarray:
        """(channels,) position of each group channel in the tensor, -1 where absent."""
        where = np.full(self.channels, -1, dtype=np.int64)
        for lo, hi, offset in self.windows:
            where[lo:hi] = np.arange(offset, offset + hi - lo)
        return where

    @property
    def is_full(self) -> bool:
        """The tensor holds exactly the group's channels, in order."""
        return self.windows == ((0, self.channels, 0),) and self.total == self.channels

    @property
    def is_nchw(self) -> bool:
        """Channels on axis 1 of a rank >= 3 tensor (Conv/pooling/BN layout)."""
        return self.rank is not None and self.rank >= 3 and self.axis == 1 - self.rank


@dataclass(frozen=True)
class Producer:
    """A layer whose output channels are pruned: its weight is sliced along ``out_axis``.

    ``output``: its output tensor; ``layout``: the group's channels in it (None: exactly all of
    them, one output channel each; a window when the layer makes only some of the group's
    channels, or when the group is one window of the layer's channels; a ``block`` > 1 when
    each of the group's units is that many consecutive output channels).
    """

    node: str
    op: str
    weight: str
    out_axis: int
    bias: str | None = None
    output: str = ""
    layout: Layout | None = None


@dataclass(frozen=True)
class SlicedParam:
    """A per-channel parameter of a pass-through node (input ``index``), sliced along ``axis``.

    ``block`` is the number of consecutive entries a channel owns along that axis (1 except
    after a Flatten or where the group's units span several channels: :attr:`Layout.block`).
    """

    index: int
    axis: int
    block: int = 1


@dataclass(frozen=True)
class PassThrough:
    """A channel-wise node between producer and consumers and the parameters to slice.

    ``channel_axis``: the (non-negative) channel axis of its input for Split and Slice, of its
    output for a channel-wise op (None where the rank is unknown): a Reshape's rewrite hook
    finds there the entry of its shape that counts the channels.
    """

    node: str
    op: str
    params: tuple[SlicedParam, ...] = ()
    channel_axis: int | None = None


@dataclass(frozen=True)
class Consumer:
    """A layer reading the group's channels: its input (``in_axis`` of ``weight``) is re-fitted.

    ``input`` is the data tensor to capture; ``block`` columns of the unfolded input belong
    to each channel (kernel window size for a Conv, H*W after a Flatten, else 1; times the
    unit's channels where a unit spans several, :attr:`Layout.block`). ``bias`` is
    the tensor holding the bias (Conv B, Gemm C, or the constant of a following Add named by
    ``bias_node``), None if the layer has none. ``layout`` says which of its input channels
    belong to the group (all of them unless the input comes from a Concat or Split).
    """

    node: str
    op: str
    input: str
    weight: str
    in_axis: int
    block: int
    bias: str | None = None
    bias_node: str | None = None
    conv: ConvGeometry | None = None
    scale: float = 1.0
    layout: Layout | None = None


@dataclass(frozen=True)
class ChannelGroup:
    """Tensors whose channel axis is pruned identically: producers -> pass-throughs -> consumers.

    ``tensors``: every tensor carrying the group's channels, with their layout. ``channels``
    counts the units that are kept or removed: one per channel, except in a group that passes a
    grouped Conv, where a unit is the ``block`` consecutive channels of its layouts.

    A group without producers is an *input selection*: its one tensor is computed by something
    that cannot be pruned (a LayerNorm, an LSTM, a residual sum); the rewrite puts a Gather of
    the kept channels between it and the consumers, whose input rows shrink, and leaves the
    tensor whole for its other readers (see :func:`analyze.input_selections`).
    """

    name: str
    channels: int
    producers: tuple[Producer, ...]
    consumers: tuple[Consumer, ...]
    passthrough: tuple[PassThrough, ...] = ()
    tensors: tuple[tuple[str, Layout], ...] = ()

    @property
    def selects_input(self) -> bool:
        """An input selection: no producer is pruned, a Gather picks the consumers' inputs."""
        return not self.producers

    @property
    def lead(self) -> str:
        """The node a report names the group by: its first producer (first consumer for an
        input selection)."""
        return self.producers[0].node if self.producers else self.consumers[0].node

    @property
    def changes(self) -> tuple[str, ...]:
        """The nodes whose outputs pruning the group changes first (everything downstream of
        them changes too): its producers, or an input selection's consumers."""
        return tuple(p.node for p in self.producers) if self.producers else tuple(c.node for c in self.consumers)


@dataclass(frozen=True)
class Skipped:
    """A candidate producer that is not pruned, with the reason."""

    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class Analysis:
    """Result of analyze: prunable groups in topological order and skipped producers."""

    groups: tuple[ChannelGroup, ...]
    skipped: tuple[Skipped, ...]

    def channel_groups(self) -> Analysis:
        """The analysis without its input selections (what analyze finds without them)."""
        return Analysis(tuple(g for g in self.groups if not g.selects_input), self.skipped)


@dataclass(frozen=True)
class ConsumerUpdate:
    """New weights for one consumer: ``weight`` (len(kept)*block, m) in matrix form (None: keep
    the original rows of the kept channels), ``bias_shift`` (m,) added to the bias (None: none)."""

    node: str
    weight: np.ndarray | None = None
    bias_shift: np.ndarray | None = None


@dataclass(frozen=True)
class GroupPlan:
    """What rewrite does to one group: keep ``kept`` (sorted channel indices) and update consumers."""

    group: ChannelGroup
    kept: tuple[int, ...]
    updates: tuple[ConsumerUpdate, ...] = field(default_factory=tuple)
