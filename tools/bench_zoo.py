"""Real pretrained models of the zoo (models/zoo.toml): ours vs the ONNX-level peer.

quality: for every fetched zoo model and params target (default 0.75 and 0.5), prune with ours
(asym, --allocation sensitivity by default, --calib images of the model's in-domain recipe) and
with onnxsim 0.8.1 at the params ours reached (the peer's sparsity bisected to the same budget;
its best variant by output error among L2, Wanda and Wanda + ridge refit). Both are measured on
held-out in-domain inputs (the recipe's eval split): the zoo's task metric against the original
(top-1 agreement, OCR character error rate, detection recall of the original's boxes, embedding
cosine), the relative output error, the params ratio, the latency ratio at batch 1 on
onnxruntime CPU (pruned / original, alternating runs, median), seconds, and the layers each left
unpruned. One CSV row per model, target and method, written as it goes.

latency: the latency ratio alone, without calibration (latency depends on shapes, not on which
channels are kept): every group keeps the same fraction, its first channels, with and without
rounding the kept counts to multiples of N.

report: the markdown tables, a plot, and the zoo block of docs/RESULTS.md from the CSVs.

Usage:
  python tools/zoo.py fetch
  python tools/bench_zoo.py quality [--models NAME ...] [--targets 0.75 0.5] [--calib 16] [--eval 8]
         [--allocation sensitivity] [--round-to 1] [--sensitivity-samples N] [--no-peer]
  python tools/bench_zoo.py latency [--models NAME ...] [--keeps 0.75 0.5] [--round-to 1 8]
  python tools/bench_zoo.py remeasure [--models NAME ...] [--task [--eval N]]   # latency (or task metric) of the kept pruned models again
  python tools/bench_zoo.py report
  python tools/bench_zoo.py scores MODEL PRUNED.onnx ...   # a detector's boxes: how pruning moved their scores
  python tools/bench_zoo.py noise MODEL [--scales 0.001 0.003 0.01]  # task metric against output error from weight noise
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx

import zoo
from common import ROOT

OUT = ROOT / "docs" / "results"
QUALITY_CSV = OUT / "zoo_quality.csv"
LATENCY_CSV = OUT / "zoo_latency.csv"
RESULTS = ROOT / "docs" / "RESULTS.md"
CPU = ["CPUExecutionProvider"]
PEER_VARIANTS = ("l2", "wanda", "wanda+ridge")
QUALITY_FIELDS = ["model", "exporter", "task", "target", "method", "round_to", "status", "groups", "params_in_groups",
                  "params_ratio", "metric", "metric_value", "metric_original", "higher_is_better", "metric_confident",
                  "output_error", "latency_ratio", "seconds", "unpruned", "note", "calib", "allocation", "selections"]
CALIB = 16
"""Calibration inputs of an entry without its own ``calib`` in models/zoo.toml."""
LATENCY_FIELDS = ["model", "keep", "round_to", "params_ratio", "macs_ratio", "latency_ratio"]


# --------------------------------------------------------------------------- measuring


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """The tool's error of one output (``onnx_subprune.verify.output_error``): ||b - a|| / ||a||,
    or the channel-balanced one where the output mixes scales (a YOLO head's pixel boxes and
    0-1 class scores, whose loss the plain error hides)."""
    from onnx_subprune.verify import fidelity, output_error as tool_error

    return tool_error(fidelity({"output": a}, {"output": b})["output"])


def output_error(entry: dict, original: str, pruned: str, feed: dict) -> float:
    """Largest :func:`relative_error` over the float outputs, on ``feed``."""
    errors = [relative_error(a, b) for a, b in zip(zoo.run_model(original, feed, entry), zoo.run_model(pruned, feed, entry))
              if a.dtype.kind == "f" and a.shape == b.shape]
    return max(errors) if errors else float("nan")


def latency_ratio(entry: dict, original: str, pruned: str, feed: dict, rounds: int = 5, repeats: int = 15) -> float:
    """Median batch-1 latency of ``pruned`` over ``original`` on CPU, runs alternating."""
    one = zoo.single_samples(entry, feed)[0]
    sessions = [zoo.make_session(original), zoo.make_session(pruned)]
    for sess in sessions:
        for _ in range(3):
            sess.run(None, one)
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for index, sess in enumerate(sessions):
            for _ in range(repeats):
                start = time.perf_counter()
                sess.run(None, one)
                times[index].append(time.perf_counter() - start)
    return float(np.median(times[1]) / np.median(times[0]))


def task_metric(entry: dict, original: str, pruned: str, n: int, seed: int) -> dict:
    return zoo.metrics()[entry["metric"]](entry, original, pruned, n, seed)


def unpruned_layers(model: onnx.ModelProto, pruned: onnx.ModelProto) -> list[str]:
    """Conv/Gemm/MatMul nodes whose constant weight kept its shape."""
    from onnx_subprune.graph import prepare, read_constants

    def shapes(m):
        m = prepare(m)
        layers = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1]
        values = read_constants(m, {n.input[1] for n in layers})
        return {n.name: values[n.input[1]].shape for n in layers if n.input[1] in values}

    before, after = shapes(model), shapes(pruned)
    return sorted(name for name, shape in before.items() if after.get(name) == shape)


# --------------------------------------------------------------------------- ours and the peer


def prune_ours(model: onnx.ModelProto, calib: dict, target: float, args) -> tuple[onnx.ModelProto, dict]:
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.pipeline import prune

    extra = {} if args.sensitivity_samples is None else {"sensitivity_samples": args.sensitivity_samples}
    config = PruneConfig(target_params=target, method="asym", allocation=args.allocation,
                         round_to=args.round_to, device="cpu", seed=args.seed, **extra)
    result = prune(model, calib, config)
    return result.model, result.report


class Peer:
    """onnxsim 0.8.1's structured pruning brought to a params budget (bisection on its sparsity)."""

    def __init__(self, model: onnx.ModelProto, calib: dict, entry: dict | None = None):
        from onnxsim import finetune, pruning

        from onnx_subprune.metrics import count_params

        self.pruning, self.finetune, self.count = pruning, finetune, count_params
        self.model = model
        samples = len(next(iter(calib.values())))
        self.batches = zoo.single_samples(entry, calib) if entry is not None else [
            {k: v[i:i + 1] for k, v in calib.items()} for i in range(samples)]

    def _prune(self, ranking: str, sparsity: float):
        if ranking == "l2":
            return self.pruning.apply_structured_pruning(self.model, sparsity=sparsity)
        return self.pruning.apply_structured_wanda_pruning(
            self.model, calibration_data=self.batches, num_samples=len(self.batches), sparsity=sparsity,
            providers=CPU)

    def sparsity_for(self, budget: int, ranking: str = "l2") -> tuple[float, bool]:
        """Smallest sparsity at which ``ranking`` ("l2" or "wanda") leaves at most ``budget``
        params; (0.999, False) when even that misses it. Per ranking: at one sparsity wanda can
        keep more params than l2 (LeNet-5 at 0.85: 8545 vs 7775); the data do not change them."""
        params = lambda s: self.count(self._prune(ranking, s))
        if params(0.999) > budget:
            return 0.999, False
        low, high = 0.0, 0.999
        for _ in range(12):
            middle = (low + high) / 2
            low, high = (low, middle) if params(middle) <= budget else (middle, high)
        return high, True

    def variant(self, name: str, sparsity: float) -> onnx.ModelProto:
        pruned = self._prune("l2" if name == "l2" else "wanda", sparsity)
        if name.endswith("+ridge"):
            pruned = self.finetune.apply_pruning_finetune(self.model, pruned, calibration_data=self.batches,
                                                          num_samples=len(self.batches), providers=CPU)
        return pruned


