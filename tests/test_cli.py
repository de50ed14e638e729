"""The ``onnx-subprune`` command line, driven through click's CliRunner.

Contract under test (see onnx_subprune/cli.py): results on stdout (pure JSON with ``--json``),
notes and progress on stderr; exit 0 ok, 1 user error (one ``Error:`` line on stderr, no
traceback, nothing written), 2 usage error.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_subprune.select import METHODS

import builders
from helpers import save_bytes as _bytes, save_npz as _npz, save_onnx as _save, MODELS as MODELS_DIR, invoke, random_feeds

LENET = MODELS_DIR / "lenet5.onnx"
CALIB_NPZ = MODELS_DIR / "digits_calib.npz"
CALIB_NPY = MODELS_DIR / "digits_calib.npy"
TEST_NPZ = MODELS_DIR / "digits_test.npz"
TINY = ["gemm_gemm", "conv_bn_pool_conv", "conv_flatten_gemm", "matmul_gelu_matmul"]
FAST = ["--device", "cpu", "--quiet"]


# ---------------------------------------------------------------------------------------------
# helpers and fixtures


def expected_kept(keep: float, channels: int) -> int:
    """max(1, round(keep * n)) with halves rounded up, as PruneConfig documents."""
    return max(1, min(channels, math.floor(keep * channels + 0.5)))


def assert_ok(result) -> None:
    assert result.exception is None or (
        isinstance(result.exception, SystemExit) and result.exit_code == 0
    ), f"exit {result.exit_code}: {result.exception!r}\nstderr: {result.stderr}"
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.output


def assert_user_error(result, contains: str | None = None) -> None:
    """Exit 1 through click (not a stray exception), exactly one ``Error:`` line on stderr."""
    assert not (result.exception is not None and not isinstance(result.exception, SystemExit)), (
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {result.stderr!r}"
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    if contains is not None:
        assert contains in lines[0], lines[0]


def run_model(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder with small data files and the tiny builder models (+ random calibration)."""
    folder = tmp_path_factory.mktemp("cli_data")
    calib = np.load(CALIB_NPZ)["input"][:64]
    np.savez(folder / "calib64.npz", input=calib)
    np.save(folder / "calib64.npy", calib)
    with np.load(TEST_NPZ) as test:
        np.savez(folder / "test64.npz", input=test["input"][:64], label=test["label"][:64])
    for name in TINY:
        model = getattr(builders, name)()
        onnx.save(model, folder / f"{name}.onnx")
        np.savez(folder / f"{name}.npz", **random_feeds(model, 40, seed=1))
    two = builders.two_inputs()
    onnx.save(two, folder / "two.onnx")
    feeds = random_feeds(two, 40)
    np.savez(folder / "two.npz", **feeds)
    np.save(folder / "two.npy", feeds["a"])
    return folder


def single_gemm_model() -> onnx.ModelProto:
    """One Gemm whose output channels are the graph output: nothing prunable."""
    text = builders.header("float[N,4] x", "float[N,3] y") + """ {
        y = Gemm <transB = 1> (x, w, b)
    }"""
    return builders.build(text, {"w": (3, 4), "b": (3,)})


@pytest.fixture(scope="module")
def lenet_run(data, tmp_path_factory):
    """One lenet5 prune with --json and --report, shared by several tests."""
    out = tmp_path_factory.mktemp("lenet_run")
    output, report = out / "lenet5_pruned.onnx", out / "report.json"
    result = invoke("prune", LENET, "-o", output, "--calib", data / "calib64.npz", "--keep", "0.5",
                    "--report", report, "--json", *FAST)
    assert_ok(result)
    return result, output, report, out


# ---------------------------------------------------------------------------------------------
# analyze


def test_analyze_lenet_text():
    result = invoke("analyze", LENET)
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("4 prunable groups (226 channels), 1 skipped; the groups reach 60,074 of 60,074 float params (100.0%)")
    assert "params" in lines[0] and "MACs" in lines[0]
    assert "  /conv1/Conv [6 ch] -> /conv2/Conv  via Relu -> MaxPool" in lines
    assert "  /conv2/Conv [16 ch] -> /fc1/Gemm  via Relu -> MaxPool -> Flatten" in lines
    assert "  skipped /fc3/Gemm (Gemm): channels reach graph output logits" in lines
    assert len(lines) == 1 + 4 + 1
    assert result.stderr == ""


