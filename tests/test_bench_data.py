"""tools/bench_data.py: the markdown (pivots, onnxsim's choice, failed runs, the goal against no
refit and onnxsim) from synthetic rows, and one tiny LeNet-5 run with the onnxsim variant."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _bench_data():
    sys.path.insert(0, str(TOOLS))
    import bench_data

    return bench_data


def _row(model, ratio, size, variant, seed, acc, error="", note="", metric="accuracy"):
    return dict(model=model, metric=metric, eval_n=500, ratio=ratio, size=size, variant=variant, seed=seed,
                test_acc="" if error else acc, rel_logits_error="" if error else 1 - acc,
                params_ratio="" if error else 1 / ratio, prune_s=0.1, error=error, note=note)


def test_render_peer_failures_and_goal():
    bd = _bench_data()
    rows = [_row("lenet5", 1, 0, "original", 0, 1.0)]
    for size in (16, 32, 512):
        for seed in range(2 if size < 512 else 1):
            rows += [_row("lenet5", 8, size, "asym/default", seed, 0.95),
                     _row("lenet5", 8, size, "asym/no-refit", seed, 0.5),
                     _row("lenet5", 8, size, "onnxsim", seed, 0.97 if size == 16 else 0.4,
                          note="wanda+ridge (calibration error 0.5), sparsity 0.8710"),
                     _row("lenet5", 8, size, "asym+augment", seed, 0, error="TypeError: no augment")]
    rows += [_row("ppocr_cls", 1, 0, "original", 0, 1.0, metric="top1"),
             _row("ppocr_cls", 8, 16, "asym", 0, 0.6, metric="top1"),
             _row("ppocr_cls", 8, 16, "onnxsim", 0, 0, metric="top1",
                  error="RuntimeError: no onnxsim variant at 1/8 of the params: misses the budget")]
    text = bd.render([{k: str(v) for k, v in r.items()} for r in rows])
    assert "| onnxsim       | 97.0 ± 0.0 | 40.0 ± 0.0 | 40.0 |" in text
    assert "per size: 16: wanda+ridge x2; 32: wanda+ridge x2; 512: wanda+ridge x1." in text
    assert "- asym+augment: 5 runs failed (sizes 16, 32, 512): TypeError: no augment" in text
    assert ("- asym/default: 16 images 95.0% (meets >= 90%); 32 images 95.0% vs 95.0% at 512 (meets within "
            "2 points); never below no refit (3 sizes); below onnxsim at 16 images") in text
    assert "## ppocr_cls (zoo; top1 against the original on 500 held-out inputs)" in text
    assert "- onnxsim: 1 runs failed (sizes 16): RuntimeError: no onnxsim variant" in text
    assert text.index("## lenet5") < text.index("## ppocr_cls")  # digits first


def test_lenet5_tiny_grid(tmp_path):
    pytest.importorskip("onnxsim", reason="the onnxsim variant needs the bench extra")
    bd = _bench_data()
    out, table = tmp_path / "bd.md", tmp_path / "bd.csv"
    assert bd.main(["--models", "lenet5", "--ratios", "8", "--sizes", "8", "--seeds", "1",
                    "--variants", "asym", "onnxsim", "--csv", str(table), "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in csv.DictReader(table.open())}
    assert set(rows) == {"original", "asym", "onnxsim"}
    assert not rows["onnxsim"]["error"] and float(rows["onnxsim"]["params_ratio"]) <= 1 / 8
    assert rows["onnxsim"]["note"].split()[0] in {"l2", "wanda", "wanda+ridge"}
    assert float(rows["asym"]["params_ratio"]) <= 1 / 8
    assert "onnxsim's best variant" in out.read_text()
