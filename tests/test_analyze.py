"""analyze finds the channel groups of chain-structured graphs and says why it skips the rest."""

import numpy as np

import builders
from onnx import numpy_helper

from onnx_subprune.analyze import analyze, coverage
from onnx_subprune.rewrite import rewrite
from onnx_subprune.types import GroupPlan


def _summary(model):
    result = analyze(model)
    groups = [(g.name, g.channels, [c.node for c in g.consumers], [p.op for p in g.passthrough]) for g in result.groups]
    return groups, {s.node: s.reason for s in result.skipped}


def test_conv_bn_pool_conv():
    groups, skipped = _summary(builders.conv_bn_pool_conv())
    assert groups == [
        ("Conv_0", 8, ["Conv_4"], ["BatchNormalization", "Relu", "MaxPool"]),
        ("Conv_4", 6, ["Gemm_8"], ["Relu", "GlobalAveragePool", "Flatten"]),
    ]
    assert "graph output" in skipped["Gemm_8"]
    conv = analyze(builders.conv_bn_pool_conv()).groups[0].consumers[0]
    assert conv.block == 9 and conv.conv.strides == (2, 2) and conv.conv.pads == (1, 0, 1, 2)
    bn = analyze(builders.conv_bn_pool_conv()).groups[0].passthrough[0]
    assert [p.index for p in bn.params] == [1, 2, 3, 4]


def test_flatten_gives_each_channel_its_spatial_block():
    group = analyze(builders.conv_flatten_gemm()).groups[0]
    assert group.consumers[0].block == 16 and group.consumers[0].in_axis == 1


def test_gemm_alpha_is_a_scale_and_bias_is_found():
    group = analyze(builders.gemm_gemm()).groups[0]
    assert group.consumers[0].scale == 0.5 and group.consumers[0].bias == "b2"


def test_matmul_ffn_with_erf_gelu_and_bias_add():
    groups, skipped = _summary(builders.matmul_gelu_matmul())
    assert len(groups) == 1 and groups[0][2] == ["MatMul_7"]
    consumer = analyze(builders.matmul_gelu_matmul()).groups[0].consumers[0]
    assert consumer.bias_node == "Add_8" and consumer.bias == "b2"
    assert "graph output" in skipped["MatMul_7"]


def test_constant_node_weights_are_read():
    text = builders.header("float[N,4] x", "float[N,2] y") + """ {
        w1 = Constant <value = float[4, 3] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> ()
        a = MatMul (x, w1)
        b = Relu (a)
        y = MatMul (b, w2)
    }"""
    model = builders.build(text, {"w2": (3, 2)})
    groups, _ = _summary(model)
    assert [g[0] for g in groups] == ["MatMul_1"]


def test_skip_reasons():
    text = builders.header("float[N,4] x, float[3,4] wx", "float[N,3] y, float[N,3] z") + """ {
        a = Gemm <transB = 1> (x, wx)
        b = Gemm <transB = 1> (x, w1)
        c = Relu (b)
        s = Softmax (c)
        d = Gemm <transB = 1> (x, w2)
        e = Add (d, a)
        y = Gemm (e, w3)
        f = Gemm <transB = 1> (x, w4)
        g = Gemm <transB = 1> (f, w5)
        z = Add (g, s)
    }"""
    model = builders.build(text, {"w1": (3, 4), "w2": (3, 4), "w3": (3, 3), "w4": (3, 4), "w5": (3, 3)})
    _, skipped = _summary(model)
    assert "graph input" in skipped["Gemm_0"]
    assert "Softmax" in skipped["Gemm_1"]
    assert "tied to Gemm Gemm_0" in skipped["Gemm_4"] and "graph input" in skipped["Gemm_4"]
    assert "graph output" in skipped["Gemm_6"]
    assert len(analyze(model).groups) == 1  # w4 -> w5


def test_shared_weight_and_grouped_conv_are_skipped():
    text = builders.header("float[N,4,5,5] x", "float[N,4,5,5] y") + """ {
        a = Conv <kernel_shape = [1, 1]> (x, w)
        b = Conv <kernel_shape = [1, 1]> (a, w)
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (b, dw)
        y = Conv <kernel_shape = [1, 1]> (c, w2)
    }"""
    model = builders.build(text, {"w": (4, 4, 1, 1), "dw": (4, 1, 3, 3), "w2": (4, 4, 1, 1)})
    result = analyze(model)
    reasons = {s.node: s.reason for s in result.skipped}
    assert "shared" in reasons["Conv_0"] and "depthwise" in reasons["Conv_2"]
    assert "shared" in reasons["Conv_1"]