def test_analyze_lenet_json():
    result = invoke("analyze", LENET, "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    groups = report["groups"]
    assert [g["producer"] for g in groups] == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert [g["consumers"] for g in groups] == [["/conv2/Conv"], ["/fc1/Gemm"], ["/fc2/Gemm"], ["/fc3/Gemm"]]
    assert [g["channels"] for g in groups] == [6, 16, 120, 84]
    assert groups[0]["through"] == ["Relu", "MaxPool"]
    assert groups[1]["through"] == ["Relu", "MaxPool", "Flatten"]
    assert groups[2]["through"] == groups[3]["through"] == ["Relu"]
    assert len(report["skipped"]) == 1
    skip = report["skipped"][0]
    assert set(skip) >= {"node", "op", "reason"}
    assert (skip["node"], skip["op"]) == ("/fc3/Gemm", "Gemm")
    assert "reach graph output" in skip["reason"]
    assert report["params"] == 60074 and report["macs"] > 0


def test_analyze_builder_model_json_and_text(data):
    result = invoke("analyze", data / "conv_bn_pool_conv.onnx", "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    assert [(g["channels"], g["through"]) for g in report["groups"]] == [
        (8, ["BatchNormalization", "Relu", "MaxPool"]),
        (6, ["Relu", "GlobalAveragePool", "Flatten"]),
    ]
    for group in report["groups"]:
        assert isinstance(group["producer"], str) and group["producer"]
        assert len(group["consumers"]) == 1
    assert [s["op"] for s in report["skipped"]] == ["Gemm"]
    assert "reach graph output y" in report["skipped"][0]["reason"]

    text = invoke("analyze", data / "gemm_gemm.onnx")
    assert_ok(text)
    assert text.stdout.startswith("2 prunable groups (21 channels), 1 skipped; the groups reach ")
    assert "[12 ch]" in text.stdout and "[9 ch]" in text.stdout and "via Sigmoid" in text.stdout


def test_analyze_nothing_prunable_is_not_an_error(tmp_path):
    path = tmp_path / "one.onnx"
    onnx.save(single_gemm_model(), path)
    result = invoke("analyze", path, "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["groups"] == [] and len(report["skipped"]) == 1


# ---------------------------------------------------------------------------------------------
# prune


def check_report(report: dict, keep: float = 0.5) -> None:
    assert report["groups"], report
    for group in report["groups"]:
        n, kept = group["channels"], group["kept"]
        assert isinstance(group["producer"], str) and group["consumers"]
        assert all(isinstance(i, int) for i in kept)
        assert kept == sorted(set(kept)), kept
        assert 0 <= kept[0] and kept[-1] < n
        assert len(kept) == expected_kept(keep, n), (n, kept)
        assert isinstance(group["explained"], float)
        assert group["explained_holdout"] is None or isinstance(group["explained_holdout"], float)
        assert group["seconds"] >= 0
    assert report["params"]["after"] < report["params"]["before"]
    assert report["macs"]["after"] < report["macs"]["before"]
    assert isinstance(report["output_error"], float) and math.isfinite(report["output_error"])
    assert report["provider"] == "CPUExecutionProvider"
    assert isinstance(report["seconds"], dict) and report["seconds"]


def test_prune_json_report(lenet_run):
    result, output, report_path, _ = lenet_run
    report = json.loads(result.stdout)  # stdout is pure JSON
    check_report(report)
    assert [g["producer"] for g in report["groups"]] == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert [len(g["kept"]) for g in report["groups"]] == [3, 8, 60, 42]
    assert all(g["explained_holdout"] is not None for g in report["groups"])  # cross-validated
    assert all(g["explained_holdout"] < g["explained"] for g in report["groups"][1:])
    assert report["method"] == "asym" and report["keep"] == 0.5
    assert report["refit"] is True and report["bias_compensation"] is True
    # default holdout auto: all 64 samples fit, 4-fold cross-validation, verified in-sample
    assert report["samples"] == {"calibration": 64, "holdout": 0, "holdout_kind": "cv-4"}
    assert report["verified_on"] == {"samples": 64, "set": "calibration"}
    # the report file holds the same content
    text = report_path.read_text()
    assert text.endswith("\n")
    assert json.loads(text) == report


def test_prune_notes_on_stderr(lenet_run):
    result = lenet_run[0]
    assert "using onnxruntime CPUExecutionProvider" in result.stderr
    assert "using onnxruntime" not in result.stdout
    json.loads(result.stdout)


def test_prune_output_is_valid_and_runs(lenet_run):
    _, output, report_path, folder = lenet_run
    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    feeds = {"input": np.load(CALIB_NPZ)["input"][:8]}
    (logits,) = run_model(output, feeds)
    (reference,) = run_model(LENET, feeds)
    assert logits.shape == reference.shape == (8, 10)
    assert np.isfinite(logits).all()
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in folder.iterdir()) == sorted([output.name, report_path.name])


def test_prune_text_summary(data, tmp_path):
    output = tmp_path / "pruned.onnx"
    result = invoke("prune", LENET, "-o", output, "--calib", data / "calib64.npz", *FAST)
    assert_ok(result)
    assert output.is_file()
    out = result.stdout
    assert f"wrote {output}" in out
    assert "4 groups pruned (asym, keep 0.5)" in out
    assert "params 60,074 -> " in out
    assert "MACs" in out and "relative output error" in out
    assert "using onnxruntime" in result.stderr and "using onnxruntime" not in out


def test_prune_without_quiet_keeps_stdout_pure_json(data, tmp_path):
    result = invoke("prune", data / "gemm_gemm.onnx", "-o", tmp_path / "p.onnx",
                    "--calib", data / "gemm_gemm.npz", "--device", "cpu", "--json")
    assert_ok(result)
    check_report(json.loads(result.stdout))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["gemm_gemm", "conv_bn_pool_conv"])
