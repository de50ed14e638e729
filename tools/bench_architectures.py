"""Coupled channel groups on the test architectures (models/arch): how much of each model the
groups reach, and what pruning every group to half its channels costs.

For each architecture: the fraction of float params inside prunable groups, then for asym,
weight-norm with the least-squares refit and weight-norm without it, at keep 0.5: params ratio,
relative output error on held-out inputs, and prune wall time. Calibration: the first 256 digits
calibration images (NHWC for nhwc_cnn) or 256 seeded random sequences for the encoder layer;
held out: 200 digits test images or 64 other random sequences.

    python tools/bench_architectures.py [--keep 0.5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx

from onnx_subprune.analyze import analyze, coverage
from onnx_subprune.config import PruneConfig
from onnx_subprune.graph import name_nodes
from onnx_subprune.pipeline import prune
from onnx_subprune.verify import fidelity, predict

from common import CALIB, MODELS as MODELS_DIR, TEST

ARCH = MODELS_DIR / "arch"
NAMES = ["resnet_mixed", "mobilenetv2", "mobilenetv3_se", "csp_split_concat", "densenet_block", "bert_layer"]
MODELS = [*NAMES, *(f"{n}_const" for n in NAMES), "nhwc_cnn"]
VARIANTS = [("asym", "asym", True), ("weight-norm+refit", "weight-norm", True), ("weight-norm", "weight-norm", False)]
CPU = ["CPUExecutionProvider"]


def data(name: str) -> tuple[dict, dict]:
    """(calibration feeds, held-out feeds) for an architecture."""
    if name.startswith("bert"):
        rng = np.random.default_rng(0)
        return ({"input": rng.standard_normal((256, 8, 32)).astype(np.float32)},
                {"input": rng.standard_normal((64, 8, 32)).astype(np.float32)})
    calib = np.load(CALIB)["input"][:256]
    test = np.load(TEST)["input"][:200]
    if name == "nhwc_cnn":
        calib, test = calib.transpose(0, 2, 3, 1), test.transpose(0, 2, 3, 1)
    return {"input": np.ascontiguousarray(calib)}, {"input": np.ascontiguousarray(test)}


def measure(name: str, keep: float) -> dict:
    model = name_nodes(onnx.load(ARCH / f"{name}.onnx"))
    reach = coverage(model, analyze(model))
    calib, held_out = data(name)
    reference = predict(model, held_out, CPU, 64)
    row = {"model": name, "groups": reach["groups"], "coverage": reach["fraction"]}
    for label, method, refit in VARIANTS:
        start = time.perf_counter()
        result = prune(model, calib, PruneConfig(keep=keep, method=method, refit=refit, device="cpu"))
        seconds = time.perf_counter() - start
        outputs = fidelity(reference, predict(result.model, held_out, CPU, 64))
        params = result.report.params
        row[label] = {
            "params_ratio": params["after"] / params["before"],
            "error": max(o["relative_error"] for o in outputs.values()),
            "seconds": seconds,
        }
    return row


def table(rows: list[dict], keep: float) -> str:
    head = [f"keep {keep} for every group; error = relative output error on held-out inputs",
            "", "| model | groups | params in groups | params ratio | asym error | wn+refit error | wn error | asym s | wn+refit s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, w, n = r["asym"], r["weight-norm+refit"], r["weight-norm"]
        head.append(f"| {r['model']} | {r['groups']} | {r['coverage']:.1%} | {a['params_ratio']:.3f} | "
                    f"{a['error']:.4f} | {w['error']:.4f} | {n['error']:.4f} | {a['seconds']:.1f} | {w['seconds']:.1f} |")
    return "\n".join(head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = [measure(name, args.keep) for name in args.models]
    print(table(rows, args.keep))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