def test_reshape_flatten_is_followed_and_its_constant_fixed():
    text = builders.header("float[N,2,4,4] x", "float[N,3] y") + """ {
        a = Conv <kernel_shape = [1, 1]> (x, w1)
        b = Reshape (a, shape)
        y = Gemm <transB = 1> (b, w2)
    }"""
    model = builders.build(text, {"w1": (5, 2, 1, 1), "w2": (3, 80), "shape": np.array([-1, 80], np.int64)})
    (group,) = analyze(model).groups
    assert group.consumers[0].block == 16
    assert [(p.op, p.channel_axis) for p in group.passthrough] == [("Reshape", 1)]  # the entry to renumber
    pruned = rewrite(model, [GroupPlan(group, (0, 2, 4))])
    shape = next(i for i in pruned.graph.initializer if i.name == "shape")
    assert numpy_helper.to_array(shape).tolist() == [-1, 48]


def test_residual_depthwise_and_se_gate_are_coupled():
    result = analyze(builders.residual_se_block())
    stream, expand, squeeze = result.groups
    assert [p.node for p in stream.producers] == ["Conv_0", "Conv_7", "Conv_11"]
    assert [c.node for c in stream.consumers] == ["Conv_2", "Conv_9", "Gemm_18"]
    assert expand.channels == 12 and [c.node for c in expand.consumers] == ["Conv_7"]
    depthwise = next(p for p in expand.passthrough if p.op == "Conv")
    assert [(q.index, q.axis) for q in depthwise.params] == [(1, 0), (2, 0)]
    assert [p.node for p in squeeze.producers] == ["Conv_9"] and [c.node for c in squeeze.consumers] == ["Conv_11"]
    assert "depthwise" in {s.node: s.reason for s in result.skipped}["Conv_5"]


def test_include_and_exclude_globs():
    model = builders.conv_bn_pool_conv()
    result = analyze(model, exclude=["Gemm_*"])
    assert [g.name for g in result.groups] == ["Conv_0"]
    assert "excluded by the pattern Gemm_*" in {s.node: s.reason for s in result.skipped}["Conv_4"]
    result = analyze(model, include=["Conv_4"])
    assert [g.name for g in result.groups] == ["Conv_4"]
    assert "include patterns" in {s.node: s.reason for s in result.skipped}["Conv_0"]


def test_coverage_counts_each_touched_tensor_once():
    model = builders.conv_flatten_gemm()
    report = coverage(model, analyze(model))
    # w1 b1 (Conv 6x2x3x3 + 6), w2 b2 (Gemm 7x96 + 7), w3 b3 (Gemm 7x4 + 4)
    assert report["params_in_groups"] == 108 + 6 + 672 + 7 + 28 + 4
    assert report["fraction"] == 1.0 and report["groups"] == 2 and report["channels"] == 13


def test_coverage_of_an_ffn_counts_the_bias_adds():
    model = builders.matmul_gelu_matmul()
    report = coverage(model, analyze(model))
    assert report["params_in_groups"] == 8 * 16 + 16 + 16 * 8 + 8  # the 3 GELU scalars stay outside
    assert report["params_total"] == report["params_in_groups"] + 3


def test_transpose_without_perm_of_unknown_rank_is_a_skip_not_a_crash():
    """A residual input that comes from a Transpose with no perm, on a tensor whose rank shape
    inference cannot know (a graph input without a shape), is a reason, not a TypeError."""
    text = builders.header("float x, float v", "float y") + """ {
        a = MatMul (x, w1)
        t = Transpose (v)
        s = Add (a, t)
        r = Relu (s)
        y = MatMul (r, w2)
    }"""
    model = builders.build(text, {"w1": (4, 6), "w2": (6, 3)})
    result = analyze(model)
    assert result.groups == ()
    assert [(s.node, "unknown rank" in s.reason) for s in result.skipped if s.node == "MatMul_0"] == [("MatMul_0", True)]