def test_prune_each_method(data, tmp_path, name, method):
    output = tmp_path / "p.onnx"
    result = invoke("prune", data / f"{name}.onnx", "-o", output, "--calib", data / f"{name}.npz",
                    "--method", method, "--json", *FAST)
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["method"] == method
    check_report(report)
    onnx.checker.check_model(onnx.load(output), full_check=True)
    model = onnx.load(data / f"{name}.onnx")
    feeds = random_feeds(model, 5, seed=7)
    got, want = run_model(output, feeds), run_model(data / f"{name}.onnx", feeds)
    assert [g.shape for g in got] == [w.shape for w in want]


def test_prune_each_method_lenet(data, tmp_path):
    for method in METHODS:
        output = tmp_path / f"{method}.onnx"
        result = invoke("prune", LENET, "-o", output, "--calib", data / "calib64.npz",
                        "--method", method, "--json", *FAST)
        assert_ok(result)
        report = json.loads(result.stdout)
        assert report["method"] == method
        check_report(report)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.75, 1.0])
def test_prune_keep_counts(data, tmp_path, name, keep):
    output = tmp_path / "p.onnx"
    result = invoke("prune", data / f"{name}.onnx", "-o", output, "--calib", data / f"{name}.npz",
                    "--keep", keep, "--json", *FAST)
    assert_ok(result)
    report = json.loads(result.stdout)
    for group in report["groups"]:
        assert len(group["kept"]) == expected_kept(keep, group["channels"])
        assert group["kept"] == sorted(group["kept"])
    if keep == 1.0:
        assert report["params"]["after"] == report["params"]["before"]
    else:
        assert report["params"]["after"] < report["params"]["before"]


@pytest.mark.parametrize("flags, field", [(["--no-refit"], "refit"),
                                          (["--no-bias-compensation"], "bias_compensation")])
def test_prune_refit_flags(data, tmp_path, flags, field):
    output = tmp_path / "p.onnx"
    result = invoke("prune", LENET, "-o", output, "--calib", data / "calib64.npz", *flags, "--json", *FAST)
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report[field] is False
    check_report(report)
    onnx.checker.check_model(onnx.load(output))
    (logits,) = run_model(output, {"input": np.load(CALIB_NPZ)["input"][:4]})
    assert logits.shape == (4, 10) and np.isfinite(logits).all()


def test_prune_both_flags_and_no_holdout(data, tmp_path):
    result = invoke("prune", data / "conv_flatten_gemm.onnx", "-o", tmp_path / "p.onnx",
                    "--calib", data / "conv_flatten_gemm.npz", "--no-refit", "--no-bias-compensation",
                    "--holdout", "0", "--json", *FAST)
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["refit"] is False and report["bias_compensation"] is False
    assert report["samples"]["holdout"] == 0
    assert all(g["explained_holdout"] is None for g in report["groups"])


