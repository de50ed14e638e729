"""What the pruner knows about each op type, in one place.

Every op a channel group may cross has one rule, and analysis, rewrite, the size model and cost
counting all read the same rules:

- layers (:mod:`.layers`, :data:`LAYERS`): Conv, Gemm, MatMul with a constant weight. How each
  is described as a producer (output channels pruned) or a consumer (input channels re-fitted),
  its weight as the (d, m) matrix of the least squares, its outputs and MACs, where a new bias
  goes.
- channel-wise ops (:mod:`.channelwise`, :data:`THROUGH`, plus :data:`GROUPED_CONV` for a Conv
  with group > 1, depthwise or not): one output carrying the channels, per-channel parameters
  to slice. A grouped Conv is channel-wise on units of whole conv groups (a depthwise Conv's
  unit is one input channel and its multiplier outputs); a group that reaches one with smaller
  units is analyzed again with coarser ones (:class:`CoarserUnits`).
- routing ops (:mod:`.routing`, :data:`ROUTING`, and Concat's :func:`concat_layout`): Split and
  Slice cut the channel axis, Concat joins it; the rewrite renumbers their cut points.

Adding a channel-wise op is one entry in :data:`THROUGH` (with its rule function and tests in
tests/test_ops.py); a routing op is one entry in :data:`ROUTING`.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .base import CoarserUnits, NotChannelWise, OpRule, mixes
from .channelwise import DEPTHWISE, GROUPED_CONV, THROUGH, per_channel_param
from .channelwise import broadcasts
from .layers import LAYERS, LayerRule, bias_add_name, is_batched_matmul, is_depthwise, is_grouped, layer_rule, new_bias_name
from .routing import ROUTING, concat_layout

__all__ = [
    "DEPTHWISE", "GROUPED_CONV", "LAYERS", "ROUTING", "THROUGH", "CoarserUnits", "LayerRule",
    "NotChannelWise", "OpRule", "bias_add_name", "broadcasts", "concat_layout", "is_batched_matmul",
    "is_depthwise", "is_grouped", "mixes",
    "layer_rule", "new_bias_name", "per_channel_param", "rule_for",
]


def rule_for(node: gs.Node) -> OpRule | None:
    """The channel-wise or routing rule of ``node`` (None: a layer, Concat, or an op that mixes
    channels)."""
    if node.op == "Conv":
        return GROUPED_CONV if is_grouped(node) else None
    if node.op in LAYERS and not is_batched_matmul(node):
        return None
    return THROUGH.get(node.op) or ROUTING.get(node.op)