def test_unforeseen_error_in_a_rule_skips_the_producer(monkeypatch):
    """Whatever a rule trips over becomes the skip reason of the producers it touches."""
    from onnx_subprune import ops

    def broken(node, layout, group):
        raise KeyError("perm")

    monkeypatch.setitem(ops.THROUGH, "BatchNormalization", ops.OpRule(through=broken))
    result = analyze(builders.conv_bn_pool_conv())
    assert [g.name for g in result.groups] == ["Conv_4"]
    reason = {s.node: s.reason for s in result.skipped}["Conv_0"]
    assert "could not be analyzed" in reason and "KeyError" in reason


def test_constant_layout_ops_are_folded_and_resize_passes_channels():
    """paddle2onnx style: the Conv bias is Reshape(Constant) added after the Conv, upsampling
    is a Resize with constant scales; prepare() folds the Reshape, the rest is channel-wise."""
    from onnx_subprune.graph import prepare
    from helpers import random_feeds, run

    model = builders.paddle_style()
    raw = {s.node: s.reason for s in analyze(model).skipped}
    assert "Reshape" in raw["Conv_3"]
    ready = prepare(model)
    assert [n.op_type for n in ready.graph.node].count("Reshape") == 0
    groups = analyze(ready).groups
    assert [(g.name, [p.op for p in g.passthrough]) for g in groups][0] == ("Conv_3", ["Add", "Relu", "Resize"])
    feeds = random_feeds(model, 3)
    np.testing.assert_array_equal(run(model, feeds)[0], run(ready, feeds)[0])


def test_resize_to_sizes_or_of_channels_is_not_channel_wise():
    text = builders.header("float[N,3,8,8] x", "float[N,5,4,4] y") + """ {
        a = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        roi = Constant <value = float[0] {}> ()
        scales = Constant <value = float[4] {1.0, 2.0, 1.0, 1.0}> ()
        e = Resize (a, roi, scales)
        y = Conv <kernel_shape = [1, 1]> (e, w2, b2)
    }"""
    model = builders.build(text, {"w1": (4, 3, 1, 1), "b1": (4,), "w2": (5, 8, 1, 1), "b2": (5,)})
    assert "batch and channel" in {s.node: s.reason for s in analyze(model).skipped}["Conv_0"]


# ------------------------------------------------------------------------------ grouped convolutions


def test_grouped_conv_prunes_whole_conv_groups():
    """ResNeXt-style: the group passes the grouped Conv in units of one conv group (2 channels)."""
    groups, skipped = _summary(builders.grouped_bottleneck())
    assert groups == [
        ("Conv_0", 4, ["Conv_6"], ["BatchNormalization", "Relu", "Conv", "BatchNormalization", "Relu"]),
        ("Conv_6", 6, ["Gemm_12"], ["Add", "Relu", "GlobalAveragePool", "Flatten"]),
    ]
    inner = analyze(builders.grouped_bottleneck()).groups[0]
    assert inner.producers[0].layout.block == 2 and inner.consumers[0].block == 2
    grouped = next(p for p in inner.passthrough if p.op == "Conv")
    assert [(q.index, q.axis, q.block) for q in grouped.params] == [(1, 0, 2), (2, 0, 2)]
    assert "whole conv groups" in skipped["Conv_3"]


def test_depthwise_multiplier_outputs_follow_their_input_channel():
    groups, _ = _summary(builders.depthwise_multiplier())
    assert groups[0][:3] == ("Conv_0", 4, ["Conv_6", "Gemm_13"])
    group = analyze(builders.depthwise_multiplier()).groups[0]
    assert group.producers[0].layout is None  # one stem channel per unit
    assert [c.block for c in group.consumers] == [2, 2 * 9]  # 2 outputs per unit; x 3x3 after MaxPool+Flatten
    assert [(p.op, [q.block for q in p.params]) for p in group.passthrough if p.params] == [
        ("Conv", [2, 2]), ("BatchNormalization", [2, 2, 2, 2]), ("Mul", [2])]


def test_chained_grouped_convs_settle_on_units_of_both():
    """Conv groups of 2 then of 4 channels: the units grow twice, to 4 channels."""
    group = analyze(builders.chained_grouped()).groups[0]
    assert (group.channels, group.producers[0].layout.block) == (2, 4)
    first, second = [p for p in group.passthrough if p.op == "Conv"]
    assert [q.block for q in first.params] == [4] and [q.block for q in second.params] == [2, 2]
    assert group.consumers[0].block == 2