def test_prune_shrink_reaches_the_refit(data, tmp_path):
    """Every --shrink runs; "refit" changes the re-fitted weights of the same first group's
    channels (later groups see the model pruned so far)."""
    runs = {}
    for shrink in ("none", "refit", "auto"):
        output = tmp_path / f"{shrink}.onnx"
        result = invoke("prune", LENET, "-o", output, "--calib", data / "calib64.npz", "--shrink", shrink,
                        "--json", *FAST)
        assert_ok(result)
        weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(output).graph.initializer}
        runs[shrink] = (json.loads(result.stdout)["groups"][0]["kept"], weights)
    (kept, plain), (kept_shrunk, shrunk) = runs["none"], runs["refit"]
    assert kept == kept_shrunk
    assert any(not np.array_equal(plain[name], shrunk[name]) for name in plain)


@pytest.mark.parametrize("method", ["random", "asym"])
def test_prune_seed_determinism(data, tmp_path, method):
    runs = []
    for i in range(2):
        output = tmp_path / f"run{i}.onnx"
        result = invoke("prune", LENET, "-o", output, "--calib", data / "calib64.npz",
                        "--method", method, "--seed", "3", "--json", *FAST)
        assert_ok(result)
        runs.append((json.loads(result.stdout), output.read_bytes()))
    (first, bytes0), (second, bytes1) = runs
    assert [g["kept"] for g in first["groups"]] == [g["kept"] for g in second["groups"]]
    assert first["samples"] == second["samples"]
    assert bytes0 == bytes1


def test_prune_random_depends_on_seed(data, tmp_path):
    kept = []
    for seed in (1, 2):
        result = invoke("prune", LENET, "-o", tmp_path / f"s{seed}.onnx", "--calib", data / "calib64.npz",
                        "--method", "random", "--seed", seed, "--json", *FAST)
        assert_ok(result)
        kept.append([g["kept"] for g in json.loads(result.stdout)["groups"]])
    assert kept[0] != kept[1]


def test_prune_multi_input_npz_and_npy_single_input(data, tmp_path):
    result = invoke("prune", data / "two.onnx", "-o", tmp_path / "two.onnx", "--calib", data / "two.npz",
                    "--json", *FAST)
    assert_ok(result)
    check_report(json.loads(result.stdout))
    result = invoke("prune", LENET, "-o", tmp_path / "l.onnx", "--calib", data / "calib64.npy", "--json", *FAST)
    assert_ok(result)
    check_report(json.loads(result.stdout))