# --------------------------------------------------------------------------- quality


def quality(args) -> None:
    from onnx_subprune.analyze import analyze, coverage
    from onnx_subprune.graph import prepare
    from onnx_subprune.metrics import count_params

    OUT.mkdir(parents=True, exist_ok=True)
    done = _existing(QUALITY_CSV, ("model", "target", "method")) if args.resume else set()
    rows_out = _writer(QUALITY_CSV, QUALITY_FIELDS, append=args.resume)
    for entry in _entries(args.models):
        path = zoo.cached_path(entry)
        if path is None:
            print(f"{entry['name']}: not fetched (python tools/zoo.py fetch)", file=sys.stderr)
            continue
        model = onnx.load(str(path))
        ready = prepare(model)
        analysis = analyze(ready)
        reach = coverage(ready, analysis)
        base = dict(model=entry["name"], exporter=entry["exporter"], task=entry["task"],
                    groups=len(analysis.groups), params_in_groups=round(reach["fraction"], 4))
        samples = args.calib or int(entry.get("calib", CALIB))
        calib = zoo.feeds(entry, samples, args.seed, "calib")
        evaluation = zoo.feeds(entry, args.eval, args.seed, "eval")
        base["calib"] = samples
        with tempfile.TemporaryDirectory() as tmp:
            for target in args.targets:
                if (entry["name"], str(target), "ours") in done:
                    continue
                row = dict(base, target=target, method="ours", round_to=args.round_to or "default")
                clock = time.perf_counter()
                try:
                    pruned, report = prune_ours(model, zoo.samples_first(entry, calib), target, args)
                except Exception as exc:  # a failure is a row of the benchmark, never its end
                    row.update(status="failed", note=_one_line(exc))
                    rows_out(row)
                    print(f"{entry['name']} {target} ours: {row['note']}", file=sys.stderr)
                    if args.verbose:
                        traceback.print_exc()
                    continue
                seconds = time.perf_counter() - clock
                ours_path = str(kept_model(entry["name"], target, "ours"))
                onnx.save(pruned, ours_path)
                row.update(_measure(entry, str(path), ours_path, model, pruned, evaluation, args),
                           status="ok", seconds=round(seconds, 1), allocation=_allocation_text(report),
                           selections=sum(1 for g in report.groups if not g.producers),
                           note="; ".join(report.warnings)[:300])
                rows_out(row)
                print(_line(row), file=sys.stderr)
                if args.no_peer:
                    continue
                rows_out(_peer_row(entry, str(path), model, calib, evaluation, count_params(pruned), base,
                                   target, tmp, args))


