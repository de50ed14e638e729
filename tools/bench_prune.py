"""End-to-end benchmarks of onnx-subprune on the shipped digits models.

memory   Peak resident set (ru_maxrss) of ``onnx-subprune prune models/vgg_bn.onnx --keep 0.5
         --method asym --device cpu --quiet`` with 256 vs 2048 calibration samples, one fresh
         child process per measurement (its own rusage, read with os.wait4, so runs do not
         pollute each other). The larger calibration sets are built in a temporary directory
         from models/digits_calib.npz: the 512 originals followed by copies shifted by a random
         (dy, dx) in [-2, 2]^2 minus (0, 0) (np.roll, vacated rows/columns filled with the blank
         pixel value, seeded), so every sample is distinct. Also measures the RSS of importing
         the package and loading the model, for context. Target: < 20% growth.
quality  Test accuracy (models/digits_test.npz) and relative logits error vs the original of
         LeNet-5 and the VGG-style model pruned at keep 0.5 and 0.25 by asym, seq, layer,
         weight-norm (with and without refit), random and activation-norm, calibrated on
         models/digits_calib.npz with the default config otherwise (device cpu, seed 0;
         --seeds N averages over seeds 0..N-1).

Both print a markdown table; --json / --csv also write the rows to a file.

Usage:
  python tools/bench_prune.py memory  [--samples 256 2048] [--repeats 1] [--json F] [--csv F]
  python tools/bench_prune.py quality [--models lenet5 vgg_bn] [--keeps 0.5 0.25] [--seeds 1]
                                      [--methods asym seq ...] [--json F] [--csv F]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import CALIB, MODELS, ROOT, TEST, environment, markdown_table

# (method, refit) pairs of the quality grid, in table order.
VARIANTS = (
    ("asym", True),
    ("seq", True),
    ("layer", True),
    ("weight-norm", True),
    ("weight-norm", False),
    ("random", True),
    ("activation-norm", True),
)


# --------------------------------------------------------------------------- output helpers


def write_outputs(args, payload: dict, rows: list[dict]) -> None:
    """Write ``payload`` as JSON to --json and the flat ``rows`` as CSV to --csv, if given."""
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    if args.csv and rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
        print(f"wrote {args.csv}", file=sys.stderr)


# --------------------------------------------------------------------------- memory


def shifted_copies(images: np.ndarray, count: int, max_shift: int, fill: float,
                   rng: np.random.Generator) -> np.ndarray:
    """``count`` copies of random ``images`` (N, C, H, W) rolled by a random non-zero
    (dy, dx) in [-max_shift, max_shift]^2, the wrapped-around rows/columns set to ``fill``."""
    shifts = [(dy, dx) for dy in range(-max_shift, max_shift + 1)
              for dx in range(-max_shift, max_shift + 1) if (dy, dx) != (0, 0)]
    # Sample (source image, shift) pairs without replacement so no copy is repeated.
    pairs = rng.choice(len(images) * len(shifts), size=count, replace=False)
    out = np.empty((count,) + images.shape[1:], dtype=images.dtype)
    for i, pair in enumerate(pairs):
        source, which = divmod(int(pair), len(shifts))
        dy, dx = shifts[which]
        img = np.roll(images[source], (dy, dx), axis=(-2, -1))
        if dy > 0:
            img[..., :dy, :] = fill
        elif dy < 0:
            img[..., dy:, :] = fill
        if dx > 0:
            img[..., :, :dx] = fill
        elif dx < 0:
            img[..., :, dx:] = fill
        out[i] = img
    return out


def build_calibration_sets(sizes: list[int], directory: Path, seed: int, fill_mode: str) -> dict[int, Path]:
    """Write one .npz per size: the first ``size`` samples of (originals + shifted copies)."""
    with np.load(CALIB) as archive:
        base = archive["input"]
    fill = float(base.min()) if fill_mode == "background" else 0.0
    extra = max(0, max(sizes) - len(base))
    pool = base
    if extra:
        pool = np.concatenate([base, shifted_copies(base, extra, 2, fill, np.random.default_rng(seed))])
    distinct = len(np.unique(pool.reshape(len(pool), -1), axis=0))
    if distinct != len(pool):
        raise SystemExit(f"augmented calibration pool has duplicates: {distinct} distinct of {len(pool)}")
    paths = {}
    for size in sizes:
        path = directory / f"calib_{size}.npz"
        np.savez(path, input=np.ascontiguousarray(pool[:size]))
        paths[size] = path
    return paths


def cli_command() -> list[str]:
    """The onnx-subprune console script next to this interpreter, or ``python -m onnx_subprune``."""
    script = Path(sys.executable).parent / "onnx-subprune"
    return [str(script)] if script.exists() else [sys.executable, "-m", "onnx_subprune"]


def run_measured(command: list[str], log_dir: Path, label: str) -> dict:
    """Run ``command`` as a child process; its own peak RSS (MiB), wall time and exit status."""
    out_path, err_path = log_dir / f"{label}.out", log_dir / f"{label}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 / (1 << 20) if sys.platform == "darwin" else 1 / 1024
    result = {
        "peak_rss_mib": usage.ru_maxrss * scale,
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "returncode": proc.returncode,
        "stdout": out_path.read_text(errors="replace").strip(),
    }
    if proc.returncode != 0:
        result["stderr"] = err_path.read_text(errors="replace").strip()[-2000:]
    return result


BASELINE_SNIPPETS = {
    "import + load model": (
        "from onnx_subprune.api import prune_file\n"
        "from onnx_subprune.graph import load_model\n"
        "load_model({model!r})\n"
    ),
    "import + load model + CPU session": (
        "from onnx_subprune.api import prune_file\n"
        "from onnx_subprune.graph import load_model\n"
        "from onnx_subprune import runtime\n"
        "runtime.session(load_model({model!r}), ['CPUExecutionProvider'])\n"
    ),
}


def cmd_memory(args) -> int:
    model = MODELS / "vgg_bn.onnx"
    sizes = sorted(set(args.samples))
    started = time.perf_counter()
    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmp:
        tmp = Path(tmp)
        paths = build_calibration_sets(sizes, tmp, args.seed, args.fill)
        if not args.no_baseline:
            for label, snippet in BASELINE_SNIPPETS.items():
                code = snippet.format(model=str(model))
                measures = [run_measured([sys.executable, "-c", code], tmp, f"baseline{i}")
                            for i in range(args.repeats)]
                runs.append(_summarize(label, None, measures))
        for size in sizes:
            command = cli_command() + [
                "prune", str(model), "-o", str(tmp / f"pruned_{size}.onnx"), "--calib", str(paths[size]),
                "--keep", str(args.keep), "--method", args.method, "--device", "cpu", "--quiet",
            ]
            measures = []
            for repeat in range(args.repeats):
                print(f"[memory] prune with {size} samples, run {repeat + 1}/{args.repeats} ...",
                      file=sys.stderr, flush=True)
                measures.append(run_measured(command, tmp, f"prune_{size}_{repeat}"))
            runs.append(_summarize(f"prune vgg_bn, {size} samples", size, measures))
    for run in runs:
        if run["failed"]:
            print(f"[memory] {run['label']} FAILED:\n{run['failed']}", file=sys.stderr)

    prunes = [r for r in runs if r["samples"] is not None and not r["failed"]]
    smallest = prunes[0] if prunes else None
    for run in runs:
        growth = None
        if smallest and run["samples"] is not None and not run["failed"]:
            growth = 100 * (run["peak_rss_mib"] / smallest["peak_rss_mib"] - 1)
        run["growth_pct"] = growth
        rows.append([
            run["label"],
            "-" if run["samples"] is None else str(run["samples"]),
            "FAILED" if run["failed"] else f"{run['peak_rss_mib']:.1f}",
            "-" if growth is None else f"{growth:+.1f}%",
            "FAILED" if run["failed"] else f"{run['wall_s']:.1f}",
            "FAILED" if run["failed"] else f"{run['cpu_s']:.1f}",
        ])
    print(f"\nPeak RSS, `onnx-subprune prune models/vgg_bn.onnx --keep {args.keep} --method {args.method}"
          f" --device cpu --quiet` (fresh process per run; median of {args.repeats})\n")
    print(markdown_table(["run", "calib samples", "peak RSS (MiB)", "growth vs smallest", "wall (s)", "CPU (s)"],
                         rows, right={1, 2, 3, 4, 5}))
    verdict = None
    if len(prunes) >= 2:
        growth = prunes[-1]["growth_pct"]
        verdict = growth < args.target
        print(f"\n{prunes[0]['samples']} -> {prunes[-1]['samples']} samples: peak RSS "
              f"{prunes[0]['peak_rss_mib']:.1f} -> {prunes[-1]['peak_rss_mib']:.1f} MiB "
              f"({growth:+.1f}%, target < {args.target:g}%: {'PASS' if verdict else 'FAIL'})")
    total = time.perf_counter() - started
    print(f"total benchmark time {total:.0f} s", file=sys.stderr)
    payload = {"benchmark": "memory", "model": str(model.relative_to(ROOT)), "keep": args.keep,
               "method": args.method, "repeats": args.repeats, "fill": args.fill, "seed": args.seed,
               "target_growth_pct": args.target, "pass": verdict, "total_s": total,
               "environment": environment(), "runs": runs}
    flat = [{k: v for k, v in r.items() if k not in ("measures",)} for r in runs]
    write_outputs(args, payload, flat)
    return 0 if all(not r["failed"] for r in runs) else 1


def _summarize(label: str, samples: int | None, measures: list[dict]) -> dict:
    failed = [m for m in measures if m["returncode"] != 0]
    return {
        "label": label,
        "samples": samples,
        "peak_rss_mib": statistics.median(m["peak_rss_mib"] for m in measures),
        "peak_rss_mib_max": max(m["peak_rss_mib"] for m in measures),
        "wall_s": statistics.median(m["wall_s"] for m in measures),
        "cpu_s": statistics.median(m["user_s"] + m["sys_s"] for m in measures),
        "failed": failed[0].get("stderr", f"exit {failed[0]['returncode']}") if failed else None,
        "measures": measures,
    }


# --------------------------------------------------------------------------- quality


def cmd_quality(args) -> int:
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.data import check_inputs, load_arrays
    from onnx_subprune.graph import load_model
    from onnx_subprune.metrics import count_params
    from onnx_subprune.pipeline import prune
    from onnx_subprune.verify import accuracy, fidelity, is_classifier, predict

    providers = ["CPUExecutionProvider"] if args.device == "cpu" else None
    variants = [v for v in VARIANTS if v[0] in args.methods] if args.methods else list(VARIANTS)
    seeds = list(range(args.seeds))
    test_arrays = load_arrays(TEST)
    calib_arrays = load_arrays(CALIB)
    started = time.perf_counter()
    results = []
    for name in args.models:
        path = MODELS / f"{name}.onnx" if not name.endswith(".onnx") else Path(name)
        model = load_model(path)
        calib = check_inputs(calib_arrays, model, f"calibration data {CALIB}")
        test = check_inputs(test_arrays, model, f"test data {TEST}", extra=("label",))
        if providers is None:
            from onnx_subprune import runtime
            providers = runtime.choose_providers(args.device)[0]
        reference = predict(model, test, providers, args.batch_size)
        output = next((k for k, v in reference.items() if is_classifier(v)), None)
        if output is None:
            raise SystemExit(f"{path}: no classifier-shaped output")
        params = count_params(model)
        results.append({
            "model": path.stem, "keep": 1.0, "method": "original", "refit": None, "seed": None,
            "params": params, "params_ratio": 1.0,
            "test_acc": accuracy(reference[output], test_arrays["label"]),
            "rel_logits_error": 0.0, "calib_output_error": None, "prune_s": 0.0, "error": None,
        })
        for keep in args.keeps:
            for method, refit in variants:
                for seed in seeds:
                    label = f"{path.stem} keep={keep} {method} refit={refit} seed={seed}"
                    print(f"[quality] {label} ...", file=sys.stderr, flush=True)
                    row = {"model": path.stem, "keep": keep, "method": method, "refit": refit, "seed": seed}
                    try:
                        config = PruneConfig(keep=keep, method=method, refit=refit, seed=seed, device=args.device)
                        clock = time.perf_counter()
                        result = prune(model, calib, config)
                        seconds = time.perf_counter() - clock
                        outputs = predict(result.model, test, providers, args.batch_size)
                        row.update(
                            params=result.report.params["after"],
                            params_ratio=result.report.params["after"] / result.report.params["before"],
                            test_acc=accuracy(outputs[output], test_arrays["label"]),
                            rel_logits_error=fidelity({output: reference[output]},
                                                      {output: outputs[output]})[output]["relative_error"],
                            calib_output_error=result.report.output_error,
                            prune_s=seconds, error=None,
                        )
                    except Exception as exc:  # record and go on: one broken method must not hide the rest
                        row.update(params=None, params_ratio=None, test_acc=None, rel_logits_error=None,
                                   calib_output_error=None, prune_s=None,
                                   error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                        print(f"[quality]   ERROR {row['error']}", file=sys.stderr, flush=True)
                    results.append(row)
    total = time.perf_counter() - started

    table, summary = [], []
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["model"], row["keep"], row["method"], row["refit"]), []).append(row)
    for (model_name, keep, method, refit), rows in groups.items():
        ok = [r for r in rows if r["error"] is None]
        entry = {"model": model_name, "keep": keep, "method": method, "refit": refit,
                 "seeds": len(rows), "errors": len(rows) - len(ok)}
        for key in ("params_ratio", "test_acc", "rel_logits_error", "prune_s"):
            values = [r[key] for r in ok]
            entry[key] = float(np.mean(values)) if values else None
            entry[key + "_std"] = float(np.std(values)) if len(values) > 1 else None
        summary.append(entry)
        table.append([
            model_name,
            "1.0" if method == "original" else f"{keep:g}",
            method,
            "-" if refit is None else ("yes" if refit else "no"),
            _fmt(entry, "params_ratio", "{:.3f}"),
            _fmt(entry, "test_acc", "{:.2%}", pct=True),
            _fmt(entry, "rel_logits_error", "{:.4f}"),
            _fmt(entry, "prune_s", "{:.1f}"),
        ] + ([_first_error(rows)] if any(r["error"] for r in results) else []))
    header = ["model", "keep", "method", "refit", "params ratio", "test acc", "rel. logits error", "prune seconds"]
    if any(r["error"] for r in results):
        header.append("errors")
    print(f"\nDigits test set ({len(test_arrays['label'])} images), calibration {CALIB.relative_to(ROOT)}, "
          f"device {args.device}, seeds {seeds} ({'mean ± std' if len(seeds) > 1 else 'single run'})\n")
    print(markdown_table(header, table, right={1, 4, 5, 6, 7}))
    print(f"total benchmark time {total:.0f} s", file=sys.stderr)
    payload = {"benchmark": "quality", "calibration": str(CALIB.relative_to(ROOT)),
               "test": str(TEST.relative_to(ROOT)), "device": args.device, "seeds": seeds,
               "total_s": total, "environment": environment(), "summary": summary, "runs": results}
    write_outputs(args, payload, results)
    return 0 if not any(r["error"] for r in results) else 1


def _first_error(rows: list[dict]) -> str:
    failed = [r for r in rows if r["error"]]
    return f"{len(failed)}/{len(rows)} failed: {failed[0]['error']}" if failed else ""


def _fmt(entry: dict, key: str, spec: str, pct: bool = False) -> str:
    value = entry[key]
    if value is None:
        return "ERROR"
    text = spec.format(value)
    std = entry.get(key + "_std")
    if std is not None:
        text += " ± " + (f"{100 * std:.2f}%" if pct else spec.format(std))
    return text


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    mem = sub.add_parser("memory", help="peak RSS of the CLI prune vs calibration set size")
    mem.add_argument("--samples", type=int, nargs="+", default=[256, 2048], help="calibration set sizes")
    mem.add_argument("--repeats", type=int, default=1, help="runs per size (median reported)")
    mem.add_argument("--keep", type=float, default=0.5)
    mem.add_argument("--method", default="asym")
    mem.add_argument("--seed", type=int, default=0, help="seed of the augmentation")
    mem.add_argument("--fill", choices=("background", "zero"), default="background",
                     help="value of pixels shifted in: the blank-pixel value of the normalized data "
                          "(its minimum, -0.94) or literal 0.0")
    mem.add_argument("--target", type=float, default=20.0, help="growth target in percent")
    mem.add_argument("--no-baseline", action="store_true", help="skip the import/load baseline runs")

    qual = sub.add_parser("quality", help="test accuracy / logits error of pruned models by method")
    qual.add_argument("--models", nargs="+", default=["lenet5", "vgg_bn"],
                      help="names in models/ (or .onnx paths)")
    qual.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25])
    qual.add_argument("--methods", nargs="+", help="restrict to these methods (default: all variants)")
    qual.add_argument("--seeds", type=int, default=1, help="average over seeds 0..N-1")
    qual.add_argument("--device", default="cpu", choices=("cpu", "auto", "cuda"))
    qual.add_argument("--batch-size", type=int, default=64, help="batch size of the test-set inference")

    for p in (mem, qual):
        p.add_argument("--json", help="also write the results as JSON here")
        p.add_argument("--csv", help="also write the rows as CSV here")
    args = parser.parse_args(argv)
    if args.command == "memory":
        if args.repeats < 1:
            parser.error("--repeats must be >= 1")
        return cmd_memory(args)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    return cmd_quality(args)


if __name__ == "__main__":
    sys.exit(main())
