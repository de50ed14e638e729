"""Pruning to a params/FLOPs target through the pipeline and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest

import builders
from helpers import MODELS, invoke, random_feeds
from onnx_subprune.analyze import analyze
from onnx_subprune.budget import Limits, SizeModel, grid
from onnx_subprune.calibrate import capture_stats, consumer_weights, split_samples
from onnx_subprune.config import PruneConfig
from onnx_subprune.errors import SubpruneError
from onnx_subprune.graph import load_model, name_nodes
from onnx_subprune.pipeline import prune
from onnx_subprune.select import select_group
from onnx_subprune import pipeline, runtime
from onnx_subprune.sensitivity import ranking

CPU = dict(device="cpu")


def _check_met(model, report, config: PruneConfig):
    """Achieved <= target, equal to the size model's prediction, and no one more grid step fits."""
    model = name_nodes(model)
    groups = analyze(model).groups
    size = SizeModel(model, groups, refit=config.refit, bias_compensation=config.bias_compensation)
    counts = np.array([g.k for g in report.groups])
    achieved = report.target.achieved
    assert size.totals(counts) == (report.params["after"], report.macs["after"])
    if config.target_params is not None:
        assert achieved["params"] <= config.target_params
    if config.target_flops is not None:
        assert achieved["macs"] <= config.target_flops
    limits = Limits.from_ratios(size, config.target_params, config.target_flops)
    for index, group in enumerate(groups):
        values = grid(group.channels, config.min_count(group.channels), config.count_step(group.channels))
        assert counts[index] in values
        position = int(np.searchsorted(values, counts[index]))
        if position + 1 < len(values):
            bigger = counts.copy()
            bigger[index] = values[position + 1]
            assert not limits.fits(size.totals(bigger)), (index, counts)