def test_residual_walks_up_through_a_grouped_conv():
    group = analyze(builders.grouped_residual()).groups[0]
    assert [(p.node, p.layout.block) for p in group.producers] == [("Conv_0", 2), ("Conv_1", 2)]
    assert group.channels == 4 and group.consumers[0].block == 2 * 9


def test_grouped_conv_negative_cases():
    """A grouped Conv on the graph input, after a Concat of two groups, with conv groups that
    leave one unit, or with a computed weight: the producers are skipped with the reason."""
    text = builders.header("float[N,4,5,5] x", "float[N,2,5,5] y, float[N,3,5,5] z, float[N,3,5,5] u") + """ {
        g = Conv <kernel_shape = [1, 1], group = 2> (x, wg)
        a1 = Conv <kernel_shape = [1, 1]> (g, w1)
        a2 = Conv <kernel_shape = [1, 1]> (x, w2)
        cat = Concat <axis = 1> (a1, a2)
        h = Conv <kernel_shape = [1, 1], group = 4> (cat, wh)
        y = Conv <kernel_shape = [1, 1]> (h, w3)
        b = Conv <kernel_shape = [1, 1]> (x, w4)
        b1 = Conv <kernel_shape = [1, 1], group = 3> (b, wb1)
        b2 = Conv <kernel_shape = [1, 1], group = 2> (b1, wb2)
        z = Conv <kernel_shape = [1, 1]> (b2, w5)
        c = Conv <kernel_shape = [1, 1]> (x, w6)
        wc = Relu (wv)
        d = Conv <kernel_shape = [1, 1], group = 2> (c, wc)
        u = Conv <kernel_shape = [1, 1]> (d, w7)
    }"""
    model = builders.build(text, {
        "wg": (4, 2, 1, 1), "w1": (4, 4, 1, 1), "w2": (4, 4, 1, 1), "wh": (8, 2, 1, 1), "w3": (2, 8, 1, 1),
        "w4": (6, 4, 1, 1), "wb1": (6, 2, 1, 1), "wb2": (6, 3, 1, 1), "w5": (3, 6, 1, 1),
        "w6": (4, 4, 1, 1), "wv": (4, 2, 1, 1), "w7": (3, 4, 1, 1)})
    result = analyze(model)
    reasons = {s.node: s.reason for s in result.skipped}
    assert "grouped Conv (group=2)" in reasons["Conv_0"]  # reads the graph input: nothing to prune it with
    assert "several groups" in reasons["Conv_1"] and "several groups" in reasons["Conv_2"]
    assert "at least 2 units" in reasons["Conv_6"]  # conv groups of 2 then of 3: one unit of 6
    assert "not a constant" in reasons["Conv_10"]
    assert result.groups == ()


def test_concat_windows_pass_a_depthwise_multiplier_in_units():
    first, second, _ = analyze(builders.concat_depthwise_multiplier()).groups
    assert [(c.node, c.block) for c in first.consumers] == [("Conv_5", 3)]
    assert first.consumers[0].layout.windows == ((0, 2, 0),) and second.consumers[0].layout.windows == ((0, 3, 2),)
    assert first.consumers[0].layout.total == second.consumers[0].layout.total == 5


def test_fused_attention_is_skipped_with_the_reason():
    """onnxruntime's transformer optimizer fuses attention into com.microsoft Attention, whose
    heads are not pruned: the layers next to it say so, and what to do instead."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weights = {name: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w_in", (32, 32)), ("qkv", (32, 96)), ("qkv_bias", (96,)), ("w_out", (32, 8)))}
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["h"], name="in_proj"),
        helper.make_node("Attention", ["h", "qkv", "qkv_bias"], ["ctx"], name="attention", domain="com.microsoft",
                         num_heads=4),
        helper.make_node("MatMul", ["ctx", "w_out"], ["y"], name="out_proj"),
    ]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8])],
                              list(weights.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    result = analyze(model)
    reasons = {s.node: s.reason for s in result.skipped}
    assert not result.groups
    assert "fused attention" in reasons["in_proj"] and "prune the exported model before" in reasons["in_proj"]
