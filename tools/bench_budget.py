"""Benchmark of compression targets on the shipped digits models.

For each model and params target, prunes with ``--allocation uniform`` and ``sensitivity``
(asym, default config, device cpu, seed 0, calibration models/digits_calib.npz), with and
without ``--round-to 8``, and reports:

- test accuracy (models/digits_test.npz) and relative logits error vs the original on the test
  images;
- achieved params and MACs ratios;
- the time the allocation takes (``seconds.allocation`` of the report: statistics capture from
  the original model, greedy orders, one-group prunes, the equal-loss search) and the whole
  prune's wall time;
- onnxruntime CPU latency of the pruned model relative to the original at batch 1 and 64
  (fastest of --repeats runs each, original and pruned timed alternately; < 1 is faster).

``--rules marginal`` adds rows for :func:`onnx_subprune.budget.allocate_marginal` (the greedy
squared-loss-per-param rule, for comparison with the equal-loss rule on the same curves).

Usage:
  python tools/bench_budget.py [--models lenet5 vgg_bn] [--targets 0.5 0.25 0.125]
                               [--rules uniform sensitivity] [--round-to 1 8] [--repeats 50]
                               [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnx_subprune import pipeline
from onnx_subprune.config import PruneConfig
from onnx_subprune.data import check_inputs, load_arrays
from onnx_subprune.graph import load_model
from onnx_subprune.sensitivity import output_error
from onnx_subprune.runtime import run, session
from onnx_subprune.verify import accuracy, predict

from common import CALIB, MODELS, TEST, markdown_table

CPU = ["CPUExecutionProvider"]


def latency_ratios(original, pruned, images, repeats: int) -> tuple[float, float]:
    """Pruned / original latency at batch 1 and 64: the two sessions are timed alternately and
    each side's fastest run is kept, so a busy machine slows both alike and spikes drop out."""
    sessions = [session(m, CPU) for m in (original, pruned)]
    ratios = []
    for batch in (1, 64):
        feed = {"input": images[:batch]}
        for sess in sessions:
            for _ in range(5):
                run(sess, feed)
        best = [float("inf"), float("inf")]
        for _ in range(repeats):
            for side, sess in enumerate(sessions):
                start = time.perf_counter()
                run(sess, feed)
                best[side] = min(best[side], time.perf_counter() - start)
        ratios.append(best[1] / best[0])
    return tuple(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_bn"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25, 0.125])
    parser.add_argument("--rules", nargs="+", default=["uniform", "sensitivity"],
                        choices=["uniform", "sensitivity", "marginal"])
    parser.add_argument("--round-to", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args()

    rows, records = [], []
    for name in args.models:
        model = load_model(MODELS / f"{name}.onnx")
        feeds = check_inputs(load_arrays(CALIB), model, "calibration")
        with np.load(TEST) as test:
            images, labels = test["input"], test["label"]
        reference = predict(model, {"input": images}, CPU, 64)
        base_acc = accuracy(reference["logits"], labels)
        print(f"{name}: original accuracy {base_acc:.1%}", file=sys.stderr)
        for target in args.targets:
            for allocation in args.rules:
                for round_to in args.round_to:
                    config = PruneConfig(target_params=target, round_to=round_to, device="cpu",
                                         allocation=allocation)
                    start = time.perf_counter()
                    result = pipeline.prune(model, feeds, config)
                    wall = time.perf_counter() - start
                    logits = predict(result.model, {"input": images}, CPU, 64)
                    lat = latency_ratios(model, result.model, images, args.repeats)
                    report = result.report.to_json()
                    record = {
                        "model": name, "target": target, "allocation": allocation, "round_to": round_to,
                        "accuracy": accuracy(logits["logits"], labels), "original_accuracy": base_acc,
                        "logits_error": output_error(reference, logits),
                        "params": report["target"]["achieved"]["params"],
                        "macs": report["target"]["achieved"]["macs"],
                        "allocation_s": report["seconds"]["allocation"], "prune_s": wall,
                        "latency_ratio_b1": lat[0], "latency_ratio_b64": lat[1],
                        "counts": [g["k"] for g in report["groups"]],
                    }
                    records.append(record)
                    rows.append([
                        name, f"1/{round(1 / target)}" if abs(1 / target - round(1 / target)) < 1e-9 else f"{target:g}",
                        allocation, str(round_to), f"{record['accuracy']:.1%}", f"{record['logits_error']:.4f}",
                        f"{record['params']:.2%}", f"{record['macs']:.2%}", f"{record['allocation_s']:.1f}",
                        f"{wall:.1f}", f"{record['latency_ratio_b1']:.2f}", f"{record['latency_ratio_b64']:.2f}",
                        " ".join(map(str, record["counts"])),
                    ])
                    print(" | ".join(rows[-1]), file=sys.stderr)
    header = ["model", "params target", "allocation", "round-to", "test acc", "logits err", "params",
              "MACs", "alloc s", "prune s", "latency b1", "latency b64", "kept per group"]
    print(markdown_table(header, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