@pytest.mark.parametrize("allocation", ["sensitivity", "uniform", "marginal"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_lenet_params_target_met(lenet, allocation, round_to):
    model, feeds = lenet
    config = PruneConfig(target_params=0.25, allocation=allocation, round_to=round_to, **CPU)
    report = prune(model, feeds, config).report
    _check_met(model, report, config)
    assert report.keep is None
    target = report.target
    assert target.params == 0.25 and target.round_to == round_to
    if allocation == "uniform":
        assert target.allocation == "uniform" and target.compared is None
    elif target.compared is not None:  # checked against uniform: the lower output error is written
        assert set(target.compared) == {allocation, "uniform"}
        assert target.allocation == min(target.compared, key=target.compared.get)
        assert report.output_error == target.compared[target.allocation]
    for group in report.groups:
        assert group.k == len(group.kept) and group.fraction == group.k / group.channels
        assert group.params > 0 and group.macs > 0
        assert (group.predicted_loss is None) == (allocation == "uniform")
    if target.allocation == "sensitivity":
        assert target.tolerated_loss > 0
        assert all(len(g.curve["k"]) == len(g.curve["error"]) > 0 for g in report.groups)
    assert report.seconds["allocation"] >= 0


def test_measured_allocation_is_checked_against_uniform_on_the_whole_model(lenet, monkeypatch):
    """Groups measured alone need not add up: the model is also pruned to the uniform
    allocation and the lower output error is written; equal counts are pruned once."""
    model, feeds = lenet
    config = PruneConfig(target_params=0.25, allocation="sensitivity", **CPU)
    equal_loss = pipeline.allocate_equal_loss

    def lopsided(size, grids, losses, limits):  # the budget taken from the first group alone
        fair = equal_loss(size, grids, losses, limits)
        counts = list(fair.counts)
        counts[0] = int(grids[0][0])
        return replace(fair, counts=tuple(counts))

    monkeypatch.setattr(pipeline, "allocate_equal_loss", lopsided)
    report = prune(model, feeds, config).report
    assert report.target.allocation == "uniform"
    assert report.target.compared["uniform"] == report.output_error < report.target.compared["sensitivity"]
    assert report.groups[0].k > report.groups[0].channels * 0.0625

    monkeypatch.setattr(pipeline, "allocate_equal_loss", lambda size, grids, losses, limits: replace(
        pipeline.allocate_uniform(size, grids, limits), tolerance=0.5))
    calls = []
    pruned = pipeline._pruned
    monkeypatch.setattr(pipeline, "_pruned", lambda *a: calls.append(1) or pruned(*a))
    report = prune(model, feeds, config).report
    assert report.target.allocation == "sensitivity" and report.target.compared is None and len(calls) == 1


def test_allocation_check_with_few_samples_compares_fits_on_a_fold_they_left_out(lenet, monkeypatch):
    """Below the holdout threshold every sample is in the fit, where a refit that overfits looks
    good: both allocations are fitted without the first cross-validation fold and compared on it;
    the one written is then fitted on every sample, as a plain prune at its counts would be."""
    model, feeds = lenet
    feeds = {name: array[:64] for name, array in feeds.items()}
    config = PruneConfig(target_params=0.25, allocation="sensitivity", **CPU)
    equal_loss = pipeline.allocate_equal_loss
    monkeypatch.setattr(pipeline, "allocate_equal_loss", lambda size, grids, losses, limits: replace(
        equal_loss(size, grids, losses, limits),
        counts=(int(grids[0][0]),) + equal_loss(size, grids, losses, limits).counts[1:]))
    splits = []
    pruned = pipeline._pruned
    monkeypatch.setattr(pipeline, "_pruned", lambda run, *a, **k: splits.append(run.split) or pruned(run, *a, **k))
    result = prune(model, feeds, config)
    target = result.report.target
    fold = split_samples(64, "auto", config.seed).folds[0]
    assert "held-out calibration samples" in target.compared_on and f"{len(fold)} " in target.compared_on
    assert target.allocation == min(target.compared, key=target.compared.get)
    assert len(splits) == 3
    for checked in splits[:2]:  # fitted without the fold, which keeps its CV folds apart
        assert not np.isin(fold, checked.calibration).any() and len(checked.calibration) == 64 - len(fold)
        assert len(checked.folds) == 3 and len(checked.holdout) == 0
    assert len(splits[2].calibration) == 64
    counts = [g.k for g in result.report.groups]
    direct = prune(model, feeds, PruneConfig(**CPU), counts=counts)
    assert direct.report.output_error == pytest.approx(result.report.output_error, rel=1e-9)
    for mine, theirs in zip(result.model.graph.initializer, direct.model.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(mine), onnx.numpy_helper.to_array(theirs))


@pytest.mark.parametrize("name", ["gemm_gemm", "conv_flatten_gemm", "residual_se_block"])
def test_builder_models_flops_target_met(name):
    model = getattr(builders, name)()
    feeds = random_feeds(model, 60)
    config = PruneConfig(target_flops=0.6, **CPU)
    _check_met(model, prune(model, feeds, config).report, config)


def test_coupled_groups_both_targets_met():
    model = onnx.load(MODELS / "arch" / "mobilenetv2.onnx")
    with np.load(MODELS / "arch" / "digits_calib_small.npz") as archive:
        feeds = {"input": archive["input"][:64]}
    config = PruneConfig(target_params=0.5, target_flops=0.7, round_to=4, **CPU)
    _check_met(model, prune(model, feeds, config).report, config)


@pytest.mark.parametrize("name", ["csp_split_concat", "densenet_block"])
def test_split_and_concat_groups_target_met(name):
    """A Split cuts a group into pieces pruned on their own, so the count is exact there too."""
    model = onnx.load(MODELS / "arch" / f"{name}.onnx")
    with np.load(MODELS / "arch" / "digits_calib_small.npz") as archive:
        feeds = {"input": archive["input"][:64]}
    config = PruneConfig(target_params=0.5, **CPU)
    _check_met(model, prune(model, feeds, config).report, config)


@pytest.mark.parametrize("builder", ["csp_split_concat", "csp_residual", "dense_block"])
def test_split_concat_builders_target_met(builder):
    model = getattr(builders, builder)()
    config = PruneConfig(target_params=0.6, round_to=2, **CPU)
    _check_met(model, prune(model, random_feeds(model, 60), config).report, config)


def test_mlp_uniform_flops_target_with_min_keep():
    model = load_model(MODELS / "mlp.onnx")
    feeds = {"input": np.load(MODELS / "digits_calib.npy")[:96]}
    config = PruneConfig(target_flops=0.3, allocation="uniform", min_keep=0.25, **CPU)
    report = prune(model, feeds, config).report
    _check_met(model, report, config)
    assert all(g.k >= g.channels / 4 for g in report.groups)


def test_same_seed_same_model(lenet):
    model, feeds = lenet
    config = PruneConfig(target_params=0.2, seed=3, **CPU)
    first, second = prune(model, feeds, config), prune(model, feeds, config)
    assert first.model.SerializeToString() == second.model.SerializeToString()
    assert [g.curve for g in first.report.groups] == [g.curve for g in second.report.groups]


def test_curves_are_nested_greedy_prefixes(lenet):
    """The sensitivity ranking is the greedy order: the kept set at k is the one the greedy
    picks for k, and it is contained in the set at k + 1."""
    model, feeds = lenet
    model = name_nodes(model)
    groups = analyze(model).groups
    config = PruneConfig(target_params=0.25, **CPU)
    split = split_samples(128, config.holdout, config.seed)
    inputs = tuple(sorted({c.input for g in groups for c in g.consumers}))
    session = runtime.session(model, ["CPUExecutionProvider"], inputs)
    stats = capture_stats(groups, session, None, consumer_weights(model, groups), feeds, split, 32)
    for group, group_stats in zip(groups[:3], stats[:3]):
        order, explained = ranking(group, group_stats, config)
        assert sorted(order.tolist()) == list(range(group.channels))
        assert np.all(np.diff(explained) >= -1e-12)
        for k in sorted({1, 2, group.channels // 3, group.channels // 2, group.channels - 1}):
            chosen = select_group(group_stats.calibration, k, method="asym", ridge=config.ridge)
            assert chosen.kept.tolist() == sorted(order[:k].tolist())
            assert set(order[:k]) <= set(order[: k + 1])


def test_pruned_first_group_is_nested_in_k(lenet):
    """The first group's statistics come from the original model: counts k and k + 1 keep
    nested sets through the whole pipeline."""
    model, feeds = lenet
    first = {k: set(prune(model, feeds, PruneConfig(**CPU), counts=[k, 8, 60, 42]).report.groups[0].kept)
             for k in (2, 3, 4)}
    assert first[2] <= first[3] <= first[4]


def test_explicit_counts_are_checked(lenet):
    model, feeds = lenet
    with pytest.raises(SubpruneError, match="kept counts"):
        prune(model, feeds, PruneConfig(**CPU), counts=[1, 2])
    with pytest.raises(SubpruneError, match="not in"):
        prune(model, feeds, PruneConfig(**CPU), counts=[7, 8, 60, 42])


@pytest.mark.parametrize("fields, message", [
    (dict(target_params=0.0), "target_params"), (dict(target_flops=1.5), "target_flops"),
    (dict(target_params=float("nan")), "target_params"), (dict(allocation="greedy"), "allocation"),
    (dict(min_keep=0.0), "min_keep"), (dict(round_to=0), "round_to"),
])
def test_config_checks(fields, message):
    with pytest.raises(SubpruneError, match=message):
        PruneConfig(**fields)


def test_keep_path_floor_and_rounding():
    assert PruneConfig(keep=0.05).kept_count(100) == 5  # no floor without a target
    assert PruneConfig(keep=0.05, min_keep=0.1).kept_count(100) == 10
    assert PruneConfig(keep=0.5, round_to=8).kept_count(100) == 48
    assert PruneConfig(keep=0.5, round_to=8).kept_count(6) == 3
    assert PruneConfig(target_params=0.5).min_count(100) == 7  # ceil(100 / 16)


# ---------------------------------------------------------------------------------------------- CLI


def _one_line_error(result, contains: str, code: int = 1):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    if code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert contains in result.stderr


def test_cli_prune_target_text_and_json(calib64, tmp_path):
    output = tmp_path / "p.onnx"
    result = invoke("prune", MODELS / "lenet5.onnx", "-o", output, "--calib", calib64,
                    "--target-params", "0.25", "--round-to", "4", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert ("sensitivity allocation" in out or "uniform allocation" in out) and "target 25.00%" in out
    assert "allocation checked on the whole pruned model: output error sensitivity" in out
    assert "pred. loss" in out and "/fc1/Gemm" in out
    result = invoke("prune", MODELS / "lenet5.onnx", "-o", output, "--calib", calib64, "--json",
                    "--target-flops", "0.5", "--allocation", "uniform", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target"]["flops"] == 0.5 and report["target"]["params"] is None
    assert report["target"]["achieved"]["macs"] <= 0.5
    assert report["macs"]["after"] / report["macs"]["before"] == report["target"]["achieved"]["macs"]


def test_cli_prune_sensitivity_samples(calib64, tmp_path, monkeypatch):
    """--sensitivity-samples N: the curves are measured on the first N samples only."""
    measured = []
    curves = pipeline.measure_curves
    monkeypatch.setattr(pipeline, "measure_curves", lambda model, groups, stats, feeds, *a: measured.append(
        len(next(iter(feeds.values())))) or curves(model, groups, stats, feeds, *a))
    output = tmp_path / "p.onnx"
    for extra, samples in (([], 64), (["--sensitivity-samples", "5"], 5)):
        result = invoke("prune", MODELS / "lenet5.onnx", "-o", output, "--calib", calib64, "--target-params", "0.25",
                        *extra, "--device", "cpu", "--quiet")
        assert result.exit_code == 0, result.stderr
        assert measured.pop() == samples


@pytest.mark.parametrize("extra, contains, code", [
    (["--keep", "0.5", "--target-params", "0.5"], "cannot be combined", 2),
    (["--allocation", "uniform"], "needs --target-params", 2),
    (["--target-params", "0"], "--target-params must be in (0, 1]", 1),
    (["--target-flops", "2"], "--target-flops must be in (0, 1]", 1),
    (["--target-params", "0.5", "--min-keep", "1.5"], "--min-keep", 1),
    (["--target-params", "0.5", "--round-to", "0"], "--round-to", 2),
    (["--target-params", "0.5", "--sensitivity-samples", "0"], "--sensitivity-samples", 2),
    (["--target-params", "0.001"], "cannot be met", 1),
])
def test_cli_prune_target_errors(calib64, tmp_path, extra, contains, code):
    output = tmp_path / "p.onnx"
    result = invoke("prune", MODELS / "lenet5.onnx", "-o", output, "--calib", calib64, *extra,
                    "--device", "cpu", "--quiet")
    _one_line_error(result, contains, code)
    assert not output.exists()


def test_macs_are_counted_at_the_calibration_input_size():
    """Symbolic H and W are pinned to the calibration arrays' size for the size model and the
    report, so a FLOPs target weighs each layer by its real output positions."""
    import builders
    from onnx_subprune.graph import pin_input_dims
    from onnx_subprune.metrics import count_macs

    text = builders.header("float[N,3,H,W] x", "float[N,4] y") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        b = Relu (a)
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (b, w2, b2)
        d = Relu (c)
        e = GlobalAveragePool (d)
        f = Flatten (e)
        y = Gemm <transB = 1> (f, w3, b3)
    }"""
    model = builders.build(text, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (6, 8, 3, 3), "b2": (6,), "w3": (4, 6), "b3": (4,)})
    x = np.random.default_rng(0).normal(size=(20, 3, 10, 12)).astype(np.float32)
    pinned = pin_input_dims(model, {"x": x})
    assert [d.dim_value for d in pinned.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 10, 12]
    assert count_macs(pinned) == 120 * (8 * 27 + 6 * 72) + 24
    result = prune(model, {"x": x}, PruneConfig(target_flops=0.5, allocation="uniform", device="cpu"))
    assert result.report.macs["before"] == count_macs(pinned)
    assert result.report.macs["after"] <= 0.5 * count_macs(pinned)


def test_default_rounding_under_a_target_only_in_large_groups():
    """Under a target, groups of 32 channels or more keep multiples of 8 unless --round-to says
    otherwise; with --keep, nothing is rounded by default."""
    target = PruneConfig(target_params=0.5)
    assert [target.count_step(n) for n in (16, 31, 32, 512)] == [1, 1, 8, 8]
    assert PruneConfig(target_params=0.5, round_to=1).count_step(512) == 1
    assert PruneConfig(target_params=0.5, round_to=4).count_step(16) == 4
    assert PruneConfig(keep=0.5).count_step(512) == 1 and PruneConfig(keep=0.5).kept_count(100) == 50


def test_size_model_disagreeing_with_the_written_model_is_an_internal_error(lenet, monkeypatch):
    """The size model predicts exactly what the rewrite writes; a disagreement is a bug, raised
    as InternalError rather than logged."""
    from onnx_subprune.budget import SizeModel
    from onnx_subprune.errors import InternalError

    model, feeds = lenet
    totals = SizeModel.totals
    monkeypatch.setattr(SizeModel, "totals", lambda self, k: tuple(v + 1 for v in totals(self, k)))
    with pytest.raises(InternalError, match="size model predicted"):
        prune(model, feeds, PruneConfig(keep=0.5, **CPU))
