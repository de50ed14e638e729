"""Rewrite without refit equals the original with the removed channels' consumer weights zeroed."""

import numpy as np
import onnx
import pytest

from onnx_subprune.analyze import analyze
from onnx_subprune.graph import prepare
from onnx_subprune.rewrite import rewrite
from onnx_subprune.types import ConsumerUpdate, GroupPlan

import builders
from helpers import masked, random_feeds, run

MODELS = ["conv_bn_pool_conv", "conv_flatten_gemm", "gemm_gemm", "matmul_gelu_matmul", "residual_se_block",
          "csp_split_concat", "dense_block", "channel_slice", "csp_residual", "paddle_style",
          "grouped_bottleneck", "depthwise_multiplier", "chained_grouped", "grouped_residual",
          "concat_depthwise_multiplier", "ctc_head"]


def _kept(channels: int, seed: int) -> tuple[int, ...]:
    rng = np.random.default_rng(seed)
    return tuple(sorted(rng.choice(channels, size=max(1, channels // 2), replace=False).tolist()))


@pytest.mark.parametrize("name", MODELS)
def test_each_group_equals_masked_original(name):
    model = prepare(getattr(builders, name)())
    feeds = random_feeds(model, 7)
    groups = analyze(model).groups
    assert groups
    for seed, group in enumerate(groups):
        kept = _kept(group.channels, seed)
        pruned = rewrite(model, [GroupPlan(group, kept)])
        onnx.checker.check_model(pruned, full_check=True)
        for got, want in zip(run(pruned, feeds), run(masked(model, group, kept), feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_all_groups_at_once_shrink_the_model(name):
    model = prepare(getattr(builders, name)())
    groups = analyze(model).groups
    plans = [GroupPlan(g, _kept(g.channels, i)) for i, g in enumerate(groups)]
    pruned = rewrite(model, plans)
    onnx.checker.check_model(pruned, full_check=True)
    size = lambda m: sum(int(np.prod(i.dims)) for i in m.graph.initializer)
    assert size(pruned) < size(model)
    expected = masked(model, groups[0], plans[0].kept)
    outputs = run(pruned, random_feeds(model, 3))
    assert [o.shape for o in outputs] == [o.shape for o in run(expected, random_feeds(model, 3))]


@pytest.mark.parametrize("name, kept, shapes", [
    # 4 conv groups of 2 channels, keep 2: group 2, 4 channels in and out, BN sliced alike
    ("grouped_bottleneck", (1, 3), {"w1": (4, 4, 1, 1), "wg": (4, 2, 3, 3), "bg": (4,), "s2": (4,), "w3": (6, 4, 1, 1)}),
    # multiplier 2, keep 3 input channels: 6 outputs in 3 groups
    ("depthwise_multiplier", (0, 2, 3), {"w1": (3, 3, 3, 3), "wd": (6, 1, 3, 3), "scale": (1, 6, 1, 1),
                                          "w2": (5, 6, 1, 1), "w3": (4, 54)}),
    # units of 4 channels (two conv groups of the first grouped Conv, one of the second), keep 1
    ("chained_grouped", (1,), {"w1": (4, 3, 1, 1), "wg1": (4, 2, 3, 3), "wg2": (2, 4, 3, 3), "w3": (5, 2, 1, 1)}),
])
def test_grouped_convs_keep_whole_conv_groups(name, kept, shapes):
    model = getattr(builders, name)()
    group = analyze(model).groups[0]
    pruned = rewrite(model, [GroupPlan(group, kept)])
    onnx.checker.check_model(pruned, full_check=True)
    inits = {i.name: tuple(i.dims) for i in pruned.graph.initializer}
    assert {name: inits[name] for name in shapes} == shapes
    groups = [a.i for n in pruned.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    expected = {"grouped_bottleneck": [2], "depthwise_multiplier": [3], "chained_grouped": [2, 1]}[name]
    assert groups == expected


def test_refit_weights_and_bias_shift_are_written():
    model = builders.matmul_gelu_matmul()
    group = analyze(model).groups[0]
    consumer = group.consumers[0]
    kept = (0, 3, 5)
    weight = np.full((3, 8), 0.25, np.float32)
    shift = np.arange(8, dtype=np.float32)
    plan = GroupPlan(group, kept, (ConsumerUpdate(consumer.node, weight, shift),))
    pruned = rewrite(model, [plan])
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}
    np.testing.assert_array_equal(inits[consumer.weight], weight)
    original_bias = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}[consumer.bias]
    np.testing.assert_allclose(inits[consumer.bias], original_bias + shift)


def _biasless_chain() -> onnx.ModelProto:
    """Conv (no bias) -> Relu -> Conv (no bias) -> Flatten -> MatMul (no bias) -> Relu -> MatMul."""
    text = builders.header("float[N,2,5,5] x", "float[N,3] y") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1)
        b = Relu (a)
        c = Conv <kernel_shape = [1, 1]> (b, w2)
        d = GlobalAveragePool (c)
        e = Flatten (d)
        f = MatMul (e, w3)
        g = Relu (f)
        y = MatMul (g, w4)
    }"""
    return builders.build(text, {"w1": (6, 2, 3, 3), "w2": (5, 6, 1, 1), "w3": (5, 7), "w4": (7, 3)})


def test_bias_shift_creates_missing_biases():
    """A consumer without bias gets one (Conv input, or an Add after MatMul), and a consumer that
    is also the next group's producer has that new bias sliced with its channels."""
    model = _biasless_chain()
    groups = analyze(model).groups
    assert [g.channels for g in groups] == [6, 5, 7]
    plans = []
    for group in groups:
        kept = tuple(range(0, group.channels, 2))
        consumer = group.consumers[0]
        rows = len(kept) * (1 if consumer.op == "Conv" else consumer.block)
        width = {"Conv_2": 5, "MatMul_5": 7, "MatMul_7": 3}[consumer.node]
        shift = np.linspace(1, 2, width).astype(np.float32)
        weight = None if consumer.op == "Conv" else np.ones((rows, width), np.float32)
        plans.append(GroupPlan(group, kept, (ConsumerUpdate(consumer.node, weight, shift),)))
    pruned = rewrite(model, plans)
    onnx.checker.check_model(pruned, full_check=True)
    ops = [n.op_type for n in pruned.graph.node]
    assert ops.count("Add") == 2
    zeros = {"x": np.zeros((1, 2, 5, 5), np.float32)}
    (out,) = run(pruned, zeros)
    # Zero input: conv2 output = its bias shift -> GAP -> kept [0, 2, 4]; MatMul_5 with ones -> Add shift
    c_bias = np.linspace(1, 2, 5)[[0, 2, 4]]
    hidden = np.maximum(c_bias.sum() + np.linspace(1, 2, 7), 0)[[0, 2, 4, 6]]
    np.testing.assert_allclose(out[0], hidden.sum() + np.linspace(1, 2, 3), rtol=1e-5)


def test_constant_nodes_prelu_and_per_channel_constants_are_sliced():
    """Weights given as Constant nodes, a PRelu slope, a per-channel Mul and a Reshape flatten."""
    rng = np.random.default_rng(5)
    text = builders.header("float[N,3,4,4] x", "float[N,2] y") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1)
        b = PRelu (a, slope)
        c = Mul (b, scale)
        d = Dropout (c)
        e = Reshape (d, shape)
        y = Gemm <transB = 1> (e, w2)
    }"""
    model = builders.build(text, {
        "slope": rng.uniform(0, 0.3, (5, 1, 1)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, (1, 5, 1, 1)).astype(np.float32),
        "shape": np.array([-1, 80], np.int64), "w1": (5, 3, 3, 3), "w2": (2, 80),
    })
    model = builders.to_constant_nodes(model, {"w1", "w2"})
    (group,) = analyze(model).groups
    assert [p.op for p in group.passthrough] == ["PRelu", "Mul", "Dropout", "Reshape"]
    kept = (1, 3, 4)
    pruned = rewrite(model, [GroupPlan(group, kept)])
    onnx.checker.check_model(pruned, full_check=True)
    assert not pruned.graph.initializer or all(i.name in ("slope", "scale", "shape") for i in pruned.graph.initializer)
    feeds = random_feeds(model, 4)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(_masked_constants(model, kept), feeds)[0], rtol=1e-4, atol=1e-5)


def _masked_constants(model: onnx.ModelProto, kept) -> onnx.ModelProto:
    """Zero the Gemm weight columns of removed channels (the weight is a Constant node)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    node = next(n for n in copy.graph.node if n.output[0] == "w2")
    weight = onnx.numpy_helper.to_array(node.attribute[0].t).copy()
    removed = np.setdiff1d(np.arange(5), kept)
    weight[:, (removed[:, None] * 16 + np.arange(16)).ravel()] = 0
    node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(weight))
    return copy


