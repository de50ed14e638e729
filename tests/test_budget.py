"""Compression targets: the size model against real rewrites, grids, and the allocations."""

from __future__ import annotations


import numpy as np
import onnx
import pytest

import builders
from helpers import ARCH, MODELS
from onnx_subprune.analyze import analyze
from onnx_subprune.budget import (
    Limits, SizeModel, allocate_equal_loss, allocate_marginal, allocate_uniform, grid,
    monotone_envelope, round_count,
)
from onnx_subprune.errors import SubpruneError
from onnx_subprune.graph import load_model, name_nodes, read_constants
from onnx_subprune.metrics import count_macs, count_params
from onnx_subprune.ops import LAYERS
from onnx_subprune.pipeline import refitted_consumers
from onnx_subprune.rewrite import rewrite
from onnx_subprune.types import ConsumerUpdate, GroupPlan

BUILDERS = ["conv_bn_pool_conv", "conv_flatten_gemm", "gemm_gemm", "matmul_gelu_matmul", "residual_se_block",
            "grouped_bottleneck", "depthwise_multiplier", "chained_grouped", "grouped_residual",
            "concat_depthwise_multiplier"]
REFERENCE = ["lenet5", "mlp", "vgg_bn", "resnet_small"]
# coupled groups (residual, depthwise, SE, Concat, Constant-node weights); csp_split_concat is
# left out: a Split cuts a group in parts whose kept counts depend on the selection.
ARCHITECTURES = ["resnet_mixed", "mobilenetv2", "mobilenetv3_se", "densenet_block", "bert_layer", "bert_encoder",
                 "mobilenetv2_const", "densenet_block_const", "nhwc_cnn", "resnext_grouped",
                 "resnext_grouped_const"]


def _text_model(body: str, inputs: str, outputs: str, weights: dict) -> onnx.ModelProto:
    return builders.build(builders.header(inputs, outputs) + " {" + body + "}", weights)


def matmul_chain_without_bias() -> onnx.ModelProto:
    """MatMul -> Relu -> MatMul -> Relu -> MatMul, no bias anywhere: refit adds Add nodes."""
    return _text_model("""
        a = MatMul (x, w1)
        b = Relu (a)
        c = MatMul (b, w2)
        d = Relu (c)
        y = MatMul (d, w3)
    """, "float[N,6] x", "float[N,3] y", {"w1": (6, 10), "w2": (10, 8), "w3": (8, 3)})


def shared_scale_and_identity_weight() -> onnx.ModelProto:
    """A per-channel Mul constant read by two groups' paths, and a weight behind an Identity."""
    model = _text_model("""
        wi = Identity (w2)
        a = Gemm <transB = 1> (x, w1, b1)
        b = Mul (a, s)
        c = Relu (b)
        d = Gemm <transB = 1> (c, wi, b2)
        e = Mul (d, s)
        f = Relu (e)
        y = Gemm <transB = 1> (f, w3, b3)
    """, "float[N,5] x", "float[N,2] y", {
        "w1": (8, 5), "b1": (8,), "s": np.linspace(0.5, 1.5, 8).astype(np.float32),
        "w2": (8, 8), "b2": (8,), "w3": (2, 8), "b3": (2,)})
    return model


EXTRA = {"matmul_chain_without_bias": matmul_chain_without_bias,
         "shared_scale_and_identity_weight": shared_scale_and_identity_weight}


def _load(name: str) -> onnx.ModelProto:
    if name in REFERENCE:
        return load_model(MODELS / f"{name}.onnx")
    if name in EXTRA:
        return EXTRA[name]()
    if hasattr(builders, name):
        return getattr(builders, name)()
    return onnx.load(ARCH / f"{name}.onnx")


def _plans(model, groups, counts, rng, bias_shift: bool):
    """Random kept sets of the given sizes; with ``bias_shift`` every consumer whose input loses
    channels gets a non-zero bias shift, as the refit with bias compensation does (the others
    are left as they are: :func:`pipeline.refitted_consumers`)."""
    weights = read_constants(model, {c.weight for g in groups for c in g.consumers})
    touched = refitted_consumers(counts, groups)
    plans = []
    for group, k in zip(groups, counts):
        kept = tuple(sorted(rng.choice(group.channels, size=k, replace=False).tolist()))
        updates = ()
        if bias_shift:
            updates = tuple(
                ConsumerUpdate(c.node, None, np.full(LAYERS[c.op].matrix(c, weights[c.weight]).shape[1], 0.5, np.float32))
                for c in group.consumers if c.node in touched)
        plans.append(GroupPlan(group, kept, updates))
    return plans