def _allocation_text(report) -> str:
    """The allocation written, with the whole-model output errors it was chosen by and where
    they were measured (``fold``: fitted without a cross-validation fold, measured on it;
    ``held-out``; ``in-sample``)."""
    target = report.target
    if target.compared is None:
        return target.allocation
    on = target.compared_on or ""
    where = "fold" if "fits of this check" in on else "held-out" if "held-out" in on else "in-sample"
    return f"{target.allocation} ({where}: " + ", ".join(f"{k} {v:.3g}" for k, v in target.compared.items()) + ")"


def _peer_row(entry, path, model, calib, evaluation, budget, base, target, tmp, args) -> dict:
    row = dict(base, target=target, method="onnxsim")
    clock = time.perf_counter()
    try:
        peer = Peer(model, calib, entry)
        found = {ranking: peer.sparsity_for(budget, ranking) for ranking in ("l2", "wanda")}
        best = None
        for name in PEER_VARIANTS:
            sparsity, met = found["l2" if name == "l2" else "wanda"]
            pruned = peer.variant(name, sparsity)
            out = os.path.join(tmp, f"peer_{name}.onnx")
            onnx.save(pruned, out)
            error = output_error(entry, path, out, evaluation)
            if best is None or error < best[0]:
                best = (error, name, pruned, out, sparsity, met)
    except Exception as exc:
        row.update(status="failed", note=_one_line(exc))
        print(f"{entry['name']} {target} onnxsim: {row['note']}", file=sys.stderr)
        return row
    _, name, pruned, _, sparsity, met = best
    out = str(kept_model(entry["name"], target, "onnxsim"))
    onnx.save(pruned, out)
    row.update(_measure(entry, path, out, model, pruned, evaluation, args), status="ok",
               seconds=round(time.perf_counter() - clock, 1),
               note=f"best variant {name}, sparsity {sparsity:.3f}" + ("" if met else ", budget not reached"))
    print(_line(row), file=sys.stderr)
    return row


