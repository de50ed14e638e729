"""analyze finds the channel groups of chain-structured graphs and says why it skips the rest."""

import numpy as np

import builders
from onnx_subprune.analyze import analyze, coverage


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
    assert [f.block for f in group.shape_fixes] == [16]


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
