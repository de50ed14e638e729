"""What the pruner knows about each op type, in one place.

Every op a channel group may cross has one rule, and analysis, rewrite, the size model and cost
counting all read the same rules:

- layers (:mod:`.layers`, :data:`LAYERS`): Conv, Gemm, MatMul with a constant weight. How each
  is described as a producer (output channels pruned) or a consumer (input channels re-fitted),
  its weight as the (d, m) matrix of the least squares, its outputs and MACs, where a new bias
  goes.
- channel-wise ops (:mod:`.channelwise`, :data:`THROUGH`, plus :data:`DEPTHWISE`): one output
  carrying the channels, per-channel parameters to slice.
- routing ops (:mod:`.routing`, :data:`ROUTING`, and Concat's :func:`concat_layout`): Split and
  Slice cut the channel axis, Concat joins it; the rewrite renumbers their cut points.

Adding a channel-wise op is one entry in :data:`THROUGH` (with its rule function and tests in
tests/test_ops.py); a routing op is one entry in :data:`ROUTING`.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .base import NotChannelWise, OpRule
from .channelwise import DEPTHWISE, THROUGH, per_channel_param
from .layers import LAYERS, LayerRule, bias_add_name, is_depthwise, layer_rule, new_bias_name
from .routing import ROUTING, concat_layout

__all__ = [
    "DEPTHWISE", "LAYERS", "ROUTING", "THROUGH", "LayerRule", "NotChannelWise", "OpRule",
    "bias_add_name", "concat_layout", "is_depthwise", "layer_rule", "new_bias_name",
    "per_channel_param", "rule_for",
]


def rule_for(node: gs.Node) -> OpRule | None:
    """The channel-wise or routing rule of ``node`` (None: a layer, Concat, or an op that mixes
    channels)."""
    if node.op == "Conv":
        return DEPTHWISE if is_depthwise(node) else None
    return THROUGH.get(node.op) or ROUTING.get(node.op)