@pytest.mark.parametrize("bias_shift", [False, True], ids=["no-new-bias", "new-bias"])
@pytest.mark.parametrize("name", BUILDERS + list(EXTRA) + REFERENCE + ARCHITECTURES)
def test_size_model_is_exact(name, bias_shift):
    """Predicted params and MACs equal count_params/count_macs of the rewritten model."""
    model = name_nodes(_load(name))
    groups = analyze(model).groups
    assert groups
    size = SizeModel(model, groups, refit=bias_shift, bias_compensation=bias_shift)
    assert (size.params_before, size.macs_before) == (count_params(model), count_macs(model))
    rng = np.random.default_rng(len(name))
    trials = [[g.channels for g in groups], [1 for _ in groups]]
    trials += [[int(rng.integers(1, g.channels + 1)) for g in groups] for _ in range(3)]
    for counts in trials:
        pruned = rewrite(model, _plans(model, groups, counts, rng, bias_shift))
        assert size.totals(counts) == (count_params(pruned), count_macs(pruned)), counts


def test_size_model_counts_new_biases():
    """Refit with bias compensation gives bias-less consumers a bias: the model counts it, for
    the consumers whose groups lose a channel only (the others are left as they are)."""
    model = name_nodes(matmul_chain_without_bias())
    groups = analyze(model).groups
    full = [g.channels for g in groups]
    plain = SizeModel(model, groups, refit=True, bias_compensation=False)
    biased = SizeModel(model, groups, refit=True, bias_compensation=True)
    assert plain.totals(full)[0] == biased.totals(full)[0] == count_params(model)
    assert [g.channels for g in groups] == [10, 8]
    # Adds after the 2nd MatMul (its 8 outputs, 7 of them kept) and the 3rd (3 outputs)
    assert biased.totals([9, 7])[0] == plain.totals([9, 7])[0] + 7 + 3
    assert biased.totals([10, 7])[0] == plain.totals([10, 7])[0] + 3  # the 2nd MatMul reads a full group


def test_group_totals_and_step():
    model = name_nodes(load_model(MODELS / "lenet5.onnx"))
    groups = analyze(model).groups
    size = SizeModel(model, groups)
    counts = [3, 8, 60, 42]
    # conv2 (group 1) owns conv2's weight and bias and fc1's weight (16 * 25 inputs per channel)
    params, _ = size.group_totals(counts, 1)
    assert params == 8 * 3 * 9 + 8 + 60 * 8 * 25
    delta = size.step(counts, 1, 9)
    assert delta[0] == 3 * 9 + 1 + 60 * 25
    moved = list(counts)
    moved[1] = 9
    assert size.totals(moved)[0] - size.totals(counts)[0] == delta[0]


# ------------------------------------------------------------------------------------------ grids


def test_grid_and_rounding():
    assert grid(10, 1).tolist() == list(range(1, 11))
    assert grid(10, 3).tolist() == list(range(3, 11))
    assert grid(40, 1, 8).tolist() == [8, 16, 24, 32, 40]
    assert grid(36, 3, 8).tolist() == [8, 16, 24, 32, 36]  # all channels always allowed
    assert grid(36, 17, 8).tolist() == [24, 32, 36]
    assert grid(6, 1, 8).tolist() == [1, 2, 3, 4, 5, 6]  # too small to round
    assert round_count(40, 13, 1, 8) == 16 and round_count(40, 11.9, 1, 8) == 8
    assert round_count(40, 12, 1, 8) == 16  # halves up


def test_monotone_envelope():
    assert monotone_envelope([0.5, 0.6, 0.3, 0.4, 0.0]).tolist() == [0.5, 0.5, 0.3, 0.3, 0.0]


# ------------------------------------------------------------------------------------------ allocation


def _setup(name, min_keep=1 / 16, round_to=1):
    model = name_nodes(_load(name))
    groups = analyze(model).groups
    size = SizeModel(model, groups)
    floors = [max(1, int(np.ceil(min_keep * g.channels - 1e-9))) for g in groups]
    grids = [grid(g.channels, f, round_to) for g, f in zip(groups, floors)]
    return size, grids


def _fake_losses(grids, seed=0):
    """Decreasing losses with different steepness per group (0 at n)."""
    rng = np.random.default_rng(seed)
    losses = []
    for values in grids:
        n, rate = values[-1], rng.uniform(1, 6)
        losses.append(lambda k, n=n, rate=rate: 0.0 if k >= n else float(np.exp(-rate * k / n)))
    return losses