def test_identity_wrapped_shared_initializer_is_read_and_replaced():
    """torch deduplicates equal initializers behind Identity nodes: each reader is pruned alone."""
    model = builders.gemm_gemm()
    weight = next(i for i in model.graph.initializer if i.name == "w2")
    model.graph.node.insert(0, onnx.helper.make_node("Identity", ["w2"], ["w2_view"]))
    model.graph.node[3].input[1] = "w2_view"  # Gemm_2 reads the weight through Identity
    onnx.checker.check_model(model)
    groups = analyze(model).groups
    assert [g.name for g in groups] == ["Gemm_1", "Gemm_3"]
    kept = (0, 5, 7)
    pruned = rewrite(model, [GroupPlan(groups[0], kept)])
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_feeds(model, 5)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(masked_via_identity(model, groups[0], kept), feeds)[0], rtol=1e-4, atol=1e-5)
    assert weight.name in {i.name for i in model.graph.initializer}


def masked_via_identity(model, group, kept):
    """masked() for a consumer whose weight sits behind an Identity: zero the initializer."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    init = next(i for i in copy.graph.initializer if i.name == "w2")
    weight = onnx.numpy_helper.to_array(init).copy()
    weight[:, np.setdiff1d(np.arange(group.channels), kept)] = 0
    init.CopyFrom(onnx.numpy_helper.from_array(weight, "w2"))
    return copy
