"""Smoke runs of tools/bench_quality.py and tools/bench_speed.py on LeNet-5 at one setting, so
the benchmarks behind docs/RESULTS.md cannot rot. Slow: select with ``pytest -m slow``.

The onnxsim peer and the PNG are exercised only where the `bench` extra (onnxsim, matplotlib)
is installed; the package itself never needs them.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(TOOLS / script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_bench_quality_lenet5(tmp_path):
    has_peer = importlib.util.find_spec("onnxsim") is not None
    has_plot = importlib.util.find_spec("matplotlib") is not None
    variants = ["asym", "weight-norm/no-refit"] + (["peer-l2", "peer-wanda+ridge"] if has_peer else [])
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n<!-- begin quality lenet5 -->\nstale\n<!-- end quality lenet5 -->\n\ntail\n")
    args = ["--models", "lenet5", "--ratios", "4", "--seeds", "1", "--calib-samples", "64",
            "--variants", *variants, "--out", str(tmp_path / "results"), "--plots", str(tmp_path),
            "--results", str(results)]
    if not has_plot:
        args.append("--no-plot")
    _run("bench_quality.py", *args)

    rows = _rows(tmp_path / "results" / "quality_lenet5.csv")
    assert [r["variant"] for r in rows] == ["original"] + variants
    for row in rows[1:]:
        assert row["error"] == ""
        assert 0 <= float(row["test_acc"]) <= 1
        assert float(row["params_ratio"]) <= 0.25 + 1e-9  # same params budget for every variant
        assert int(row["dead_channels"]) == 0  # channels are removed, not zeroed
    asym = next(r for r in rows if r["variant"] == "asym")
    assert float(asym["test_acc"]) > 0.9
    text = results.read_text()
    assert "stale" not in text and "\ntail\n" in text  # only the block was replaced
    assert "<!-- begin quality summary -->" in text  # a missing block is appended
    assert "refit > no refit" not in text  # no pair of that claim was run
    if has_peer:
        assert "our best > peer's best at equal params" in text
    if has_plot:
        assert (tmp_path / "quality_lenet5.png").stat().st_size > 1000

    # the markdown can be rebuilt from the CSV alone
    rebuilt = tmp_path / "RESULTS2.md"
    _run("bench_quality.py", *[a if a != str(results) else str(rebuilt) for a in args], "--render-only")
    assert rebuilt.read_text().count("| asym ") == text.count("| asym ")


def test_bench_speed_lenet5(tmp_path):
    results = tmp_path / "RESULTS.md"
    common = ["--models", "lenet5", "--out", str(tmp_path), "--results", str(results)]
    _run("bench_speed.py", "stages", *common, "--samples", "128")
    _run("bench_speed.py", "latency", *common, "--ratios", "4", "--round-to", "1", "8", "--rounds", "2",
         "--repeats", "8")
    _run("bench_speed.py", "selector", *common, "--naive-sizes", "8", "--no-large")
    _run("bench_speed.py", "depth", "--out", str(tmp_path), "--results", str(results), "--depths", "2", "4",
         "--depth-samples", "8", "--architectures", "bert_encoder")
    depth = _rows(tmp_path / "speed_depth.csv")
    assert [(r["model"], r["method"]) for r in depth][:3] == [("chain 2", m) for m in ("layer", "seq", "asym")]
    assert len(depth) == 9 and all(r["error"] == "" and float(r["passes"]) > 0 for r in depth)
    assert all(r["runs"] == "3" for r in depth)  # quick prunes: the median of three runs
    for row, following in zip(depth, depth[1:]):  # the forward pass timed on both sides of each prune
        before, after = float(row["forward_before_s"]), float(row["forward_after_s"])
        assert float(row["forward_s"]) == pytest.approx((before + after) / 2, rel=1e-3)  # the CSV rounds
        assert row["model"] != following["model"] or float(following["forward_before_s"]) == after

    stages = _rows(tmp_path / "speed_stages.csv")
    assert len(stages) == 1 and stages[0]["error"] == ""
    assert float(stages[0]["peak_rss_mib"]) > 10 and float(stages[0]["capture_s"]) > 0
    latency = _rows(tmp_path / "speed_latency.csv")
    assert [(float(r["ratio"]), int(r["round_to"])) for r in latency] == [(1, 1), (4, 1), (4, 8)]
    assert all(float(r["params_ratio"]) <= 0.25 + 1e-9 for r in latency[1:])
    assert all(float(r["batch1_ms"]) > 0 for r in latency)
    selector = _rows(tmp_path / "speed_selector.csv")
    assert selector[0]["same_order"] == "True"
    text = results.read_text()
    for section in ("stages", "latency", "selector"):
        assert f"<!-- begin speed {section} -->" in text