def _assert_meets(size, grids, limits, counts):
    """On the grids, within the target, and no single further step fits (one step's worth)."""
    counts = np.asarray(counts)
    for values, k in zip(grids, counts):
        assert k in values
    assert limits.fits(size.totals(counts))
    for g, values in enumerate(grids):
        position = int(np.searchsorted(values, counts[g]))
        if position + 1 < len(values):
            bigger = counts.copy()
            bigger[g] = values[position + 1]
            assert not limits.fits(size.totals(bigger)), (g, counts)


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("name", ["lenet5", "mlp", "conv_bn_pool_conv", "residual_se_block", "mobilenetv2"])
@pytest.mark.parametrize("target", [0.9, 0.5, 0.25, 0.125])
def test_allocations_meet_params_target(name, target, round_to):
    size, grids = _setup(name, round_to=round_to)
    limits = Limits.from_ratios(size, target, None)
    try:
        allocations = [allocate_uniform(size, grids, limits),
                       allocate_equal_loss(size, grids, _fake_losses(grids), limits),
                       allocate_marginal(size, grids, _fake_losses(grids), limits)]
    except SubpruneError as error:  # tiny models cannot go below their unprunable layers
        assert "cannot be met" in str(error)
        return
    for allocation in allocations:
        _assert_meets(size, grids, limits, allocation.counts)
        assert allocation.params <= target * size.params_before
        assert (allocation.params, allocation.macs) == size.totals(allocation.counts)


@pytest.mark.parametrize("name", ["lenet5", "vgg_bn", "resnet_small"])
def test_allocations_meet_flops_and_both_targets(name):
    size, grids = _setup(name)
    for params, macs in ((None, 0.3), (0.4, 0.5)):
        limits = Limits.from_ratios(size, params, macs)
        for allocation in (allocate_uniform(size, grids, limits),
                           allocate_equal_loss(size, grids, _fake_losses(grids, 1), limits)):
            _assert_meets(size, grids, limits, allocation.counts)
            assert allocation.macs <= macs * size.macs_before


def test_uniform_is_one_fraction_up_to_the_last_steps():
    size, grids = _setup("vgg_bn")
    allocation = allocate_uniform(size, grids, Limits.from_ratios(size, 0.25, None))
    fractions = np.array(allocation.counts) / size.channels
    assert fractions.max() - fractions.min() < 0.1
    assert 0 < allocation.fraction < 1


def test_equal_loss_equalizes_and_fills():
    size, grids = _setup("lenet5")
    losses = _fake_losses(grids, 3)
    limits = Limits.from_ratios(size, 0.3, None)
    allocation = allocate_equal_loss(size, grids, losses, limits)
    # every group ends at or below the tolerated loss (the fill only lowers losses)
    assert all(losses[g](k) <= allocation.tolerance + 1e-12 for g, k in enumerate(allocation.counts))
    assert allocation.tolerance > 0


def test_unreachable_target_is_a_user_error():
    size, grids = _setup("lenet5")
    with pytest.raises(SubpruneError, match="cannot be met"):
        allocate_uniform(size, grids, Limits.from_ratios(size, 0.001, None))
    with pytest.raises(SubpruneError, match="minimum kept fraction"):
        allocate_equal_loss(size, grids, _fake_losses(grids), Limits.from_ratios(size, 0.001, None))


def test_allocation_is_deterministic():
    size, grids = _setup("vgg_bn")
    limits = Limits.from_ratios(size, 0.2, None)
    first = allocate_equal_loss(size, grids, _fake_losses(grids, 5), limits)
    second = allocate_equal_loss(size, grids, _fake_losses(grids, 5), limits)
    assert first == second


def _branching() -> onnx.ModelProto:
    """x [N,10] -> Gemm -> Relu -> Gemm -> c [N,3], then If (flag, a scalar input, as silero-vad's
    sample rate): y = c + w3 or c - w3, w3 an outer initializer only the branches read."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,), "w3": (3,)}
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in weights.items()]

    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["c", "w3"], [f"{op}_out"])], f"{op}_branch", [],
                                 [helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, None)])

    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["a"], transB=1, name="g1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["c"], transB=1, name="g2"),
             helper.make_node("If", ["flag"], ["y"], then_branch=branch("Add"), else_branch=branch("Sub"), name="if")]
    graph = helper.make_graph(nodes, "branching",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10]),
                               helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_weights_read_only_inside_if_branches_are_counted_and_stay_in_the_main_graph():
    """silero-vad keeps its LSTM weights outside the If branches that read them: the size model
    counts them (else a params target looks met with nothing pruned), and the rewrite keeps them
    in the main graph (onnx-graphsurgeon would copy them into every branch)."""
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.pipeline import prune

    model = _branching()
    assert count_params(model) == 6 * 10 + 6 + 3 * 6 + 3 + 3
    x = np.random.default_rng(1).normal(size=(24, 10)).astype(np.float32)
    result = prune(model, {"x": x, "flag": np.array(True)}, PruneConfig(keep=0.5, device="cpu"))
    pruned = result.model
    assert count_params(pruned) == result.report.params["after"] == 3 * 10 + 3 + 3 * 3 + 3 + 3
    assert "w3" in {init.name for init in pruned.graph.initializer}
    assert all(len(attr.g.initializer) == 0 for node in pruned.graph.node for attr in node.attribute
               if attr.type == onnx.AttributeProto.GRAPH)
