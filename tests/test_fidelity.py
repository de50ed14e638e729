"""Output fidelity: the relative error, and the channel-balanced error of mixed-scale outputs."""

import numpy as np
import pytest

from onnx_subprune.report import PruneReport
from onnx_subprune.verify import balanced_error, fidelity, mixed_scale, output_error


def _detector_output(rng, samples=4, anchors=50):
    """(samples, 4 + 3, anchors): box coordinates in pixels next to 0-1 class scores."""
    boxes = rng.uniform(0, 320, (samples, 4, anchors))
    scores = rng.uniform(0, 1, (samples, 3, anchors)) ** 4
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def test_a_destroyed_score_channel_is_not_hidden_by_large_box_channels():
    rng = np.random.default_rng(0)
    reference = _detector_output(rng)
    candidate = reference.copy()
    candidate[:, 4:] = 0.0  # every class score lost, boxes intact
    entry = fidelity({"out": reference}, {"out": candidate})["out"]
    assert entry["relative_error"] < 0.01
    assert entry["balanced_error"] == pytest.approx(np.sqrt(3 / 7), rel=1e-6)  # 3 of 7 channels at 1.0
    assert output_error(entry) == entry["balanced_error"]
    assert mixed_scale({"out": entry}) == ["out"]


def test_balanced_error_is_per_channel_relative_error_rms():
    rng = np.random.default_rng(1)
    reference = _detector_output(rng).astype(np.float64)
    candidate = reference + 0.01 * rng.standard_normal(reference.shape)
    per_channel = [np.linalg.norm(candidate[:, j] - reference[:, j]) / np.linalg.norm(reference[:, j])
                   for j in range(reference.shape[1])]
    assert balanced_error(reference, candidate) == pytest.approx(np.sqrt(np.mean(np.square(per_channel))))


def test_outputs_of_one_scale_keep_the_plain_relative_error():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((4, 8, 5, 5)).astype(np.float32)
    logits = rng.standard_normal((4, 10)).astype(np.float32)
    result = fidelity({"f": features, "l": logits}, {"f": features * 1.1, "l": logits * 0.9})
    assert "balanced_error" not in result["f"] and "balanced_error" not in result["l"]
    assert output_error(result["f"]) == result["f"]["relative_error"]
    assert balanced_error(features, features) is None


def test_the_large_error_warning_names_the_mixed_scale_output():
    outputs = {"output0": {"relative_error": 0.016, "cosine": 0.99, "balanced_error": 0.79}}
    report = PruneReport(method="asym", keep=0.5, refit=True, bias_compensation=True, ridge=1e-3, seed=0,
                         provider="CPUExecutionProvider", samples={"calibration": 16, "holdout": 0,
                                                                   "holdout_kind": "cv-4"},
                         groups=[], skipped=[], params={"before": 2, "after": 1}, macs={"before": 2, "after": 1},
                         target=None, outputs=outputs, output_error=0.79,
                         verified_on={"samples": 16, "set": "calibration"}, seconds={})
    (line,) = report.find_warnings()
    assert "0.790" in line and "channel-balanced" in line and "'output0'" in line


def test_heads_with_channels_last_and_dead_channels_are_balanced_too():
    rng = np.random.default_rng(3)
    reference = np.moveaxis(_detector_output(rng), 1, 2)  # (samples, anchors, 4 + 3)
    reference[:, :, 6] = 0.0  # a class never scored: left out
    candidate = reference.copy()
    candidate[:, :, 4:6] = 0.0
    assert balanced_error(reference, candidate) == pytest.approx(np.sqrt(2 / 6), rel=1e-6)


def test_a_softmax_over_many_classes_is_not_balanced():
    """A recognizer's per-step class distribution: rare classes have tiny probabilities whose
    relative changes are noise, not lost scores."""
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((4, 10, 300)) * 3
    logits[..., 0] += 12
    softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
    reference, candidate = softmax(logits), softmax(logits * 0.7)
    assert balanced_error(reference, candidate) is None
    assert "balanced_error" not in fidelity({"p": reference}, {"p": candidate})["p"]
