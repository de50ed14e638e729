"""A group pruned by masking its consumers' input channels (onnx_subprune/masked.py, one session
for all groups) computes what the rewritten model computes, on every test architecture, with
and without refit, in batches that do not divide the samples; with no group masked, the original."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import run
from onnx_subprune import runtime
from onnx_subprune.analyze import analyze
from onnx_subprune.calibrate import capture_stats, consumer_weights, split_samples
from onnx_subprune.config import PruneConfig
from onnx_subprune.graph import prepare
from onnx_subprune.masked import MaskedRunner
from onnx_subprune.rewrite import rewrite
from onnx_subprune.sensitivity import group_plan, ranking
from test_architectures import MODELS, _feeds

ARCH = Path(__file__).resolve().parent.parent / "models" / "arch"


@pytest.mark.parametrize("refit", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_masked_group_equals_the_rewritten_model(name, refit):
    model = prepare(onnx.load(ARCH / f"{name}.onnx"))
    feeds = _feeds(name, 12)
    groups = analyze(model).groups
    config = PruneConfig(refit=refit, holdout=0.0, device="cpu")
    session = runtime.session(model, ["CPUExecutionProvider"], tuple(sorted({c.input for g in groups for c in g.consumers})))
    stats = capture_stats(groups, session, None, consumer_weights(model, groups), feeds, split_samples(12, 0.0, 0), 4)
    runner = MaskedRunner(model, groups, ["CPUExecutionProvider"])
    _assert_same(runner.outputs(feeds, 5), run(model, feeds), f"{name} original")
    for group, group_stats in zip(groups, stats):
        order, _ = ranking(group, group_stats, config)
        plan = group_plan(group, group_stats, order, max(1, group.channels // 3), config)
        _assert_same(runner.outputs(feeds, 5, plan), run(rewrite(model, [plan]), feeds), f"{name} {group.name}")


def _assert_same(got: dict, want: list, label: str) -> None:
    assert len(got) == len(want), label
    for value, expected in zip(got.values(), want):
        scale = max(float(np.abs(expected).max()), 1e-6)
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=label)


def test_masked_runner_pads_a_fixed_batch():
    """A model fixing its batch at 4, fed 6 samples in batches of 4: the last batch is padded
    and cut back, the weights fed as inputs are not."""
    model = prepare(onnx.load(ARCH / "resnet_mixed.onnx"))
    feeds = _feeds("resnet_mixed", 6)
    want = run(model, feeds)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    runner = MaskedRunner(model, analyze(model).groups, ["CPUExecutionProvider"])
    _assert_same(runner.outputs(feeds, 4), want, "fixed batch 4")


@pytest.mark.parametrize("name", MODELS)
def test_outputs_each_runs_only_below_the_consumers_and_equals_the_whole_model(name):
    """The sensitivity curves' runs: the part above a group's consumers once per batch, the part
    below once per plan; the outputs equal the whole masked model's, for every group."""
    model = prepare(onnx.load(ARCH / f"{name}.onnx"))
    feeds = _feeds(name, 10)
    groups = analyze(model).groups
    config = PruneConfig(holdout=0.0, device="cpu")
    session = runtime.session(model, ["CPUExecutionProvider"], tuple(sorted({c.input for g in groups for c in g.consumers})))
    stats = capture_stats(groups, session, None, consumer_weights(model, groups), feeds, split_samples(10, 0.0, 0), 4)
    for group, group_stats in zip(groups, stats):
        order, _ = ranking(group, group_stats, config)
        plans = [group_plan(group, group_stats, order, k, config) for k in {1, max(1, group.channels // 2)}]
        runner = MaskedRunner(model, [group], ["CPUExecutionProvider"])
        for each, plan in zip(runner.outputs_each(feeds, 4, plans), plans):
            whole = runner.outputs(feeds, 4, plan)
            assert list(each) == list(whole), f"{name} {group.name}"
            _assert_same(each, list(whole.values()), f"{name} {group.name}")


def test_outputs_each_takes_the_outputs_a_mask_does_not_reach_from_above():
    """Two outputs, one below the group's consumer and one beside it: the second comes from the
    part above, in the model's output order."""
    import builders

    text = builders.header("float[N,10] x", "float[N,4] side, float[N,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
        side = Gemm <transB = 1> (x, w3, b3)
    }"""
    model = prepare(builders.build(text, {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,), "w3": (4, 10),
                                          "b3": (4,)}))
    feeds = {"x": np.random.default_rng(0).normal(size=(7, 10)).astype(np.float32)}
    group = next(g for g in analyze(model).groups if g.consumers[0].node.endswith("y") or g.channels == 6)
    session = runtime.session(model, ["CPUExecutionProvider"], (group.consumers[0].input,))
    stats = capture_stats([group], session, None, consumer_weights(model, [group]), feeds, split_samples(7, 0.0, 0), 4)
    config = PruneConfig(holdout=0.0, device="cpu")
    order, _ = ranking(group, stats[0], config)
    plan = group_plan(group, stats[0], order, 2, config)
    runner = MaskedRunner(model, [group], ["CPUExecutionProvider"])
    (each,) = runner.outputs_each(feeds, 4, [plan])
    whole = runner.outputs(feeds, 4, plan)
    assert list(each) == ["side", "y"] == list(whole)
    _assert_same(each, list(whole.values()), "two outputs")