def _measure(entry, original: str, pruned_path: str, model, pruned, evaluation, args) -> dict:
    from onnx_subprune.metrics import count_params

    metric = task_metric(entry, original, pruned_path, args.eval, args.seed)
    original_value = next((metric[k] for k in ("original", "cer_original") if k in metric), None)
    return dict(
        params_ratio=round(count_params(pruned) / count_params(model), 4),
        metric=metric["metric"], metric_value=_round(metric["value"]),
        metric_original=_round(original_value), higher_is_better=metric["higher_is_better"],
        metric_confident=_round(metric.get("confident_value")),
        output_error=_round(output_error(entry, original, pruned_path, evaluation)),
        latency_ratio=round(latency_ratio(entry, original, pruned_path, evaluation), 3),
        unpruned=len(unpruned_layers(model, pruned)),
    )


def kept_model(name: str, target: float, method: str) -> Path:
    """Where a benchmarked pruned model is kept (in the zoo cache), for `remeasure`."""
    folder = zoo.cache_dir() / "bench"
    folder.mkdir(exist_ok=True)
    return folder / f"{name}_{target}_{method}.onnx"


def remeasure(args) -> None:
    """Time again the kept pruned models of the quality CSV's rows (latency ratio), or with
    ``--task`` measure their task metric again (on ``--eval`` inputs). The CSV is written back
    under the current header (columns an older one lacks stay empty)."""
    rows = list(csv.DictReader(open(QUALITY_CSV)))
    for row in _latest(rows):
        if row["status"] != "ok" or (args.models and row["model"] not in args.models):
            continue
        saved = kept_model(row["model"], float(row["target"]), row["method"])
        entry = zoo.get_entry(row["model"])
        if not saved.exists():
            continue
        original = str(zoo.cached_path(entry))
        if args.task:
            metric = task_metric(entry, original, str(saved), args.eval, args.seed)
            row.update(metric_value=_round(metric["value"]), metric_confident=_round(metric.get("confident_value")))
            print(row["model"], row["target"], row["method"], metric["metric"], row["metric_value"],
                  row["metric_confident"], file=sys.stderr)
            continue
        feed = zoo.feeds(entry, 1, args.seed, "eval")
        row["latency_ratio"] = round(latency_ratio(entry, original, str(saved), feed), 3)
        print(row["model"], row["target"], row["method"], row["latency_ratio"], file=sys.stderr)
    with open(QUALITY_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, QUALITY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------- latency


def latency(args) -> None:
    from onnx_subprune.analyze import analyze
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.graph import prepare
    from onnx_subprune.metrics import count_macs, count_params
    from onnx_subprune.rewrite import rewrite
    from onnx_subprune.types import GroupPlan

    OUT.mkdir(parents=True, exist_ok=True)
    write = _writer(LATENCY_CSV, LATENCY_FIELDS, append=args.resume)
    for entry in _entries(args.models):
        path = zoo.cached_path(entry)
        if path is None:
            continue
        model = prepare(onnx.load(str(path)))
        groups = analyze(model).groups
        if not groups:
            continue
        # latency depends on shapes only: any recipe that fills the inputs will do
        recipe = entry["recipe"] if entry["recipe"] in zoo.recipes() else "photo"
        feed = zoo.feeds(entry, 1, args.seed, "eval", recipe=recipe)
        with tempfile.TemporaryDirectory() as tmp:
            original = os.path.join(tmp, "original.onnx")
            onnx.save(model, original)
            for keep in args.keeps:
                for step in args.round_to:
                    config = PruneConfig(keep=keep, round_to=step)
                    plans = [GroupPlan(g, tuple(range(config.kept_count(g.channels)))) for g in groups]
                    pruned = rewrite(model, plans)
                    out = os.path.join(tmp, "pruned.onnx")
                    onnx.save(pruned, out)
                    row = dict(model=entry["name"], keep=keep, round_to=step,
                               params_ratio=round(count_params(pruned) / count_params(model), 4),
                               macs_ratio=round(count_macs(pruned) / max(count_macs(model), 1), 4),
                               latency_ratio=round(latency_ratio(entry, original, out, feed), 3))
                    write(row)
                    print(row, file=sys.stderr)


# --------------------------------------------------------------------------- report


def _latest(rows: list[dict]) -> list[dict]:
    """The last row of each (model, target, method) (a rerun appends), in the manifest's model
    order, targets from high to low, ours before the peer."""
    order = {entry["name"]: index for index, entry in enumerate(zoo.load_manifest())}
    latest = {(r["model"], r["target"], r["method"]): r for r in rows}
    return sorted(latest.values(), key=lambda r: (order.get(r["model"], len(order)), -float(r["target"]),
                                                  r["method"] != "ours"))


def report(args) -> None:
    lines = ["## Real pretrained models (the zoo)", ""]
    if QUALITY_CSV.exists():
        rows = _latest(list(csv.DictReader(open(QUALITY_CSV))))
        lines += _quality_tables(rows)
        _plot(rows, ROOT / "docs" / "zoo_quality.png")
        lines += ["", "![zoo quality](zoo_quality.png)", ""]
    if LATENCY_CSV.exists():
        lines += _latency_table(list(csv.DictReader(open(LATENCY_CSV))))
    block = "\n".join(lines) + "\n"
    (OUT / "zoo.md").write_text(block)
    text = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    start, end = "<!-- zoo:start -->", "<!-- zoo:end -->"
    body = f"{start}\n{block}{end}"
    if start in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    RESULTS.write_text(text)
    print(block)


def _quality_tables(rows: list[dict]) -> list[str]:
    lines = [
        "Reproduce: `python tools/zoo.py fetch && python tools/bench_zoo.py quality && python tools/bench_zoo.py report`.",
        "Ours: asym with the default sensitivity allocation, which is checked against the uniform one on the whole",
        "pruned model (column `allocation`: the one written, with the output error of each, measured on `fold`: the",
        "calibration samples of one cross-validation fold, by models fitted without them (below 128 samples),",
        "`held-out`: held-out calibration samples, or, in rows without that word, measured before the fold check: on",
        "held-out samples from 128 samples up, else in-sample; `sensitivity, unchecked`: rows measured before any",
        "check); `calib` in-domain calibration inputs of the model's recipe. onnxsim 0.8.1:",
        "the best of L2, Wanda and Wanda + ridge refit at the params ours reached. Metric: the zoo's task metric of the",
        "pruned model against the original on held-out in-domain inputs (CER: lower is better, original's own CER in",
        "brackets; `confident`: the recall of the original's boxes that it scores at least 0.05 above its threshold);",
        "error: relative output error, channel-balanced for outputs whose channels differ in scale by 100x",
        "or more; latency: pruned / original at batch 1 on onnxruntime CPU. `groups`: channel groups, `+ N sel.`: the",
        "input selections the run added because the groups alone could not reach the target (not in `params in groups`).",
        "",
        "| model | exporter | groups | params in groups | target | method | calib | allocation | params | metric | error | latency | s | unpruned layers | note |",
        "|---|---|---:|---:|---:|---|---:|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['exporter']} | {r['groups']} | {_pct(r['params_in_groups'])} | "
                         f"{r['target']} | {r['method']} | {_calib(r)} | | failed | | | | | | {r['note']} |")
            continue
        metric = "-" if r["metric"] == "none" else f"{r['metric']} {_num(r['metric_value'])}"
        if r["metric_original"] not in ("", "None", "nan"):
            metric += f" [{_num(r['metric_original'])}]"
        if r.get("metric_confident") not in (None, "", "None", "nan"):
            metric += f" (confident {_num(r['metric_confident'])})"
        groups = r["groups"] + (f" + {r['selections']} sel." if r.get("selections") not in (None, "", "0") else "")
        lines.append(
            f"| {r['model']} | {r['exporter']} | {groups} | {_pct(r['params_in_groups'])} | {r['target']} | "
            f"{r['method']} | {_calib(r)} | {_allocation_cell(r)} | {_num(r['params_ratio'])} | {metric} | "
            f"{_num(r['output_error'])} | "
            f"{_num(r['latency_ratio'])} | {r['seconds']} | {r['unpruned']} | {r['note'][:120]} |")
    return lines


def _calib(row: dict) -> str:
    """Rows written before the calib column were calibrated on the default count."""
    return row.get("calib") or str(CALIB)


def _allocation_cell(row: dict) -> str:
    """Rows written before the whole-model check have no allocation (sensitivity, unchecked)."""
    if row["method"] != "ours":
        return ""
    return row.get("allocation") or "sensitivity, unchecked"


def _latency_table(rows: list[dict]) -> list[str]:
    lines = ["", "Latency pruned / original at batch 1 (onnxruntime CPU, 2 threads), every group at one kept "
             "fraction, with and without rounding the counts (`python tools/bench_zoo.py latency`):", "",
             "| model | keep | round to | params | MACs | latency |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['keep']} | {r['round_to']} | {_num(r['params_ratio'])} | "
                     f"{_num(r['macs_ratio'])} | {_num(r['latency_ratio'])} |")
    return lines


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for method, marker in (("ours", "o"), ("onnxsim", "x")):
        ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        params = [float(r["params_ratio"]) for r in ok]
        axes[0].scatter(params, [max(float(r["output_error"]), 1e-4) for r in ok], marker=marker, label=method)
        axes[1].scatter(params, [float(r["latency_ratio"]) for r in ok], marker=marker, label=method)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("params ratio")
    axes[0].set_ylabel("relative output error (held-out)")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[1].set_xlabel("params ratio")
    axes[1].set_ylabel("latency pruned / original (batch 1, CPU)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend()
    figure.suptitle("zoo models at params targets 0.75 and 0.5")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --------------------------------------------------------------------------- helpers


def _entries(names: list[str] | None) -> list[dict]:
    entries = zoo.load_manifest()
    if names:
        unknown = set(names) - {e["name"] for e in entries}
        if unknown:
            raise SystemExit(f"unknown zoo models: {', '.join(sorted(unknown))}")
        entries = [e for e in entries if e["name"] in names]
    return entries


def _writer(path: Path, fields: list[str], append: bool):
    """A function appending one row to the CSV ``path`` (truncated first unless ``append``);
    rows of an older header are carried over to ``fields`` (new columns empty)."""
    kept = []
    if append and path.exists():
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames == fields:
                kept = None
            else:
                kept = list(reader)
    if kept is not None:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows({k: row.get(k, "") for k in fields} for row in kept)

    def write(row: dict) -> None:
        with open(path, "a", newline="") as handle:
            csv.DictWriter(handle, fields).writerow({k: row.get(k, "") for k in fields})

    return write


def _existing(path: Path, keys: tuple[str, ...]) -> set[tuple]:
    if not path.exists():
        return set()
    return {tuple(r[k] for k in keys) for r in csv.DictReader(open(path)) if r.get("status") == "ok"}


def _line(row: dict) -> str:
    return (f"{row['model']} {row['target']} {row['method']}: params {row['params_ratio']}, "
            f"{row['metric']} {row['metric_value']} (orig {row['metric_original']}), error {row['output_error']}, "
            f"latency {row['latency_ratio']}, {row.get('seconds')} s, unpruned {row['unpruned']}")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"


def _round(value) -> float | None:
    return None if value is None else round(float(value), 4)


def _num(text: str) -> str:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text)
    return "nan" if math.isnan(value) else f"{value:.3g}"


def _pct(text: str) -> str:
    try:
        return f"{float(text):.0%}"
    except (TypeError, ValueError):
        return str(text)


def scores(args) -> None:
    """Per pruned model of a detector: the share of the original's boxes still scored above the
    threshold (each box's best match, not the metric's one-to-one matching), the mean and median
    change of their scores, and the boxes lost among those the original scores within
    ``--near`` of its threshold and above."""
    from zoo_tasks import _DECODERS, score_changes

    entry = zoo.get_entry(args.model)
    if entry["metric"] not in _DECODERS:
        sys.exit(f"scores: {args.model} is not a detector (its metric is {entry['metric']})")
    original = str(zoo.cached_path(entry) or zoo.fetch(entry))
    threshold = float(entry.get("score_thresh", _DECODERS[entry["metric"]][1]))
    print("| model | boxes | kept above the threshold | mean score change | median | lost near the threshold | lost above |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in args.pruned:
        before, after = score_changes(entry, original, path, args.eval, args.seed)
        lost, near = after < threshold, before < threshold + args.near
        print(f"| {Path(path).name} | {len(before)} | {1 - lost.mean():.3f} | {np.mean(after - before):.3f} | "
              f"{np.median(after - before):.3f} | {int(np.sum(lost & near))} of {int(near.sum())} | "
              f"{int(np.sum(lost & ~near))} of {int(np.sum(~near))} |")


def noise(args) -> None:
    """How much output error a model's task metric tolerates, whatever causes it: every Conv,
    Gemm and MatMul constant weight is multiplied elementwise by (1 + s * N(0, 1)) for each
    scale s, and the noisy model's output error and task metric are measured against the
    original on the eval inputs, as for a pruned model."""
    from onnx import numpy_helper

    entry = zoo.get_entry(args.model)
    original = str(zoo.cached_path(entry) or zoo.fetch(entry))
    evaluation = zoo.feeds(entry, args.eval, args.seed, "eval")
    print("| weight noise s | output error | metric | value | confident |")
    print("|---:|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            model = onnx.load(original)
            weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
            rng = np.random.default_rng(args.seed)
            tensors = [init for init in model.graph.initializer if init.name in weights]
            tensors += [a.t for n in model.graph.node if n.op_type == "Constant" and n.output[0] in weights
                        for a in n.attribute if a.name == "value"]
            for tensor in tensors:
                value = numpy_helper.to_array(tensor)
                if value.dtype.kind == "f":
                    noisy = value * (1 + scale * rng.standard_normal(value.shape))
                    tensor.CopyFrom(numpy_helper.from_array(noisy.astype(value.dtype), tensor.name))
            path = str(Path(tmp) / f"noise_{scale}.onnx")
            onnx.save(model, path)
            metric = task_metric(entry, original, path, args.eval, args.seed)
            confident = metric.get("confident_value")
            print(f"| {scale:g} | {output_error(entry, original, path, evaluation):.4f} | {metric['metric']} | "
                  f"{metric['value']:.3f} | {'-' if confident is None else f'{confident:.3f}'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--targets", type=float, nargs="+", default=[0.75, 0.5])
    q.add_argument("--calib", type=int, default=None,
                   help="calibration inputs (default: the entry's calib in models/zoo.toml, else 16)")
    q.add_argument("--eval", type=int, default=8, help="held-out evaluation inputs (default 8)")
    q.add_argument("--allocation", default="sensitivity")
    q.add_argument("--round-to", type=int, default=None, help="default: the tool's (8 with a target)")
    q.add_argument("--sensitivity-samples", type=int, default=None, help="default: the tool's (256)")
    q.add_argument("--no-peer", action="store_true")
    q.add_argument("--verbose", action="store_true")
    lat = sub.add_parser("latency")
    lat.add_argument("--keeps", type=float, nargs="+", default=[0.75, 0.5])
    lat.add_argument("--round-to", type=int, nargs="+", default=[1, 8])
    sub.add_parser("report")
    again = sub.add_parser("remeasure", help="time (or with --task measure) the kept pruned models of the quality CSV again")
    again.add_argument("--task", action="store_true", help="measure their task metric again instead")
    again.add_argument("--eval", type=int, default=8, help="held-out evaluation inputs for --task (default 8)")
    for p in (q, lat, again):
        p.add_argument("--models", nargs="+")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--resume", action="store_true", help="append to the CSV, skipping finished rows")
    shifts = sub.add_parser("scores", help="a detector's boxes: how each pruned model moves the original's scores")
    shifts.add_argument("model", help="zoo entry (a det_recall_* metric)")
    shifts.add_argument("pruned", nargs="+", help="pruned ONNX files of that model")
    shifts.add_argument("--eval", type=int, default=32, help="eval inputs (default 32)")
    shifts.add_argument("--near", type=float, default=0.1, help="boxes scored within this of the threshold (default 0.1)")
    shifts.add_argument("--seed", type=int, default=0)
    noisy = sub.add_parser("noise", help="a model's task metric against the output error that random weight noise causes")
    noisy.add_argument("model", help="zoo entry")
    noisy.add_argument("--scales", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1],
                       help="relative weight noise levels (default 0.001 0.003 0.01 0.03 0.1)")
    noisy.add_argument("--eval", type=int, default=32, help="eval inputs (default 32)")
    noisy.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"quality": quality, "latency": latency, "report": report, "remeasure": remeasure,
     "scores": scores, "noise": noise}[args.command](args)


if __name__ == "__main__":
    main()
