"""Data efficiency: quality of pruned digits models vs the number of calibration images.

For each reference model in models/ (lenet5, vgg_bn by default; resnet_small on request), each
params target 1/r (r in --ratios, default 4 and 8; ``PruneConfig(target_params=1/r,
allocation="uniform")``), each calibration size (8, 16, 32, 64, 128, 512 images) and each seed s,
a calibration subset is drawn without replacement from models/digits_calib.npz with
``np.random.default_rng(s)`` (``common.calibration_subset``; the prune's own seed is s too) and the model is pruned by every variant; the pruned model is evaluated on
models/digits_test.npz: top-1 accuracy and relative logits error ||z' - z|| / ||z|| against the
original. No fine-tuning. All 512 images admit only one subset: that size runs seed 0 only.

Variants (onnx_subprune.pipeline.prune, device cpu; every variant uses all the calibration images,
``holdout=0``, unless its name says otherwise):
  asym/default            the default configuration (holdout auto, shrink none): below 128 images
                          all of them fit, with a 4-fold cross-validated explained variance
  asym/holdout-0.2        a fixed 20% holdout (the default before holdout auto)
  asym                    shrink none (least-squares refit, ridge 1e-3 toward zero)
  asym+shrink-refit       shrink refit: refit shrunk toward an anchor chosen with its strength by GCV
  asym+shrink             shrink auto: that refit and the greedy's ridge toward the original weights
  seq, layer              the other greedy schedules, shrink none
  seq+shrink              seq with shrink auto
  weight-norm             L1 weight-norm ranking + least-squares refit (shrink none)
  weight-norm+shrink      weight-norm ranking + shrink refit
  asym/no-refit           asym selection, the original weights of the kept channels

Results accumulate in --csv (default docs/results/data_efficiency.csv, one row per run; a rerun
replaces the rows it repeats), and the markdown --out (docs/results/data_efficiency.md) is
regenerated from every row of the CSV after each run: accuracy and error pivots (mean ± sample
std over the seeds), and the issue's goal checked at each ratio. Keep runs short by splitting
the grid (--models, --ratios, --sizes, --variants); --render-only rewrites the markdown.

Usage: python tools/bench_data.py [--models lenet5 vgg_bn] [--ratios 4 8]
           [--sizes 8 16 32 64 128 512] [--seeds 3] [--variants ...] [--render-only]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from common import CALIB, MODELS, ROOT, TEST, calibration_subset, markdown_table, write_csv

# variant -> PruneConfig options (besides device, seed, target_params, allocation)
VARIANTS: dict[str, dict] = {
    "asym/default": dict(method="asym"),
    "asym/holdout-0.2": dict(method="asym", holdout=0.2),
    "asym": dict(method="asym", holdout=0.0),
    "asym+shrink-refit": dict(method="asym", holdout=0.0, shrink="refit"),
    "asym+shrink": dict(method="asym", holdout=0.0, shrink="auto"),
    "seq": dict(method="seq", holdout=0.0),
    "seq+shrink": dict(method="seq", holdout=0.0, shrink="auto"),
    "layer": dict(method="layer", holdout=0.0),
    "weight-norm": dict(method="weight-norm", holdout=0.0),
    "weight-norm+shrink": dict(method="weight-norm", holdout=0.0, shrink="refit"),
    "asym/no-refit": dict(method="asym", holdout=0.0, refit=False),
}
SIZES = (8, 16, 32, 64, 128, 512)
GOAL_RATIO = 8
GOAL_ACC, GOAL_SMALL, GOAL_MID, GOAL_GAP = 0.90, 16, 32, 0.02  # the goal at 1/8 params


def run_model(name: str, args) -> list[dict]:
    """One row per (ratio, size, variant, seed) of ``args``' grid on model ``name``."""
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.data import check_inputs, load_arrays
    from onnx_subprune.graph import load_model
    from onnx_subprune.metrics import count_params
    from onnx_subprune.pipeline import prune
    from onnx_subprune.verify import accuracy, fidelity, predict

    providers = ["CPUExecutionProvider"]
    model = load_model(MODELS / f"{name}.onnx")
    test_arrays = load_arrays(TEST)
    test = check_inputs(test_arrays, model, f"test data {TEST}", extra=("label",))
    (input_name, pool), = check_inputs(load_arrays(CALIB), model, f"calibration data {CALIB}").items()
    (output, reference), = ((k, v) for k, v in predict(model, test, providers, 256).items() if v.ndim == 2)
    params = count_params(model)
    rows = [{"model": name, "ratio": 1, "size": 0, "variant": "original", "seed": 0,
             "test_acc": accuracy(reference, test_arrays["label"]), "rel_logits_error": 0.0,
             "params_ratio": 1.0, "prune_s": 0.0, "error": ""}]
    for ratio in args.ratios:
        for size in args.sizes:
            for seed in range(args.seeds if size < len(pool) else 1):
                feeds = {input_name: calibration_subset(pool, size, seed)}
                for variant in args.variants:
                    row = {"model": name, "ratio": ratio, "size": size, "variant": variant, "seed": seed}
                    print(f"[data] {name} 1/{ratio:g} {size} images seed {seed} {variant}", file=sys.stderr,
                          flush=True)
                    config = PruneConfig(device="cpu", seed=seed, target_params=1 / ratio,
                                         allocation="uniform", **VARIANTS[variant])
                    try:
                        clock = time.perf_counter()
                        pruned = prune(model, feeds, config).model
                        seconds = time.perf_counter() - clock
                        logits = predict(pruned, test, providers, 256)[output]
                        row.update(
                            test_acc=accuracy(logits, test_arrays["label"]),
                            rel_logits_error=fidelity({output: reference}, {output: logits})[output]["relative_error"],
                            params_ratio=count_params(pruned) / params, prune_s=seconds, error="")
                    except Exception as exc:  # one failing variant must not hide the rest
                        row.update(test_acc="", rel_logits_error="", params_ratio="", prune_s="",
                                   error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                        print(f"[data]   ERROR {row['error']}", file=sys.stderr, flush=True)
                    rows.append(row)
    return rows


# --------------------------------------------------------------------------- CSV


def _key(row: dict) -> tuple:
    return (row["model"], float(row["ratio"]), int(row["size"]), row["variant"], int(row["seed"]))


def merge(path: Path, new: list[dict]) -> list[dict]:
    """The rows of ``path`` with those of ``new`` added, a new row replacing an old one with the
    same (model, ratio, size, variant, seed); written back to ``path``."""
    rows = {}
    if path.exists():
        with path.open(newline="") as handle:
            rows = {_key(r): r for r in csv.DictReader(handle)}
    rows.update({_key(r): r for r in new})
    ordered = sorted(rows.values(), key=_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, ordered)
    return ordered


# --------------------------------------------------------------------------- markdown


def summarize(rows: list[dict]) -> dict[tuple, dict[str, np.ndarray]]:
    """(model, ratio, size, variant) -> {field: values over the seeds that ran, in seed order}."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not row["error"]:
            groups.setdefault(_key(row)[:4], []).append(row)
    return {key: {field: np.array([float(r[field]) for r in sorted(group, key=lambda r: int(r["seed"]))])
                  for field in ("test_acc", "rel_logits_error", "seed")}
            for key, group in groups.items()}


def _cell(values: np.ndarray | None, scale: float, spec: str) -> str:
    if values is None or not len(values):
        return "-"
    text = format(scale * values.mean(), spec)
    return text + (f" ± {format(scale * values.std(ddof=1), spec)}" if len(values) > 1 else "")


def pivot(summary: dict, model: str, ratio: float, sizes: list[int], variants: list[str], field: str,
          scale: float, spec: str) -> str:
    header = ["variant"] + [str(s) for s in sizes]
    body = [[v] + [_cell(summary.get((model, ratio, s, v), {}).get(field), scale, spec) for s in sizes]
            for v in variants if any((model, ratio, s, v) in summary for s in sizes)]
    return markdown_table(header, body, right=set(range(1, len(header))))


def _mean(summary: dict, key: tuple) -> float:
    entry = summary.get(key)
    return float(entry["test_acc"].mean()) if entry else math.nan


def goal_lines(summary: dict, model: str, sizes: list[int], variants: list[str]) -> list[str]:
    """The issue's goal at 1/8 params for each of our refitting asym variants."""
    lines = []
    for variant in (v for v in variants if v.startswith("asym") and v != "asym/no-refit"):
        small = _mean(summary, (model, GOAL_RATIO, GOAL_SMALL, variant))
        mid = _mean(summary, (model, GOAL_RATIO, GOAL_MID, variant))
        full = _mean(summary, (model, GOAL_RATIO, max(sizes), variant))
        behind = []
        for size in sizes:
            ours = summary.get((model, GOAL_RATIO, size, variant))
            plain = summary.get((model, GOAL_RATIO, size, "asym/no-refit"))
            if ours and plain:
                seeds = np.intersect1d(ours["seed"], plain["seed"])
                diff = ours["test_acc"][np.isin(ours["seed"], seeds)] - plain["test_acc"][np.isin(plain["seed"], seeds)]
                if diff.mean() < 0:
                    behind.append(str(size))
        if any(math.isnan(v) for v in (small, mid, full)):
            continue
        lines.append(
            f"- {variant}: {GOAL_SMALL} images {100 * small:.1f}% "
            f"({'meets' if small >= GOAL_ACC else 'MISSES'} >= {100 * GOAL_ACC:.0f}%); {GOAL_MID} images "
            f"{100 * mid:.1f}% vs {100 * full:.1f}% at {max(sizes)} "
            f"({'meets' if full - mid <= GOAL_GAP else 'MISSES'} within {100 * GOAL_GAP:.0f} points); "
            + (f"below no refit at {', '.join(behind)} images" if behind else "never below no refit"))
    return lines


def render(rows: list[dict]) -> str:
    summary = summarize(rows)
    models = sorted({k[0] for k in summary if k[1] != 1})
    variants = [v for v in VARIANTS if any(k[3] == v for k in summary)]
    out = ["# Data efficiency: pruned digits models vs calibration images", "",
           "Generated by `tools/bench_data.py` from `data_efficiency.csv` (see its docstring for the",
           "protocol and the variants). Uniform allocation at a params target, test accuracy (%) on",
           "models/digits_test.npz and relative logits error vs the original; mean ± sample std over",
           "the seeds (calibration subsets; 512 images is the whole pool, one run). No fine-tuning.", ""]
    for model in models:
        original = summary.get((model, 1.0, 0, "original"))
        out.append(f"## {model}" + (f" (original {100 * original['test_acc'].mean():.1f}%)" if original else ""))
        ratios = sorted({k[1] for k in summary if k[0] == model and k[1] != 1}, reverse=True)
        for ratio in ratios:
            sizes = sorted({k[2] for k in summary if k[0] == model and k[1] == ratio})
            seeds = max(len(v["seed"]) for k, v in summary.items() if k[0] == model and k[1] == ratio)
            out += ["", f"### 1/{ratio:g} of the params (up to {seeds} seeds)", "", "Test accuracy (%):", "",
                    pivot(summary, model, ratio, sizes, variants, "test_acc", 100, ".1f"), "",
                    "Relative logits error:", "",
                    pivot(summary, model, ratio, sizes, variants, "rel_logits_error", 1, ".3f")]
            if ratio == GOAL_RATIO:
                out += ["", f"Goal (issue 14, at 1/{GOAL_RATIO} of the params):", ""]
                out += goal_lines(summary, model, sizes, variants)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_bn"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[4, 8], help="params targets 1/r")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="calibration images")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (calibration subsets)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--csv", type=Path, default=ROOT / "docs" / "results" / "data_efficiency.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "data_efficiency.md")
    parser.add_argument("--render-only", action="store_true", help="only rewrite --out from --csv")
    args = parser.parse_args(argv)
    new = [] if args.render_only else [row for name in args.models for row in run_model(name, args)]
    rows = merge(args.csv, new)
    args.out.write_text(render(rows))
    print(f"wrote {args.csv} and {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
