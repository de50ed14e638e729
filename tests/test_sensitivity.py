"""Per-group sensitivity curves: the proxy between measured points, the command, the plot, and
(slow) sensitivity allocation against uniform allocation on the digits models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnx_subprune.analyze import analyze
from onnx_subprune.calibrate import capture_stats, consumer_weights, split_samples
from onnx_subprune.config import PruneConfig
from onnx_subprune.data import check_inputs, load_arrays
from onnx_subprune.graph import load_model, name_nodes
from onnx_subprune.pipeline import prune, sensitivity
from onnx_subprune.rewrite import rewrite
from onnx_subprune.sensitivity import Curve, group_plan, measure_curves, measure_points, output_error
from onnx_subprune.verify import accuracy, predict
from onnx_subprune import runtime

from helpers import MODELS, block_import, invoke

CPU = ["CPUExecutionProvider"]


def test_measure_points():
    assert measure_points(120, 8, (1 / 8, 1 / 4, 1 / 2, 3 / 4)) == (8, 15, 30, 60, 90)
    assert measure_points(6, 1, (1 / 8, 1 / 4, 1 / 2, 3 / 4)) == (1, 2, 3, 5)
    assert measure_points(2, 1, (0.5, 0.75)) == (1,)


def test_curve_loss_interpolates_between_points():
    explained = np.concatenate([[0.0], 1 - np.exp(-np.arange(1, 11) / 3)])
    explained[-1] = 1.0
    curve = Curve("g", 10, np.arange(10), explained, (2, 6), (0.4, 0.1))
    assert curve.loss(2) == 0.4 and curve.loss(6) == 0.1 and curve.loss(10) == 0.0
    values = [curve.loss(k) for k in range(1, 11)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    # no greedy shape (a baseline ranking): log-linear between the points, flat outside
    flat = Curve("g", 10, np.arange(10), None, (2, 6), (0.4, 0.1))
    assert [flat.loss(k) for k in (4, 1, 8)] == pytest.approx([0.2, 0.4, 0.1])


@pytest.fixture(scope="module")
def mlp_curves():
    model = name_nodes(load_model(MODELS / "mlp.onnx"))
    feeds = {"input": np.load(MODELS / "digits_calib.npy")[:256]}
    config = PruneConfig(target_params=0.25, device="cpu")
    groups = analyze(model).groups
    split = split_samples(256, config.holdout, config.seed)
    inputs = tuple(sorted({c.input for g in groups for c in g.consumers}))
    session = runtime.session(model, CPU, inputs)
    stats = capture_stats(groups, session, None, consumer_weights(model, groups), feeds, split, 64)
    held = {k: v[split.holdout] for k, v in feeds.items()}
    curves = measure_curves(model, groups, stats, held, CPU, 64,
                            [config.min_count(g.channels) for g in groups], config)
    return model, groups, stats, held, curves, config


def test_proxy_matches_measured_error_between_points(mlp_curves):
    """Between the measured counts the greedy-shaped proxy predicts the real output error of
    the model with that group alone pruned within 25%."""
    model, groups, stats, held, curves, config = mlp_curves
    reference = predict(model, held, CPU, 64)
    for group, group_stats, curve in zip(groups, stats, curves):
        n = group.channels
        for k in (n // 5, n // 3, 2 * n // 3):
            assert k not in curve.points
            pruned = rewrite(model, [group_plan(group, group_stats, curve.order, k, config)])
            actual = output_error(reference, predict(pruned, held, CPU, 64))
            assert curve.loss(k) == pytest.approx(actual, rel=0.25), (group.name, k)


def test_measured_errors_fall_with_k(mlp_curves):
    *_, curves, _ = mlp_curves
    for curve in curves:
        assert list(curve.errors) == sorted(curve.errors, reverse=True)
        assert curve.errors[0] < 1


def test_sensitivity_report():
    model = load_model(MODELS / "lenet5.onnx")
    feeds = check_inputs(load_arrays(MODELS / "digits_calib.npz"), model, "calib")
    feeds = {k: v[:160] for k, v in feeds.items()}
    report, curves = sensitivity(model, feeds, PruneConfig(min_keep=1 / 16, device="cpu"))
    assert report.fractions == [1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4]
    assert report.samples["measured"] == 32 and report.samples["measured_on"] == "held-out"
    assert [g["producer"] for g in report.groups] == [c.group for c in curves]
    for group in report.groups:
        assert len(group["by_fraction"]) == 5
        assert group["by_fraction"] == sorted(group["by_fraction"], reverse=True)
        assert len(group["curve"]["loss"]) == group["channels"]


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sens") / "calib.npz"
    np.savez(path, input=np.load(MODELS / "digits_calib.npz")["input"][:96])
    return path


def test_cli_sensitivity_text_and_json(calib):
    result = invoke("sensitivity", MODELS / "lenet5.onnx", "--calib", calib, "--device", "cpu", "--quiet",
                    "--holdout", "0.2")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("relative output error with one group pruned (19 held-out samples)")
    assert lines[1].split()[2:] == ["1/16", "1/8", "1/4", "1/2", "3/4"]
    assert len(lines) == 2 + 4 and lines[3].split()[:2] == ["/conv2/Conv", "16"]
    result = invoke("sensitivity", MODELS / "lenet5.onnx", "--calib", calib, "--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # holdout auto: 96 samples, none held out
    assert report["samples"]["measured_on"] == "calibration" and report["samples"]["holdout"] == 0
    assert [g["channels"] for g in report["groups"]] == [6, 16, 120, 84]
    assert all(p["error"] >= 0 for g in report["groups"] for p in g["points"])


def test_cli_sensitivity_help():
    result = invoke("sensitivity", "--help")
    assert result.exit_code == 0 and "Example" in result.stdout and "onnx-subprune sensitivity" in result.stdout


def test_cli_plot_without_matplotlib(calib, tmp_path, monkeypatch):
    block_import(monkeypatch, "matplotlib")
    plot = tmp_path / "s.png"
    result = invoke("sensitivity", MODELS / "lenet5.onnx", "--calib", calib, "--device", "cpu", "--plot", plot)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: plotting needs matplotlib, which is not installed: pip install 'onnx-subprune[plot]'"]
    assert not plot.exists()


def test_cli_plot(calib, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "s.png"
    result = invoke("sensitivity", MODELS / "lenet5.onnx", "--calib", calib, "--device", "cpu", "--plot", plot, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {plot}" in result.stdout


# ------------------------------------------------------------------------------------------ slow


def _digits(name: str):
    model = load_model(MODELS / f"{name}.onnx")
    feeds = check_inputs(load_arrays(MODELS / "digits_calib.npz"), model, "calib")
    with np.load(MODELS / "digits_test.npz") as test:
        return model, feeds, test["input"], test["label"]


@pytest.mark.slow
@pytest.mark.parametrize("name, target", [("lenet5", 1 / 16), ("vgg_bn", 1 / 8), ("vgg_bn", 1 / 16)])
def test_sensitivity_beats_uniform_on_digits(name, target):
    """Same params target: the sensitivity allocation is at least as accurate on the test set and
    closer to the original model's logits than one keep fraction for every group."""
    model, feeds, images, labels = _digits(name)
    reference = predict(model, {"input": images}, CPU, 64)
    results = {}
    for allocation in ("uniform", "sensitivity"):
        pruned = prune(model, feeds, PruneConfig(target_params=target, allocation=allocation, device="cpu"))
        assert pruned.report.target.achieved["params"] <= target
        logits = predict(pruned.model, {"input": images}, CPU, 64)
        results[allocation] = (accuracy(logits["logits"], labels), output_error(reference, logits))
    assert results["sensitivity"][0] >= results["uniform"][0], results
    assert results["sensitivity"][1] < results["uniform"][1], results
