"""The op registry: each rule on a node built by hand, with the cases where it must refuse."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from onnx_subprune import ops
from onnx_subprune.ops import LAYERS, ROUTING, THROUGH, NotChannelWise, concat_layout, rule_for
from onnx_subprune.types import Consumer, Layout

NCHW = Layout(channels=4, axis=-3, rank=4)
LAST = Layout(channels=4, axis=-1, rank=2)


def _var(name: str, shape=None) -> gs.Variable:
    return gs.Variable(name, dtype=np.float32, shape=shape)


def _const(name: str, value) -> gs.Constant:
    return gs.Constant(name, np.asarray(value, dtype=np.float32 if np.asarray(value).dtype.kind == "f" else np.int64))


def _node(op: str, inputs, outputs=None, **attrs) -> gs.Node:
    outputs = outputs if outputs is not None else [_var(f"{op}_out")]
    return gs.Node(op, f"{op}_0", attrs=attrs, inputs=inputs, outputs=outputs)


def _through(node: gs.Node, layout: Layout, group=None):
    rule = rule_for(node)
    assert rule is not None and rule.through is not None
    return rule.through(node, layout, group)


# ------------------------------------------------------------------------------ channel-wise


def test_every_entry_has_exactly_one_role():
    for op, rule in {**THROUGH, **ROUTING}.items():
        assert [rule.through, rule.route, rule.inspect].count(None) == 2, op


def test_unary_passes_the_layout_and_refuses_a_used_second_output():
    node = _node("Relu", [_var("x")])
    assert _through(node, NCHW) == (NCHW, ())
    second = _var("mask")
    dropout = _node("Dropout", [_var("x")], [_var("y"), second])
    _node("Identity", [second])  # a reader of the mask
    with pytest.raises(NotChannelWise, match="second output"):
        _through(dropout, NCHW)


def test_elementwise_slices_a_per_channel_constant_and_refuses_mismatches():
    scale = _const("s", np.ones((4, 1, 1)))
    layout, params = _through(_node("Mul", [_var("x"), scale]), NCHW)
    assert layout == NCHW and [(p.index, p.axis) for p in params] == [(1, 0)]
    assert _through(_node("Add", [_var("x"), _const("b", [1.0])]), NCHW)[1] == ()  # broadcast scalar
    with pytest.raises(NotChannelWise, match="does not match 4 channels"):
        _through(_node("Mul", [_var("x"), _const("s", np.ones((3, 1, 1)))]), NCHW)
    with pytest.raises(NotChannelWise, match="higher rank"):
        _through(_node("Mul", [_var("x"), _const("s", np.ones((1, 1, 4, 1, 1)))]), NCHW)
    with pytest.raises(NotChannelWise, match="from outside the group"):
        _through(_node("Add", [_var("x"), _var("other")]), NCHW, {"x"})


def test_clip_needs_constant_scalar_bounds():
    assert _through(_node("Clip", [_var("x"), _const("lo", 0.0), _const("hi", 6.0)]), NCHW)[1] == ()
    with pytest.raises(NotChannelWise, match="not a constant scalar"):
        _through(_node("Clip", [_var("x"), _var("lo"), _const("hi", 6.0)]), NCHW)


def test_batchnorm_slices_its_four_parameters_on_the_channel_axis_only():
    params = [_const(n, np.ones(4)) for n in "sbmv"]
    _, sliced = _through(_node("BatchNormalization", [_var("x"), *params]), NCHW)
    assert [(p.index, p.axis) for p in sliced] == [(1, 0), (2, 0), (3, 0), (4, 0)]
    with pytest.raises(NotChannelWise, match="channel axis"):
        _through(_node("BatchNormalization", [_var("x"), *params]), LAST)
    with pytest.raises(NotChannelWise, match="not constant"):
        _through(_node("BatchNormalization", [_var("x"), _var("s"), *params[1:]]), NCHW)


def test_pooling_needs_nchw():
    assert _through(_node("MaxPool", [_var("x")], kernel_shape=[2, 2]), NCHW)[0] == NCHW
    with pytest.raises(NotChannelWise, match="N x C"):
        _through(_node("GlobalAveragePool", [_var("x")]), LAST)


def test_resize_of_spatial_axes_only():
    scales = _const("scales", [1.0, 1.0, 2.0, 2.0])
    assert _through(_node("Resize", [_var("x"), _const("roi", []), scales], mode="nearest"), NCHW)[0] == NCHW
    with pytest.raises(NotChannelWise, match="batch and channel"):
        _through(_node("Resize", [_var("x"), _const("roi", []), _const("s", [1.0, 2.0, 2.0, 2.0])]), NCHW)
    with pytest.raises(NotChannelWise, match="given sizes"):
        _through(_node("Resize", [_var("x"), _const("roi", []), _const("s", []), _const("sizes", [1, 4, 8, 8])]), NCHW)


def test_flatten_and_reshape_to_features():
    x = _var("x", shape=["N", 4, 3, 2])
    layout, _ = _through(_node("Flatten", [x], axis=1), NCHW)
    assert (layout.axis, layout.rank, layout.block) == (-1, 2, 6)
    layout, _ = _through(_node("Reshape", [x, _const("shape", np.array([0, -1]))]), NCHW)
    assert layout.block == 6
    with pytest.raises(NotChannelWise, match="not a flatten"):
        _through(_node("Reshape", [x, _const("shape", np.array([0, 4, 6, 1]))]), NCHW)
    with pytest.raises(NotChannelWise, match="computed shape"):
        _through(_node("Reshape", [x, _var("shape")]), NCHW)
    with pytest.raises(NotChannelWise, match="spatial size"):
        _through(_node("Flatten", [_var("y", shape=["N", 4, "H", "W"])], axis=1), NCHW)
    with pytest.raises(NotChannelWise, match="from below"):
        THROUGH["Flatten"].upstream(_node("Flatten", [x]), layout)


def test_transpose_moves_the_channel_axis_both_ways():
    node = _node("Transpose", [_var("x")], perm=[0, 2, 3, 1])
    moved, _ = _through(node, NCHW)
    assert moved.axis == -1
    assert THROUGH["Transpose"].upstream(node, moved) == NCHW
    with pytest.raises(NotChannelWise, match="unknown rank"):
        _through(_node("Transpose", [_var("x")]), Layout(channels=4, axis=-1, rank=None))


def test_squeeze_and_unsqueeze_renumber_the_channel_axis_both_ways():
    x = _var("x")
    squeeze = _node("Squeeze", [x, _const("axes", np.array([2]))])  # N x C x 1 x W -> N x C x W
    moved, params = _through(squeeze, NCHW)
    assert (moved.axis, moved.rank, params) == (-2, 3, ())
    assert THROUGH["Squeeze"].upstream(squeeze, moved) == NCHW
    unsqueeze = _node("Unsqueeze", [x, _const("axes", np.array([0, -1]))])  # N x C -> 1 x N x C x 1
    moved, _ = _through(unsqueeze, LAST)
    assert (moved.axis, moved.rank) == (-2, 4)
    assert THROUGH["Unsqueeze"].upstream(unsqueeze, moved) == LAST
    old = _node("Squeeze", [_var("x", shape=[1, 4, 1, 5])])  # no axes: every static 1 (0 and 2)
    assert _through(old, NCHW)[0] == Layout(channels=4, axis=-2, rank=2)
    assert _through(_node("Unsqueeze", [x], axes=[1]), LAST)[0] == Layout(channels=4, axis=-1, rank=3)
    with pytest.raises(NotChannelWise, match="removes the channel axis"):
        _through(_node("Squeeze", [x, _const("axes", np.array([1]))]), NCHW)
    with pytest.raises(NotChannelWise, match="computed axes"):
        _through(_node("Squeeze", [x, _var("axes")]), NCHW)
    with pytest.raises(NotChannelWise, match="unknown shape"):
        _through(_node("Squeeze", [x]), NCHW)


def test_depthwise_conv_is_channel_wise_and_rewrites_its_group_count():
    weight = _const("w", np.ones((4, 1, 3, 3)))
    node = _node("Conv", [_var("x"), weight, _const("b", np.zeros(4))], group=4)
    assert ops.is_depthwise(node) and rule_for(node) is ops.DEPTHWISE
    _, params = _through(node, NCHW)
    assert [(p.index, p.axis) for p in params] == [(1, 0), (2, 0)]
    with pytest.raises(NotChannelWise, match="does not match"):
        _through(node, Layout(channels=8, axis=-3, rank=4))
    ops.DEPTHWISE.resize(None, node, None, np.array([True, False, True, True]))
    assert node.attrs["group"] == 3
    plain = _node("Conv", [_var("x"), _const("w", np.ones((4, 4, 3, 3)))])
    assert rule_for(plain) is None and ops.layer_rule(plain) is LAYERS["Conv"]


def test_grouped_conv_is_channel_wise_on_whole_conv_groups():
    """group=4, 2 input and 3 output channels per conv group: units of 2 input channels (one
    conv group) become units of 3 output channels; units of 1 channel ask for coarser ones."""
    node = _node("Conv", [_var("x"), _const("w", np.ones((12, 2, 3, 3))), _const("b", np.zeros(12))], group=4)
    assert ops.is_grouped(node) and not ops.is_depthwise(node)
    assert rule_for(node) is ops.GROUPED_CONV and ops.layer_rule(node) is None
    units = Layout(channels=4, axis=-3, rank=4, block=2)
    out, params = _through(node, units)
    assert out == Layout(channels=4, axis=-3, rank=4, block=3)
    assert [(p.index, p.axis, p.block) for p in params] == [(1, 0, 3), (2, 0, 3)]
    # a unit of two conv groups
    out, params = _through(node, Layout(channels=2, axis=-3, rank=4, block=4))
    assert out.block == 6 and [p.block for p in params] == [6, 6]
    with pytest.raises(ops.CoarserUnits) as need:
        _through(node, Layout(channels=8, axis=-3, rank=4))
    assert need.value.factor == 2
    # walking up from the output: units of 3 outputs are units of 2 inputs
    assert ops.GROUPED_CONV.upstream(node, out) == Layout(channels=2, axis=-3, rank=4, block=4)
    with pytest.raises(ops.CoarserUnits) as need:
        ops.GROUPED_CONV.upstream(node, Layout(channels=12, axis=-3, rank=4))
    assert need.value.factor == 3


def test_grouped_conv_refuses_what_it_cannot_keep_valid():
    node = _node("Conv", [_var("x"), _const("w", np.ones((8, 2, 3, 3)))], group=4)
    with pytest.raises(NotChannelWise, match="does not match the 6 channels"):
        _through(node, Layout(channels=6, axis=-3, rank=4))
    with pytest.raises(NotChannelWise, match="does not match"):
        _through(node, Layout(channels=8, axis=-1, rank=2))
    windowed = Layout(channels=4, axis=-3, rank=4, windows=((0, 4, 0),), total=8)  # after a Concat
    with pytest.raises(NotChannelWise, match="several groups") as error:
        _through(node, windowed)
    assert not isinstance(error.value, ops.CoarserUnits)
    three = _node("Conv", [_var("x"), _const("w", np.ones((6, 3, 3, 3)))], group=2)  # 2 conv groups of 3
    with pytest.raises(NotChannelWise, match="at least 2 units") as error:
        _through(three, Layout(channels=3, axis=-3, rank=4, block=2))  # units of 2: lcm 6 = everything
    assert not isinstance(error.value, ops.CoarserUnits)
    computed = _node("Conv", [_var("x"), _var("w", shape=[8, 2, 3, 3])], group=4)
    with pytest.raises(NotChannelWise, match="not a constant"):
        _through(computed, Layout(channels=4, axis=-3, rank=4, block=2))
    biased = _node("Conv", [_var("x"), _const("w", np.ones((8, 2, 3, 3))), _var("b")], group=4)
    with pytest.raises(NotChannelWise, match="bias of grouped Conv"):
        _through(biased, Layout(channels=4, axis=-3, rank=4, block=2))


def test_depthwise_multiplier_gives_each_input_channel_its_outputs():
    node = _node("Conv", [_var("x"), _const("w", np.ones((8, 1, 3, 3)))], group=4)
    assert not ops.is_depthwise(node) and rule_for(node) is ops.GROUPED_CONV
    out, params = _through(node, NCHW)
    assert out == Layout(channels=4, axis=-3, rank=4, block=2)
    assert [(p.index, p.axis, p.block) for p in params] == [(1, 0, 2)]
    assert ops.GROUPED_CONV.upstream(node, out) == NCHW
    node.attrs["group"] = 4
    ops.GROUPED_CONV.resize(None, node, None, np.array([True, False, False, True]))
    assert node.attrs["group"] == 2


def test_grouped_conv_group_count_follows_the_units():
    node = _node("Conv", [_var("x"), _const("w", np.ones((8, 2, 3, 3)))], group=4)
    ops.GROUPED_CONV.resize(None, node, None, np.array([True, False]))  # units of 2 conv groups
    assert node.attrs["group"] == 2


def test_ops_after_a_grouped_conv_slice_whole_units():
    units = Layout(channels=4, axis=-3, rank=4, block=2)
    bn = _node("BatchNormalization", [_var("x"), *(_const(n, np.ones(8)) for n in "smbv")])
    _, params = _through(bn, units)
    assert [(p.index, p.block) for p in params] == [(1, 2), (2, 2), (3, 2), (4, 2)]
    _, params = _through(_node("Mul", [_var("x"), _const("s", np.ones((1, 8, 1, 1)))]), units)
    assert [(p.index, p.axis, p.block) for p in params] == [(1, 1, 2)]
    flat, _ = _through(_node("Flatten", [_var("x", shape=["N", 8, 3, 2])], axis=1), units)
    assert (flat.axis, flat.block) == (-1, 12)
    assert _through(_node("MaxPool", [_var("x")], kernel_shape=[2, 2]), units)[0] == units
    split = _node("Split", [_var("x", shape=["N", 8, 2, 2]), _const("sizes", np.array([4, 4]))],
                  [_var("a"), _var("b")], axis=1)
    with pytest.raises(NotChannelWise, match="blocks of 2 \\(after a grouped Conv"):
        ROUTING["Split"].route(split, split.inputs[0], units)
    with pytest.raises(NotChannelWise, match="blocks of 2"):
        concat_layout(_node("Concat", [_var("a", shape=["N", 8, 2, 2]), _var("b")], axis=1), {"a": units})


def test_conv_consumer_reads_units_of_channels():
    conv = _node("Conv", [_var("x", shape=["N", 8, 5, 5]), _const("w", np.ones((6, 8, 3, 3)))], [_var("y")])
    units = Layout(channels=4, axis=-3, rank=4, block=2)
    consumer = LAYERS["Conv"].consumer(conv, conv.inputs[0], units)
    assert consumer.block == 18 and LAYERS["Conv"].row_block(consumer) == 2
    with pytest.raises(NotChannelWise, match="axis 1"):
        LAYERS["Conv"].consumer(conv, conv.inputs[0], Layout(channels=4, axis=-3, rank=4, block=3))


def test_ops_that_mix_channels_have_no_rule():
    for op in ("ReduceMean", "LayerNormalization", "Concat", "Gather"):
        assert rule_for(_node(op, [_var("x")])) is None


# ------------------------------------------------------------------------------ attention heads

HIDDEN = Layout(channels=32, axis=-1, rank=3)  # N x S x 32, one channel per unit
HEADS = Layout(channels=4, axis=-1, rank=3, block=8)  # the same in units of 8-channel heads
SCORES = Layout(channels=4, axis=-3, rank=4)  # N x heads x S x S (or x d)


def _concat_shape(*pieces) -> gs.Variable:
    """A Reshape shape computed by Concat from 1-D pieces (constants or [1]-shaped variables)."""
    shape = _var("shape", shape=[len(pieces)])
    inputs = [_const(f"p{i}", [p]) if isinstance(p, int) else _var(p, shape=[1]) for i, p in enumerate(pieces)]
    gs.Node("Concat", "shape_concat", attrs={"axis": 0}, inputs=inputs, outputs=[shape])
    return shape


def test_head_split_asks_for_whole_heads_then_makes_them_the_units():
    for shape in (_const("shape", np.array([0, 0, 4, 8])), _concat_shape("n", "s", 4, 8),
                  _concat_shape("n", "s", -1, 8), _const("shape", np.array([-1, 8, 4, -1]))):
        node = _node("Reshape", [_var("x", shape=["N", "S", 32]), shape])
        with pytest.raises(ops.CoarserUnits) as need:
            _through(node, HIDDEN)
        assert need.value.factor == 8
        assert _through(node, HEADS) == (SCORES.__class__(channels=4, axis=-2, rank=4), ())
    node = _node("Reshape", [_var("x", shape=["N", "S", 32]), _concat_shape("n", "s", 4, 8)])
    assert THROUGH["Reshape"].upstream(node, Layout(channels=4, axis=-2, rank=4)) == HEADS
    with pytest.raises(NotChannelWise, match="known size"):  # the head count computed at run time
        _through(_node("Reshape", [_var("x", shape=["N", "S", 32]), _concat_shape("n", "s", "h", 8)]), HEADS)
    with pytest.raises(NotChannelWise, match="fewer than 2 units"):
        _through(_node("Reshape", [_var("x", shape=["N", "S", 32]), _const("shape", np.array([0, 0, 1, 32]))]), HIDDEN)


def test_head_merge_gives_each_unit_its_features():
    node = _node("Reshape", [_var("x", shape=["N", "S", 4, 8]), _concat_shape("n", "s", 32)])
    assert _through(node, Layout(channels=4, axis=-2, rank=4)) == (HEADS, ())
    unknown = _node("Reshape", [_var("x", shape=["N", "S", 4, "d"]), _concat_shape("n", "s", 32)])
    with pytest.raises(NotChannelWise, match="does not merge"):
        _through(unknown, Layout(channels=4, axis=-2, rank=4))


def test_head_reshapes_renumber_their_count_entry():
    merge = _node("Reshape", [_var("x", shape=["N", "S", 4, 8]), _concat_shape("n", "s", 32)],
                  [_var("y", shape=["N", "S", 32])])
    THROUGH["Reshape"].resize(gs.Graph(), merge, ops.base.PassThrough("r", "Reshape", channel_axis=2),
                              np.array([True, False, True, False]))
    assert merge.inputs[1].inputs[0].inputs[2].values.tolist() == [16]
    split = _node("Reshape", [_var("x"), _const("shape", np.array([0, 0, 4, 8]))], [_var("y", shape=["N", "S", 4, 8])])
    THROUGH["Reshape"].resize(gs.Graph(), split, ops.base.PassThrough("r", "Reshape", channel_axis=2),
                              np.array([True, False, True, True]))
    assert split.inputs[1].values.tolist() == [0, 0, 3, 8]
    inferred = _node("Reshape", [_var("x"), _const("shape", np.array([0, 0, -1, 8]))], [_var("y", shape=["N", "S", 4, 8])])
    THROUGH["Reshape"].resize(gs.Graph(), inferred, ops.base.PassThrough("r", "Reshape", channel_axis=2),
                              np.array([True, False, True, True]))
    assert inferred.inputs[1].values.tolist() == [0, 0, -1, 8]


def test_a_computed_head_shape_shared_with_another_groups_reshape_is_refused():
    shape = _concat_shape("n", "s", 4, 8)
    node = _node("Reshape", [_var("x", shape=["N", "S", 32]), shape])
    gs.Node("Reshape", "other", inputs=[_var("elsewhere"), shape], outputs=[_var("z")])
    with pytest.raises(NotChannelWise, match="also used by Reshape other"):
        _through(node, HEADS, {"x"})


def test_attention_products_and_softmax_keep_heads_apart():
    q, k = _var("q", shape=["N", 4, "S", 8]), _var("k", shape=["N", 4, 8, "S"])
    matmul = _node("MatMul", [q, k])
    assert ops.layer_rule(matmul) is None and ops.is_batched_matmul(matmul)
    assert _through(matmul, SCORES, {"q", "k"}) == (SCORES, ())
    with pytest.raises(NotChannelWise, match="from outside the group"):
        _through(matmul, SCORES, {"q"})
    with pytest.raises(NotChannelWise, match="along the channel axis"):
        _through(matmul, Layout(channels=4, axis=-1, rank=4))
    assert _through(_node("Softmax", [_var("s")], axis=-1), SCORES) == (SCORES, ())
    with pytest.raises(NotChannelWise, match="across the channels"):
        _through(_node("Softmax", [_var("s")], axis=1), SCORES)
    with pytest.raises(NotChannelWise, match="unknown position"):
        _through(_node("Softmax", [_var("s")]), SCORES)


def test_a_mask_that_broadcasts_over_the_heads_is_not_part_of_the_group():
    mask = _var("mask", shape=["N", 1, 1, "S"])
    assert ops.broadcasts(mask, SCORES) and not ops.broadcasts(_var("m", shape=["N", 4, 1, "S"]), SCORES)
    assert not ops.broadcasts(_var("m"), SCORES)  # unknown shape: it might carry channels
    assert _through(_node("Add", [_var("s"), mask]), SCORES, {"s"}) == (SCORES, ())
    where = _node("Where", [_var("c", shape=["N", 1, 1, "S"]), _const("low", -1e4), _var("s")])
    assert _through(where, SCORES, {"s"}) == (SCORES, ())
    with pytest.raises(NotChannelWise, match="residual or gating"):
        _through(_node("Add", [_var("s"), _var("m", shape=["N", 4, 1, "S"])]), SCORES, {"s"})


# ------------------------------------------------------------------------------ routing


def test_split_gives_each_output_its_window():
    node = _node("Split", [_var("x", shape=["N", 4, 2, 2]), _const("sizes", np.array([1, 3]))],
                 [_var("a"), _var("b")], axis=1)
    first, second = ROUTING["Split"].route(node, node.inputs[0], NCHW)
    assert (first.windows, first.total) == (((0, 1, 0),), 1)
    assert (second.windows, second.total) == (((1, 4, 0),), 3)
    with pytest.raises(NotChannelWise, match="computed sizes"):
        ROUTING["Split"].route(_node("Split", [_var("x"), _var("sizes")], [_var("a"), _var("b")], axis=1),
                               None, NCHW)
    other_axis = _node("Split", [_var("x"), _const("sizes", np.array([1, 1]))], [_var("a"), _var("b")], axis=2)
    assert ROUTING["Split"].route(other_axis, None, NCHW) == [NCHW, NCHW]


def test_slice_window_and_step():
    node = _node("Slice", [_var("x"), _const("s", np.array([1])), _const("e", np.array([3])), _const("a", np.array([1]))])
    (window,) = ROUTING["Slice"].route(node, None, NCHW)
    assert (window.windows, window.total) == (((1, 3, 0),), 2)
    stepped = _node("Slice", [_var("x"), _const("s", np.array([0])), _const("e", np.array([4])),
                              _const("a", np.array([1])), _const("p", np.array([2]))])
    with pytest.raises(NotChannelWise, match="step 2"):
        ROUTING["Slice"].route(stepped, None, NCHW)


def test_concat_joins_windows_and_refuses_other_axes():
    a, b = _var("a", shape=["N", 4, 2, 2]), _var("b", shape=["N", 4, 2, 2])
    node = _node("Concat", [a, b], axis=1)
    joined = concat_layout(node, {"a": NCHW})
    assert (joined.windows, joined.total) == (((0, 4, 0),), 8)
    with pytest.raises(NotChannelWise, match="not on the channel axis"):
        concat_layout(_node("Concat", [a, b], axis=2), {"a": NCHW})


# ------------------------------------------------------------------------------ layers


def test_layer_rules_describe_producers_and_refuse_what_they_cannot_prune():
    conv = _node("Conv", [_var("x"), _const("w", np.ones((6, 4, 3, 3))), _const("b", np.zeros(6))],
                 [_var("y", shape=["N", 6, 5, 5])])
    producer, layout = LAYERS["Conv"].producer(conv)
    assert (producer.weight, producer.out_axis, producer.bias, layout.channels) == ("w", 0, "b", 6)
    gemm = _node("Gemm", [_var("x"), _const("w", np.ones((6, 4)))], transB=1)
    assert LAYERS["Gemm"].producer(gemm)[0].out_axis == 0
    with pytest.raises(NotChannelWise, match="transA"):
        LAYERS["Gemm"].producer(_node("Gemm", [_var("x"), _const("w", np.ones((4, 6)))], transA=1))
    with pytest.raises(NotChannelWise, match="grouped Conv"):
        LAYERS["Conv"].producer(_node("Conv", [_var("x"), _const("w", np.ones((6, 2, 3, 3)))], group=2))
    with pytest.raises(NotChannelWise, match="not a constant"):
        LAYERS["MatMul"].producer(_node("MatMul", [_var("x"), _var("w")]))
    with pytest.raises(NotChannelWise, match="rank 3"):
        LAYERS["MatMul"].producer(_node("MatMul", [_var("x"), _const("w", np.ones((2, 4, 6)))]))


def test_consumer_weight_matrix_round_trip():
    rng = np.random.default_rng(0)
    for op, weight, in_axis in (("Conv", rng.normal(size=(5, 4, 3, 3)), 1), ("Gemm", rng.normal(size=(5, 4)), 1),
                                ("MatMul", rng.normal(size=(4, 5)), 0)):
        block = 9 if op == "Conv" else 1
        consumer = Consumer("n", op, "x", "w", in_axis=in_axis, block=block, scale=1.0)
        matrix = LAYERS[op].matrix(consumer, weight)
        assert matrix.shape == (4 * block, 5)
        np.testing.assert_array_equal(LAYERS[op].weight(consumer, matrix, weight), weight)


def test_layer_costs_and_outputs():
    assert LAYERS["Conv"].macs({}, [1, 6, 5, 5], [6, 4, 3, 3]) == 150 * 36
    assert LAYERS["Gemm"].macs({"transB": 1}, [1, 6], [6, 4]) == 24
    assert LAYERS["MatMul"].macs({}, [1, 7, 6], [4, 6]) == 7 * 6 * 4
    assert LAYERS["Gemm"].outputs({"transB": 1}, (6, 4)) == 6 and LAYERS["Gemm"].outputs({}, (4, 6)) == 6
    assert LAYERS["Gemm"].scale({"alpha": 0.5}) == 0.5 and LAYERS["Conv"].scale({"alpha": 0.5}) == 1.0
    attrs = {"alpha": 0.5}
    LAYERS["Gemm"].reset_scale(attrs)
    assert attrs == {"alpha": 1.0}
    assert LAYERS["MatMul"].bias_input is None and LAYERS["Conv"].bias_input == 2


def test_a_head_merge_to_minus_one_must_not_fold_tokens_in():
    heads_in = Layout(channels=4, axis=-2, rank=4)
    copy = _node("Reshape", [_var("x", shape=["N", "S", 4, 8]), _const("shape", np.array([0, 0, -1]))])
    assert _through(copy, heads_in) == (HEADS, ())
    folded = _node("Reshape", [_var("x", shape=["N", "S", 4, 8]), _const("shape", np.array([2, 5, -1]))])
    with pytest.raises(NotChannelWise, match="does not merge"):
        _through(folded, heads_in)