def test_prune_relative_output_path(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("prune", data / "gemm_gemm.onnx", "-o", "rel.onnx", "--calib", data / "gemm_gemm.npz", *FAST)
    assert_ok(result)
    assert (tmp_path / "rel.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel.onnx"]


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_labels_json(data, lenet_run):
    output = lenet_run[1]
    result = invoke("evaluate", LENET, output, "--data", data / "test64.npz", "--labels", "label",
                    "--device", "cpu", "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    out = report["outputs"]["logits"]
    assert 0 <= out["relative_error"] < 1
    assert -1 <= out["cosine"] <= 1
    assert 0 <= out["top1_agreement"] <= 1
    acc = report["accuracy"]
    assert 0 <= acc["original"] <= 1 and 0 <= acc["pruned"] <= 1 and acc["output"] == "logits"
    for label in ("original", "pruned"):
        assert isinstance(report[label]["params"], int)
        assert isinstance(report[label]["macs"], int)
        assert report[label]["latency_ms"] > 0
    assert report["pruned"]["params"] < report["original"]["params"]
    assert report["pruned"]["macs"] < report["original"]["macs"]
    assert report["latency_batch"] == 64
    assert report["latency_ratio"] == pytest.approx(report["pruned"]["latency_ms"] / report["original"]["latency_ms"])
    assert "using onnxruntime" in result.stderr


def test_evaluate_text_without_labels(data, lenet_run):
    result = invoke("evaluate", LENET, lenet_run[1], "--data", data / "calib64.npz", "--device", "cpu")
    assert_ok(result)
    assert "output logits: relative error" in result.stdout
    assert "top-1 agreement" in result.stdout
    assert "accuracy" not in result.stdout
    assert "params" in result.stdout and "MACs" in result.stdout and "ms median" in result.stdout


def test_evaluate_json_without_labels_and_npy(data, lenet_run):
    for path in (data / "calib64.npz", data / "calib64.npy"):
        result = invoke("evaluate", LENET, lenet_run[1], "--data", path, "--device", "cpu",
                        "--batch-size", "16", "--json")
        assert_ok(result)
        report = json.loads(result.stdout)
        assert "accuracy" not in report
        assert set(report["outputs"]["logits"]) == {"relative_error", "cosine", "top1_agreement"}
        assert report["latency_batch"] == 16


def test_evaluate_model_against_itself(data):
    result = invoke("evaluate", LENET, LENET, "--data", data / "test64.npz", "--labels", "label",
                    "--device", "cpu", "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    out = report["outputs"]["logits"]
    assert out["relative_error"] == 0 and out["cosine"] == pytest.approx(1) and out["top1_agreement"] == 1
    assert report["accuracy"]["original"] == report["accuracy"]["pruned"]
    assert report["original"]["params"] == report["pruned"]["params"]


# ---------------------------------------------------------------------------------------------
# user errors: exit 1, one line on stderr, nothing written


def _calib(data: Path) -> np.ndarray:
    return np.load(data / "calib64.npz")["input"][:40]


def _invalid_graph_model() -> onnx.ModelProto:
    model = builders.gemm_gemm()
    model.graph.node[1].input[0] = "undefined_tensor"
    return model


def _nan(data: Path) -> np.ndarray:
    x = _calib(data).copy()
    x[3, 0, 5, 5] = np.nan
    return x


def _inf(data: Path) -> np.ndarray:
    x = _calib(data).copy()
    x[0, 0, 0, 0] = -np.inf
    return x


# Each case: (make(src, data) -> (model, calib, extra args), expected substring of the error line).
PRUNE_ERRORS = {
    "missing-model": (lambda s, d: (s / "nope.onnx", d / "calib64.npz", []), "model file not found"),
    "random-bytes-model": (
        lambda s, d: (_bytes(s / "rand.onnx", np.random.default_rng(0).bytes(3000)), d / "calib64.npz", []),
        "cannot read ONNX model"),
    "truncated-model": (
        lambda s, d: (_bytes(s / "trunc.onnx", LENET.read_bytes()[: LENET.stat().st_size // 2]),
                      d / "calib64.npz", []),
        "cannot read ONNX model"),
    "empty-model-file": (lambda s, d: (_bytes(s / "empty.onnx", b""), d / "calib64.npz", []),
                         "cannot read ONNX model"),
    "checker-invalid-model": (
        lambda s, d: (_save(s / "invalid.onnx", _invalid_graph_model()), d / "gemm_gemm.npz", []),
        "invalid ONNX model"),
    "missing-calib-file": (lambda s, d: (LENET, s / "nope.npz", []), "data file not found"),
    "corrupt-calib-file": (lambda s, d: (LENET, _bytes(s / "bad.npz", b"not a zip file"), []),
                           "cannot read data file"),
    "calib-missing-input-name": (lambda s, d: (LENET, _npz(s / "c.npz", x=_calib(d)), []),
                                 "no array for model input 'input'"),
    "calib-unknown-array": (lambda s, d: (LENET, _npz(s / "c.npz", input=_calib(d), extra=_calib(d)), []),
                            "'extra' is not a model input"),
    "calib-wrong-rank": (lambda s, d: (LENET, _npz(s / "c.npz", input=_calib(d)[:, 0]), []), "rank 3"),
    "calib-wrong-static-dim": (lambda s, d: (LENET, _npz(s / "c.npz", input=_calib(d)[:, :, :, :27]), []),
                               "axis 3"),
    "calib-int-dtype": (lambda s, d: (LENET, _npz(s / "c.npz", input=np.ones((40, 1, 28, 28), np.int64)), []),
                        "dtype int64"),
    "calib-nan": (lambda s, d: (LENET, _npz(s / "c.npz", input=_nan(d)), []), "NaN or Inf"),
    "calib-inf": (lambda s, d: (LENET, _npz(s / "c.npz", input=_inf(d)), []), "NaN or Inf"),
    "calib-no-samples": (lambda s, d: (LENET, _npz(s / "c.npz", input=_calib(d)[:0]), []), "no samples"),
    "npy-for-two-inputs": (lambda s, d: (d / "two.onnx", d / "two.npy", []), "use .npz"),
    "keep-0": (lambda s, d: (LENET, d / "calib64.npz", ["--keep", "0"]), "--keep"),
    "keep-1.5": (lambda s, d: (LENET, d / "calib64.npz", ["--keep", "1.5"]), "--keep"),
    "keep-negative": (lambda s, d: (LENET, d / "calib64.npz", ["--keep", "-0.5"]), "--keep"),
    "keep-nan": (lambda s, d: (LENET, d / "calib64.npz", ["--keep", "nan"]), "--keep"),
    "ridge-negative": (lambda s, d: (LENET, d / "calib64.npz", ["--ridge", "-1"]), "--ridge"),
    "holdout-1": (lambda s, d: (LENET, d / "calib64.npz", ["--holdout", "1"]), "--holdout"),
    "nothing-prunable": (
        lambda s, d: (_save(s / "one.onnx", single_gemm_model()),
                      _npz(s / "one.npz", x=np.ones((40, 4), np.float32)), []),
        "nothing prunable"),
    "report-folder-missing": (lambda s, d: (LENET, d / "calib64.npz", ["--report", s / "no" / "r.json"]),
                              "does not exist"),
}


@pytest.mark.parametrize("case", list(PRUNE_ERRORS))
def test_prune_user_errors(data, tmp_path, case):
    make, contains = PRUNE_ERRORS[case]
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    model, calib, extra = make(src, data)
    result = invoke("prune", model, "-o", out / "pruned.onnx", "--calib", calib, *extra, *FAST)
    assert_user_error(result, contains)
    assert list(out.iterdir()) == []  # no output, no stray temporary files
    assert not (src / "no").exists()


def test_prune_output_folder_missing(data, tmp_path):
    output = tmp_path / "missing" / "pruned.onnx"
    result = invoke("prune", LENET, "-o", output, "--calib", data / "calib64.npz", *FAST)
    assert_user_error(result, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_prune_report_folder_missing_writes_no_model(data, tmp_path):
    result = invoke("prune", LENET, "-o", tmp_path / "p.onnx", "--calib", data / "calib64.npz",
                    "--report", tmp_path / "missing" / "r.json", "--json", *FAST)
    assert_user_error(result, "does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_prune_output_folder_read_only(data, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = invoke("prune", LENET, "-o", out / "p.onnx", "--calib", data / "calib64.npz", *FAST)
        assert_user_error(result, "not writable")
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


EVALUATE_ERRORS = {
    "missing-labels-key": (lambda s, d: (LENET, LENET, d / "calib64.npz", ["--labels", "label"]),
                           "no array named 'label'"),
    "labels-with-npy": (lambda s, d: (LENET, LENET, d / "calib64.npy", ["--labels", "label"]),
                        "no array named 'label'"),
    "npy-for-two-inputs": (lambda s, d: (d / "two.onnx", d / "two.onnx", d / "two.npy", []), "use .npz"),
    "missing-pruned-model": (lambda s, d: (LENET, s / "nope.onnx", d / "calib64.npz", []),
                             "model file not found"),
    "corrupt-original-model": (
        lambda s, d: (_bytes(s / "bad.onnx", b"\x00\xff" * 100), LENET, d / "calib64.npz", []),
        "cannot read ONNX model"),
    "missing-data": (lambda s, d: (LENET, LENET, s / "nope.npz", []), "data file not found"),
    "data-nan": (lambda s, d: (LENET, LENET, _npz(s / "c.npz", input=_nan(d)), []), "NaN or Inf"),
    "data-wrong-input-for-pruned": (
        lambda s, d: (LENET, d / "gemm_gemm.onnx", d / "calib64.npz", []), "input 'x' only in the pruned model"),
}


@pytest.mark.parametrize("case", list(EVALUATE_ERRORS))
def test_evaluate_user_errors(data, tmp_path, case):
    make, contains = EVALUATE_ERRORS[case]
    original, pruned, path, extra = make(tmp_path, data)
    result = invoke("evaluate", original, pruned, "--data", path, *extra, "--device", "cpu")
    assert_user_error(result, contains)


def test_analyze_user_errors(tmp_path):
    assert_user_error(invoke("analyze", tmp_path / "nope.onnx"), "model file not found")
    bad = _bytes(tmp_path / "bad.onnx", np.random.default_rng(1).bytes(500))
    assert_user_error(invoke("analyze", bad, "--json"), "cannot read ONNX model")


# ---------------------------------------------------------------------------------------------
# usage errors: exit 2


@pytest.mark.parametrize("args", [
    ["prune", LENET, "-o", "{out}", "--calib", "{calib}", "--bogus"],
    ["prune", LENET, "-o", "{out}"],
    ["prune", LENET, "--calib", "{calib}"],
    ["prune", LENET, "-o", "{out}", "--calib", "{calib}", "--method", "magic"],
    ["prune", LENET, "-o", "{out}", "--calib", "{calib}", "--batch-size", "0"],
    ["prune", LENET, "-o", "{out}", "--calib", "{calib}", "--keep", "half"],
    ["prune", LENET, "-o", "{out}", "--calib", "{calib}", "--device", "tpu"],
    ["evaluate", LENET, LENET],
    ["evaluate", LENET, LENET, "--data", "{calib}", "--batch-size", "-1"],
    ["analyze"],
    ["frobnicate"],
], ids=["unknown-option", "missing-calib", "missing-output", "bad-method", "batch-size-0", "keep-not-float",
        "bad-device", "evaluate-missing-data", "evaluate-batch-size", "analyze-no-model", "unknown-command"])
def test_usage_errors(data, tmp_path, args):
    out = tmp_path / "out"
    out.mkdir()
    args = [str(a).format(out=out / "p.onnx", calib=data / "calib64.npz") for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit)
    assert "Error" in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# help and version


@pytest.mark.parametrize("command", ["analyze", "prune", "evaluate"])
def test_command_help(command):
    for flag in ("--help", "-h"):
        result = invoke(command, flag)
        assert_ok(result)
        assert "Example" in result.stdout
        assert f"onnx-subprune {command}" in result.stdout


def test_main_help_and_version():
    result = invoke("--help")
    assert_ok(result)
    for command in ("analyze", "prune", "evaluate"):
        assert command in result.stdout
    result = invoke("--version")
    assert_ok(result)
    assert "0.1.0" in result.stdout


# ---------------------------------------------------------------------------------------------
# regressions: bugs found while writing these tests


def test_evaluate_labels_wrong_length_is_a_user_error(data, tmp_path):
    with np.load(TEST_NPZ) as test:
        path = _npz(tmp_path / "t.npz", input=test["input"][:64], label=test["label"][:10])
    result = invoke("evaluate", LENET, LENET, "--data", path, "--labels", "label", "--device", "cpu")
    assert_user_error(result, "label")


def test_prune_and_evaluate_fixed_batch_pad_the_last_batch(tmp_path):
    """A model that fixes its batch at 4 prunes and evaluates 51 samples: the last batch is
    padded and the padded rows are dropped."""
    text = f'<ir_version: {builders.IR_VERSION}, opset_import: ["" : 17]>\n' \
           "g (float[4,10] x) => (float[4,3] y)" + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
    }"""
    model = _save(tmp_path / "fixed.onnx",
                  builders.build(text, {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,)}))
    x = np.random.default_rng(0).normal(size=(51, 10)).astype(np.float32)
    calib = _npz(tmp_path / "c.npz", x=x)
    out = tmp_path / "p.onnx"
    result = invoke("prune", model, "-o", out, "--calib", calib, "--json", *FAST)
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["samples"]["calibration"] + report["samples"]["holdout"] == 51
    assert report["groups"][0]["rows"] == report["samples"]["calibration"]
    result = invoke("evaluate", model, out, "--data", calib, "--device", "cpu", "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["outputs"]["y"]["relative_error"] < 1


def test_prune_float64_overflow_one_line(data, tmp_path):
    calib = _npz(tmp_path / "c.npz", input=_calib(data).astype(np.float64) * 1e300)
    out = tmp_path / "out"
    out.mkdir()
    # a subprocess: pytest's own warning capture would hide the warning from CliRunner
    proc = subprocess.run(
        [sys.executable, "-m", "onnx_subprune", "prune", str(LENET), "-o", str(out / "p.onnx"),
         "--calib", str(calib), *FAST],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
    )
    assert proc.returncode == 1
    assert list(out.iterdir()) == []
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "out of the range" in lines[0], lines


def test_include_exclude_and_coverage(tmp_path):
    result = invoke("analyze", LENET, "--exclude", "/fc2/*", "--json")
    assert_ok(result)
    data = json.loads(result.stdout)
    assert [g["producer"] for g in data["groups"]] == ["/conv1/Conv", "/conv2/Conv"]
    assert {s["node"] for s in data["skipped"] if "excluded by the pattern" in s["reason"]} == {"/fc1/Gemm", "/fc2/Gemm"}
    assert 0 < data["coverage"]["fraction"] <= 1
    calib = _npz(tmp_path / "c.npz", input=np.load(CALIB_NPY)[:40])
    out = tmp_path / "p.onnx"
    result = invoke("prune", LENET, "-o", out, "--calib", calib, "--include", "/fc*", "--json", *FAST)
    assert_ok(result)
    assert [g["producer"] for g in json.loads(result.stdout)["groups"]] == ["/fc1/Gemm", "/fc2/Gemm"]


# ---------------------------------------------------------------------------------------------
# no silent collapse: the held-out error is stated, flagged, and can be made a failure


def test_max_error_fails_cleanly_and_writes_nothing(tmp_path):
    calib = _npz(tmp_path / "c.npz", input=np.load(CALIB_NPY)[:80])
    out = tmp_path / "out"
    out.mkdir()
    result = invoke("prune", LENET, "-o", out / "p.onnx", "--calib", calib, "--keep", "0.1",
                    "--max-error", "0.01", "--report", out / "r.json", "--holdout", "0.2", *FAST)
    assert result.exit_code == 1 and result.stdout == ""
    assert list(out.iterdir()) == []
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors == result.stderr.splitlines()[-1:], result.stderr
    assert "exceeds the limit 0.01" in errors[0] and "16 held-out samples" in errors[0]
    assert "/conv" in errors[0] or "/fc" in errors[0], errors[0]
    result = invoke("prune", LENET, "-o", out / "p.onnx", "--calib", calib, "--keep", "0.9",
                    "--max-error", "0.5", *FAST)  # holdout auto with a bound: 20% held out even below 128
    assert_ok(result)
    assert "relative output error on 16 held-out samples" in result.stdout


def test_large_error_and_inactive_channels_are_flagged(tmp_path):
    """Half of fc1's neurons never fire on the calibration data (bias -100 before the ReLU):
    the report counts them and a warning names the group."""
    text = builders.header("float[N,10] x", "float[N,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
    }"""
    bias = np.where(np.arange(8) < 4, -100.0, 0.0).astype(np.float32)
    model = _save(tmp_path / "m.onnx", builders.build(text, {"w1": (8, 10), "b1": bias, "w2": (3, 8), "b2": (3,)}))
    calib = _npz(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(60, 10)).astype(np.float32))
    result = invoke("prune", model, "-o", tmp_path / "p.onnx", "--calib", calib, "--keep", "0.75", "--json", *FAST)
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["groups"][0]["inactive"] == 4
    assert any("inactive in 1 of 1 groups" in w for w in report["warnings"])
    assert "warning: the calibration data leaves many channels inactive" in result.stderr
    result = invoke("prune", model, "-o", tmp_path / "q.onnx", "--calib", calib, "--keep", "0.125", *FAST)
    assert_ok(result)
    assert "(large: see the warning below)" in result.stdout
    assert "warning: the pruned model's outputs differ from the original's" in result.stderr


def test_scalar_model_input_is_fed_once_for_every_batch(tmp_path):
    """An input without a sample axis (silero-vad's sample rate) takes one value: a 0-d array,
    or the same value once per sample; different values per sample are refused in one line."""
    text = builders.header("float[N,10] x, int64 sr", "float[N,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        s = Cast <to = 1> (sr)
        c = Mul (b, s)
        y = Gemm <transB = 1> (c, w2, b2)
    }"""
    model = _save(tmp_path / "m.onnx", builders.build(text, {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,)}))
    x = np.random.default_rng(0).normal(size=(24, 10)).astype(np.float32)
    for index, sr in enumerate((np.array(2, np.int64), np.full(24, 2, np.int64))):
        out = tmp_path / f"p{index}.onnx"
        result = invoke("prune", model, "-o", out, "--calib", _npz(tmp_path / f"c{index}.npz", x=x, sr=sr),
                        "--keep", "1.0", *FAST)
        assert result.exit_code == 0, result.stderr
        assert out.exists()
    calib = _npz(tmp_path / "bad.npz", x=x, sr=np.arange(24))
    result = invoke("prune", model, "-o", tmp_path / "bad.onnx", "--calib", calib, *FAST)
    assert_user_error(result, "'sr' is a scalar, one value for the whole batch")
    assert not (tmp_path / "bad.onnx").exists()


def test_onnxruntime_failure_while_running_is_one_line(tmp_path):
    """Data that passes the declared dims but that onnxruntime rejects (a Reshape into rows of
    7 that 8 x 10 values do not fill) ends in one line, not a traceback."""
    text = builders.header("float[N,10] x", "float[N,3] y, float[M,7] z") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
        s = Constant <value = int64[2] {-1, 7}> ()
        z = Reshape (x, s)
    }"""
    model = _save(tmp_path / "m.onnx", builders.build(text, {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,)}))
    calib = _npz(tmp_path / "c.npz", x=np.ones((8, 10), np.float32))
    result = invoke("prune", model, "-o", tmp_path / "p.onnx", "--calib", calib, *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "onnxruntime cannot run the model" in errors[0], result.stderr
    assert not (tmp_path / "p.onnx").exists()
