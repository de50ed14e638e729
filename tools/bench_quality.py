"""Quality of pruned digits models by method and compression, with the ONNX-level peer.

For each reference model in models/ (lenet5, vgg_bn, resnet_small by default), each full-model
params compression ratio r (2, 4, 8, 16: ``PruneConfig(target_params=1/r)``) and each seed, a
calibration subset of --calib-samples images (default 128) is drawn without
replacement from models/digits_calib.npz (seed s: ``np.random.default_rng(s)``; the prune's own
``seed`` is s too), the model is pruned by every variant, and the pruned model is evaluated on
models/digits_test.npz: top-1 accuracy, relative logits error ||z' - z|| / ||z|| against the
original model, params and MACs (onnx_subprune.metrics) relative to the original. No
fine-tuning anywhere.

Our variants (onnx_subprune.pipeline.prune, device cpu, default config otherwise):
  asym, seq, layer          greedy selection + least-squares refit, the three schedules
  asym/no-refit             asym selection, original weights of the kept channels
  weight-norm               L1 norm ranking + refit;   weight-norm/no-refit: without refit
  activation-norm           weight x activation norm ranking + refit
  random                    random channels + refit
  asym+sens                 asym with the sensitivity allocation (all others: --allocation,
                            uniform by default: one keep fraction for every group)

Peer variants (onnxsim==0.8.1, the `bench` extra; never imported by the package):
  peer-l2                   onnxsim.pruning.apply_structured_pruning (L2 filter norm)
  peer-wanda                onnxsim.pruning.apply_structured_wanda_pruning (||W_row|| ||X||),
                            calibrated on the same subset (batches of 128)
  ...+ridge                 then onnxsim.finetune.apply_pruning_finetune (ridge refit of the
                            MatMul/Gemm layers against the original's activations, same subset)
  .../bnfold                on onnxsim.simplify(model) (BatchNormalization folded into the
                            Conv first, which the peer's Conv chains need); only for models
                            with BatchNormalization
The peer removes channels physically (smaller tensors, like ours); its one knob is a per-chain
`sparsity`. It is bisected (once per model, variant and ratio) to the smallest sparsity whose
pruned model has at most the same params budget as ours, 1/r of the original's params; a
budget the peer cannot reach (it leaves chains it does not match unpruned) is reported with
budget_met = no and the params it did reach, and is left out of the "at equal params" claim.

Writes, per model, docs/results/quality_<model>.csv (one row per run), quality_<model>.md
(accuracy pivot, full table, claims check) and docs/quality_<model>.png (accuracy and error vs
achieved compression), and replaces that model's block in docs/RESULTS.md.

Usage: python tools/bench_quality.py [--models lenet5 vgg_bn resnet_small] [--ratios 2 4 8 16]
           [--seeds 5] [--model-seeds vgg_bn=3] [--calib-samples 128] [--variants ...]
           [--no-peer] [--no-plot] [--out docs/results] [--results docs/RESULTS.md]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import (
    CALIB, MODELS, ROOT, TEST, calibration_subset, cpu_model, environment, markdown_table, splice, write_csv,
)

# variant -> (method, refit, allocation or None for --allocation)
OURS = {
    "asym": ("asym", True, None),
    "seq": ("seq", True, None),
    "layer": ("layer", True, None),
    "asym/no-refit": ("asym", False, None),
    "weight-norm": ("weight-norm", True, None),
    "weight-norm/no-refit": ("weight-norm", False, None),
    "activation-norm": ("activation-norm", True, None),
    "random": ("random", True, None),
    "asym+sens": ("asym", True, "sensitivity"),
}
# peer variant -> (ranking, ridge refit)
PEER = {
    "peer-l2": ("l2", False),
    "peer-l2+ridge": ("l2", True),
    "peer-wanda": ("wanda", False),
    "peer-wanda+ridge": ("wanda", True),
}
BNFOLD = "/bnfold"
PEER_BATCH = 128
MAX_SPARSITY = 0.999  # the peer keeps max(1, n - round(n * s)) channels per chain
TIE = 0.002  # accuracy differences below one test image (1/500) count as a tie


def all_variants(with_bn: bool) -> list[str]:
    peers = list(PEER) + ([v + BNFOLD for v in PEER] if with_bn else [])
    return list(OURS) + peers


def is_peer(variant: str) -> bool:
    return variant.startswith("peer-")


# --------------------------------------------------------------------------- helpers


def dead_channels(model) -> int:
    """Output channels of Conv/Gemm/MatMul layers whose constant weight is entirely zero: what a
    pruner that only zeroes (instead of removing) channels would leave behind."""
    from onnx import numpy_helper

    consts = {init.name: init for init in model.graph.initializer}
    dead = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        init = consts.get(node.input[1])
        if init is None:
            continue
        w = numpy_helper.to_array(init)
        if node.op_type == "Conv":
            rows = w.reshape(w.shape[0], -1)
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            rows = w if trans_b else w.T
        else:
            rows = w.reshape(-1, w.shape[-1]).T
        dead += int(np.sum(~np.any(rows != 0, axis=1)))
    return dead


def has_batchnorm(model) -> bool:
    return any(n.op_type == "BatchNormalization" for n in model.graph.node)


# --------------------------------------------------------------------------- peer


class Peer:
    """onnxsim's structured pruning at a params budget (imported only when used)."""

    def __init__(self, model, name: str, providers: list[str]):
        import onnxsim
        from onnxsim import finetune, pruning

        from onnx_subprune.metrics import count_params

        self.pruning, self.finetune, self.count = pruning, finetune, count_params
        self.providers = providers
        self.name = name
        self.bases = {"": model}
        if has_batchnorm(model):
            folded, ok = onnxsim.simplify(model)
            if not ok:
                raise RuntimeError(f"onnxsim.simplify could not check the BN-folded {name}")
            self.bases[BNFOLD] = folded
        self.sparsity: dict[tuple, tuple[float, bool]] = {}

    def _prune(self, base, ranking: str, sparsity: float, batches):
        if ranking == "l2":
            return self.pruning.apply_structured_pruning(base, sparsity=sparsity)
        return self.pruning.apply_structured_wanda_pruning(
            base, calibration_data=batches, sparsity=sparsity, providers=self.providers)

    def find_sparsity(self, mode: str, ranking: str, budget: float, batches) -> tuple[float, bool]:
        """Smallest sparsity whose pruned model has <= ``budget`` params (bisection; the params
        depend only on the sparsity, never on the calibration data); (MAX_SPARSITY, False)
        when even that misses the budget."""
        key = (mode, ranking, budget)
        if key in self.sparsity:
            return self.sparsity[key]
        base = self.bases[mode]
        probe = batches[:1]
        params = lambda s: self.count(self._prune(base, ranking, s, probe))
        if params(0.0) <= budget:
            found = (0.0, True)
        elif params(MAX_SPARSITY) > budget:
            found = (MAX_SPARSITY, False)
        else:
            low, high = 0.0, MAX_SPARSITY
            for _ in range(30):
                middle = (low + high) / 2
                if params(middle) <= budget:
                    high = middle
                else:
                    low = middle
            found = (high, True)
        self.sparsity[key] = found
        return found

    def run(self, variant: str, budget: float, batches) -> tuple[object, dict]:
        mode = BNFOLD if variant.endswith(BNFOLD) else ""
        ranking, ridge = PEER[variant[: -len(BNFOLD)] if mode else variant]
        base = self.bases[mode]
        sparsity, met = self.find_sparsity(mode, ranking, budget, batches)
        clock = time.perf_counter()
        pruned = self._prune(base, ranking, sparsity, batches)
        if ridge:
            pruned = self.finetune.apply_pruning_finetune(
                base, pruned, calibration_data=batches, providers=self.providers)
        return pruned, {"sparsity": sparsity, "budget_met": met, "prune_s": time.perf_counter() - clock}


def peer_coverage(name: str, variants: list[str]) -> list[str]:
    """Markdown lines: which layers each peer ranking shrinks at sparsity 0.5 (output channels
    before -> after), on the model as shipped and BN-folded."""
    from onnx_subprune.data import check_inputs, load_arrays
    from onnx_subprune.graph import load_model

    model = load_model(MODELS / f"{name}.onnx")
    peer = Peer(model, name, ["CPUExecutionProvider"])
    (input_name, pool), = check_inputs(load_arrays(CALIB), model, str(CALIB)).items()
    batches = [{input_name: np.ascontiguousarray(pool[:PEER_BATCH])}]
    lines = []
    for mode, base in peer.bases.items():
        for ranking in sorted({PEER[v.removesuffix(BNFOLD)][0] for v in variants if is_peer(v)
                               and v.endswith(BNFOLD) == bool(mode)}):
            before = {i.name: list(i.dims) for i in base.graph.initializer}
            pruned = peer._prune(base, ranking, 0.5, batches)
            layers = {}
            for node in pruned.graph.node:
                if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
                    layers[node.input[1]] = node
            changed = []
            for init in pruned.graph.initializer:
                if init.name not in layers or init.name not in before:
                    continue
                old, new = before[init.name], list(init.dims)
                node = layers[init.name]
                axis = 0 if node.op_type == "Conv" or any(a.name == "transB" and a.i for a in node.attribute) else -1
                if old[axis] != new[axis]:
                    changed.append(f"{node.name or init.name} {old[axis]}→{new[axis]}")
            kept = ", ".join(changed) or "nothing"
            lines.append(f"- {'BN-folded' if mode else 'as shipped'}, {ranking}: {kept}")
    return lines


# --------------------------------------------------------------------------- run


def run_model(name: str, args, variants: list[str], seeds: list[int], providers: list[str]) -> list[dict]:
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.data import check_inputs, load_arrays
    from onnx_subprune.graph import load_model
    from onnx_subprune.metrics import count_macs, count_params
    from onnx_subprune.pipeline import prune
    from onnx_subprune.verify import accuracy, fidelity, predict

    path = MODELS / f"{name}.onnx"
    model = load_model(path)
    test_arrays = load_arrays(TEST)
    test = check_inputs(test_arrays, model, f"test data {TEST}", extra=("label",))
    labels = test_arrays["label"]
    pool = check_inputs(load_arrays(CALIB), model, f"calibration data {CALIB}")
    (input_name, pool), = pool.items()
    reference = predict(model, test, providers, args.batch_size)
    (output, ref_logits), = ((k, v) for k, v in reference.items() if v.ndim == 2)
    params0, macs0 = count_params(model), count_macs(model)
    peer = None
    if any(is_peer(v) for v in variants):
        peer = Peer(model, name, providers)
        for mode, base in peer.bases.items():
            if mode:
                folded = predict(base, test, providers, args.batch_size)[output]
                print(f"[quality] {name}{mode}: rel. logits error of the folded model vs the original "
                      f"{np.linalg.norm(folded - ref_logits) / np.linalg.norm(ref_logits):.2e}",
                      file=sys.stderr)
    rows = [{
        "model": name, "ratio": 1, "variant": "original", "family": "original", "seed": "",
        "calib_samples": 0, "params": params0, "params_ratio": 1.0, "macs": macs0, "macs_ratio": 1.0,
        "budget_met": True, "sparsity": "", "dead_channels": dead_channels(model),
        "test_acc": accuracy(ref_logits, labels), "rel_logits_error": 0.0, "prune_s": 0.0, "error": "",
    }]
    for ratio in args.ratios:
        budget = params0 / ratio
        for seed in seeds:
            calib = calibration_subset(pool, args.calib_samples, seed)
            feeds = {input_name: calib}
            batches = [{input_name: calib[i:i + PEER_BATCH]} for i in range(0, len(calib), PEER_BATCH)]
            for variant in variants:
                row = {"model": name, "ratio": ratio, "variant": variant,
                       "family": "peer" if is_peer(variant) else "ours", "seed": seed,
                       "calib_samples": len(calib)}
                print(f"[quality] {name} x{ratio:g} seed {seed} {variant} ...", file=sys.stderr, flush=True)
                try:
                    if is_peer(variant):
                        pruned, extra = peer.run(variant, budget, batches)
                    else:
                        method, refit, allocation = OURS[variant]
                        config = PruneConfig(method=method, refit=refit, seed=seed, device="cpu",
                                             target_params=1 / ratio,
                                             allocation=allocation or args.allocation)
                        clock = time.perf_counter()
                        pruned = prune(model, feeds, config).model
                        extra = {"sparsity": "", "prune_s": time.perf_counter() - clock}
                    params, macs = count_params(pruned), count_macs(pruned)
                    logits = predict(pruned, test, providers, args.batch_size)[output]
                    error = fidelity({output: ref_logits}, {output: logits})[output]["relative_error"]
                    row.update(
                        params=params, params_ratio=params / params0, macs=macs, macs_ratio=macs / macs0,
                        budget_met=extra.get("budget_met", params <= budget + 1e-6),
                        sparsity=extra["sparsity"], dead_channels=dead_channels(pruned),
                        test_acc=accuracy(logits, labels), rel_logits_error=error,
                        prune_s=extra["prune_s"], error="",
                    )
                except Exception as exc:  # one broken variant must not hide the rest
                    row.update(error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                    print(f"[quality]   ERROR {row['error']}", file=sys.stderr, flush=True)
                rows.append(row)
    return rows


# --------------------------------------------------------------------------- summaries


def summarize(rows: list[dict]) -> dict[tuple, dict]:
    """(ratio, variant) -> means, sample stds (ddof=1) and counts over the seeds that ran."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["ratio"], row["variant"]), []).append(row)
    summary = {}
    for key, group in groups.items():
        ok = [r for r in group if not r["error"]]
        entry = {"runs": len(group), "ok": len(ok), "family": group[0]["family"],
                 "error": next((r["error"] for r in group if r["error"]), ""),
                 "budget_met": all(r["budget_met"] for r in ok) if ok else False}
        for field in ("test_acc", "rel_logits_error", "params_ratio", "macs_ratio", "prune_s",
                      "dead_channels"):
            values = np.array([float(r[field]) for r in ok])
            entry[field] = float(values.mean()) if len(values) else math.nan
            entry[field + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        sparsities = sorted({r["sparsity"] for r in ok if r["sparsity"] != ""})
        entry["sparsity"] = sparsities[0] if len(sparsities) == 1 else ""
        summary[key] = entry
    return summary


def fmt_acc(entry: dict) -> str:
    if not entry["ok"]:
        return "error"
    text = f"{100 * entry['test_acc']:.1f}"
    if not math.isnan(entry["test_acc_std"]):
        text += f" ± {100 * entry['test_acc_std']:.1f}"
    return text + ("" if entry["budget_met"] else " †")


def fmt_num(entry: dict, field: str, spec: str) -> str:
    if not entry["ok"]:
        return "error"
    text = format(entry[field], spec)
    if not math.isnan(entry[field + "_std"]):
        text += " ± " + format(entry[field + "_std"], spec)
    return text


def pivot_table(summary: dict, ratios: list, variants: list[str], cell=fmt_acc) -> str:
    header = ["variant"] + [f"{r:g}x" for r in ratios]
    rows = [[v] + [cell(summary[(r, v)]) if (r, v) in summary else "-" for r in ratios] for v in variants]
    return markdown_table(header, rows, right=set(range(1, len(header))))


def full_table(summary: dict, ratios: list, variants: list[str]) -> str:
    header = ["ratio", "variant", "seeds", "params ratio", "MACs ratio", "test acc %", "rel. logits error",
              "peer sparsity", "prune s"]
    rows = []
    original = summary.get((1, "original"))
    if original:
        rows.append(["1", "original", "-", "1.000", "1.000", f"{100 * original['test_acc']:.1f}", "0", "-", "-"])
    for ratio in ratios:
        for variant in variants:
            entry = summary.get((ratio, variant))
            if entry is None:
                continue
            rows.append([
                f"{ratio:g}", variant, f"{entry['ok']}/{entry['runs']}",
                f"{entry['params_ratio']:.3f}" + ("" if entry["budget_met"] else " †") if entry["ok"] else "error",
                f"{entry['macs_ratio']:.3f}" if entry["ok"] else "error",
                fmt_acc(entry), fmt_num(entry, "rel_logits_error", ".3f"),
                "-" if entry["sparsity"] == "" else f"{entry['sparsity']:.3f}",
                f"{entry['prune_s']:.2f}" if entry["ok"] else (entry["error"][:60] or "error"),
            ])
    return markdown_table(header, rows, right={0, 2, 3, 4, 5, 6, 7, 8})


def compare(runs: dict, ratio, a: str, b: str) -> dict:
    """Is variant ``a`` at least as good as ``b`` at ``ratio``, by test accuracy and by relative
    logits error? Paired over the seeds both ran (the same calibration subsets). Per metric:
    ``holds`` (mean paired difference favours ``a`` or is zero), ``significant`` (the mean
    exceeds twice its standard error over the seeds); accuracy is ``tied`` when the means are
    less than one test image apart."""
    seeds = sorted(set(runs.get((ratio, a), {})) & set(runs.get((ratio, b), {})))
    pa = [runs[(ratio, a)][s] for s in seeds]
    pb = [runs[(ratio, b)][s] for s in seeds]
    result = {"seeds": len(seeds)}
    for metric, field, sign in (("acc", "test_acc", 1), ("err", "rel_logits_error", -1)):
        diffs = sign * np.array([x[field] - y[field] for x, y in zip(pa, pb)])
        mean = float(diffs.mean())
        se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else math.inf
        result[metric] = {"holds": mean >= 0, "significant": abs(mean) > 2 * se and mean != 0,
                          "tied": metric == "acc" and abs(mean) < TIE - 1e-9, "mean": mean}
    return result


def _word(part: dict) -> str:
    if part["tied"]:
        return "tie"
    return ("yes" if part["holds"] else "NO") + ("" if part["significant"] else "~")


def verdict(result: dict) -> str:
    """'acc WORD, error WORD' (WORD: yes / NO / tie; ~ = within noise)."""
    return f"acc {_word(result['acc'])}, error {_word(result['err'])}"


def describe(variant: str, entry: dict) -> str:
    return (f"{variant} {100 * entry['test_acc']:.1f}% / {entry['rel_logits_error']:.3f}"
            f" (params {entry['params_ratio']:.3f})")


def check_claims(rows: list[dict], summary: dict, ratios: list) -> list[dict]:
    """The paper's qualitative claims at each ratio: dicts with ratio, claim, key (short name),
    text (the means), result (:func:`compare`, None when not applicable) and note."""
    runs: dict[tuple, dict] = {}
    for row in rows:
        if not row["error"] and row["variant"] != "original":
            runs.setdefault((row["ratio"], row["variant"]), {})[row["seed"]] = row
    found = []

    def get(ratio, variant):
        entry = summary.get((ratio, variant))
        return entry if entry and entry["ok"] else None

    for ratio in ratios:
        asym, seq, layer = get(ratio, "asym"), get(ratio, "seq"), get(ratio, "layer")
        if asym and seq and layer:
            text = " ≥ ".join(describe(v, e) for v, e in (("asym", asym), ("seq", seq), ("layer", layer)))
            for a, b in (("asym", "seq"), ("seq", "layer"), ("asym", "layer")):
                found.append({"ratio": ratio, "claim": "asym ≥ seq ≥ layer", "key": f"{a} ≥ {b}",
                              "text": text, "result": compare(runs, ratio, a, b), "note": ""})
        for selection in ("asym", "weight-norm"):
            with_refit, without = get(ratio, selection), get(ratio, selection + "/no-refit")
            if with_refit and without:
                found.append({"ratio": ratio, "claim": f"refit > no refit ({selection})",
                              "key": f"refit ({selection})",
                              "text": f"{describe('refit', with_refit)} vs {describe('no refit', without)}",
                              "result": compare(runs, ratio, selection, selection + "/no-refit"), "note": ""})
        ours = [(v, e) for (r, v), e in summary.items() if r == ratio and e["family"] == "ours" and e["ok"]]
        peers = [(v, e) for (r, v), e in summary.items()
                 if r == ratio and e["family"] == "peer" and e["ok"] and e["budget_met"]]
        key = lambda item: (item[1]["test_acc"], -item[1]["rel_logits_error"])
        claim = "our best > peer's best at equal params"
        if ours and peers:
            best_ours, best_peer = max(ours, key=key), max(peers, key=key)
            found.append({"ratio": ratio, "claim": claim, "key": "ours > peer",
                          "text": f"{describe(*best_ours)} vs {describe(*best_peer)}",
                          "result": compare(runs, ratio, best_ours[0], best_peer[0]),
                          "note": f"{best_ours[0]} {100 * best_ours[1]['test_acc']:.1f} vs "
                                  f"{best_peer[0]} {100 * best_peer[1]['test_acc']:.1f}"})
        elif ours and any(r == ratio and e["family"] == "peer" for (r, _), e in summary.items()):
            found.append({"ratio": ratio, "claim": claim, "key": "ours > peer",
                          "text": "no peer variant reaches this params budget", "result": None,
                          "note": "peer cannot reach the budget"})
    return found


def claims_table(rows: list[dict], summary: dict, ratios: list) -> str:
    """Checks of the paper's qualitative claims at each ratio, with the numbers."""
    merged: dict[tuple, list] = {}
    for item in check_claims(rows, summary, ratios):
        cell = "n/a" if item["result"] is None else verdict(item["result"])
        entry = merged.setdefault((item["ratio"], item["claim"]), [item["text"], []])
        entry[1].append(f"{item['key']}: {cell}" if item["claim"] == "asym ≥ seq ≥ layer" else cell)
    table = [[f"{ratio:g}x", claim, text, "; ".join(cells)] for (ratio, claim), (text, cells) in merged.items()]
    return markdown_table(["ratio", "claim", "means: test acc / rel. logits error", "holds?"], table)


SUMMARY_KEYS = ("asym ≥ seq", "seq ≥ layer", "asym ≥ layer", "refit (asym)", "refit (weight-norm)", "ours > peer")


def short_verdict(result: dict | None) -> str:
    if result is None:
        return "n/a"
    return f"{_word(result['acc'])} / {_word(result['err'])}"


def summary_markdown(out: Path, models: list[str], ratios: list) -> str | None:
    """Cross-model overview of the claims from the per-model CSVs in ``out`` (None if none)."""
    table = []
    for name in models:
        path = out / f"quality_{name}.csv"
        if not path.exists():
            continue
        rows = read_csv(path)
        summary = summarize(rows)
        model_ratios = sorted({r["ratio"] for r in rows if r["variant"] != "original"})
        seeds = len({r["seed"] for r in rows if r["variant"] != "original"})
        by_ratio: dict = {}
        for item in check_claims(rows, summary, model_ratios):
            by_ratio.setdefault(item["ratio"], {})[item["key"]] = item
        for ratio in model_ratios:
            items = by_ratio.get(ratio, {})
            cells = [short_verdict(items[k]["result"]) if k in items else "-" for k in SUMMARY_KEYS]
            note = items["ours > peer"]["note"] if "ours > peer" in items else ""
            table.append([name, str(seeds), f"{ratio:g}x"] + cells + [note])
    if not table:
        return None
    header = ["model", "seeds", "ratio", *SUMMARY_KEYS, "best of ours vs best peer (test acc %)"]
    return "\n".join([
        "### Claims at a glance",
        "",
        "Rebuilt from the per-model CSVs by every `tools/bench_quality.py` run. Each cell: by test "
        "accuracy / by relative logits error. `yes`/`NO`: the claim holds / fails on the mean paired "
        "difference over seeds (same calibration subsets); `~`: within noise (the mean paired difference "
        "is below twice its standard error); `tie`: accuracies less than one test image apart. The "
        "last columns compare at equal params budget; peer variants that cannot reach it are left out.",
        "",
        markdown_table(header, table),
        "",
    ])


def block_markdown(name: str, rows: list[dict], args, seeds: list[int], variants: list[str],
                   plot: Path | None, where: Path) -> str:
    """The model's markdown block, its image linked relative to directory ``where``."""
    summary = summarize(rows)
    ratios = list(args.ratios)
    env = environment()
    command = "python tools/bench_quality.py --models " + name + _common_flags(args, len(seeds))
    lines = [
        f"### {name}",
        "",
        f"Reproduce: `{command}` (total time for this model {float(rows[0]['bench_total_s']):.0f} s).",
        f"Seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} calibration subsets of {args.calib_samples} images from "
        f"`{CALIB.relative_to(ROOT)}`), test set `{TEST.relative_to(ROOT)}` "
        f"({_test_size()} images); our allocation {args.allocation} unless `+sens`; "
        f"mean ± sample std over seeds; † = the peer cannot reach this params budget "
        f"(the params it reached are shown). Original accuracy {100 * summary[(1, 'original')]['test_acc']:.1f}%.",
        f"Machine: {env['cpus']} CPUs ({cpu_model()}), OPENBLAS_CORETYPE={env['openblas_coretype']}, "
        f"Python {env['python']}, numpy {env['numpy']}, onnxruntime {env['onnxruntime']}"
        + (f", onnxsim {_onnxsim_version()}" if any(is_peer(v) for v in variants) else "") + ".",
        "",
        "Test accuracy (%) by params compression ratio:",
        "",
        pivot_table(summary, ratios, variants),
        "",
        "Relative logits error ||z' - z|| / ||z|| on the test set (lower is better; it separates methods "
        "where accuracy saturates):",
        "",
        pivot_table(summary, ratios, variants, lambda e: fmt_num(e, "rel_logits_error", ".3f")),
        "",
        "All measurements:",
        "",
        full_table(summary, ratios, variants),
        "",
        "The paper's claims, checked, by test accuracy and by relative logits error, each on the mean "
        "paired difference over seeds (the same calibration subsets): yes / NO; ~ = within noise (mean "
        "paired difference below twice its standard error); tie = accuracies less than one test image "
        "apart:",
        "",
        claims_table(rows, summary, ratios),
        "",
    ]
    if any(is_peer(v) for v in variants):
        lines += ["Output channels the peer removes at sparsity 0.5 (layers not listed are never "
                  "shrunk as producers, so the peer cannot go below their size):", ""]
        lines += peer_coverage(name, variants) + [""]
    if plot is not None:
        lines += [f"![{name}: accuracy and error vs compression]({os.path.relpath(plot, where)})", ""]
    return "\n".join(lines)


def _common_flags(args, seeds: int) -> str:
    flags = ""
    defaults = {"ratios": [2, 4, 8, 16], "calib_samples": 128, "allocation": "uniform"}
    if list(args.ratios) != defaults["ratios"]:
        flags += " --ratios " + " ".join(f"{r:g}" for r in args.ratios)
    flags += f" --seeds {seeds}"
    if args.calib_samples != defaults["calib_samples"]:
        flags += f" --calib-samples {args.calib_samples}"
    if args.allocation != defaults["allocation"]:
        flags += f" --allocation {args.allocation}"
    if args.variants:
        flags += " --variants " + " ".join(args.variants)
    if args.no_peer:
        flags += " --no-peer"
    return flags


def _test_size() -> int:
    with np.load(TEST) as archive:
        return len(archive["label"])


def _onnxsim_version() -> str:
    try:
        from importlib.metadata import version

        return version("onnxsim")
    except Exception:
        return "?"


def plot_model(name: str, rows: list[dict], variants: list[str], path: Path) -> None:
    """Accuracy and logits error vs achieved compression, one line per variant; hollow markers:
    the peer missed the params budget (plotted at the compression it reached)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, ScalarFormatter

    summary = summarize(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    ours_colors, peer_colors = plt.get_cmap("tab10"), plt.get_cmap("Dark2")
    ours_index = peer_index = 0
    reached = set()
    for variant in variants:
        points = sorted(((1 / e["params_ratio"], e) for (r, v), e in summary.items()
                         if v == variant and e["ok"] and r != 1), key=lambda p: p[0])
        if not points:
            continue
        if is_peer(variant):
            color, peer_index = peer_colors(peer_index % 8), peer_index + 1
        else:
            color, ours_index = ours_colors(ours_index % 10), ours_index + 1
        style = dict(color=color, linestyle="--" if is_peer(variant) else "-", linewidth=1.2)
        x = [p[0] for p in points]
        reached.update(round(v, 6) for v in x)
        acc = [100 * p[1]["test_acc"] for p in points]
        acc_std = [0 if math.isnan(p[1]["test_acc_std"]) else 100 * p[1]["test_acc_std"] for p in points]
        err = [p[1]["rel_logits_error"] for p in points]
        err_std = [0 if math.isnan(p[1]["rel_logits_error_std"]) else p[1]["rel_logits_error_std"] for p in points]
        marker = "s" if is_peer(variant) else "o"
        left.errorbar(x, acc, yerr=acc_std, capsize=2, label=variant, marker=marker, markersize=5, **style)
        # an unpruned model (a peer that matched nothing) has zero error: no place on a log axis
        shown = [i for i, e in enumerate(err) if e > 1e-3]
        if shown:
            right.errorbar([x[i] for i in shown], [err[i] for i in shown], yerr=[err_std[i] for i in shown],
                           capsize=2, marker=marker, markersize=5, **style)
        for axis, ys, keep in ((left, acc, range(len(x))), (right, err, shown)):
            for i in keep:
                if not points[i][1]["budget_met"]:
                    axis.plot([x[i]], [ys[i]], marker=marker, markersize=5, color=color,
                              markerfacecolor="white", linestyle="none", zorder=5)
    ticks = sorted({r for r, _ in summary if r != 1} | ({1} if any(v < 1.5 for v in reached) else set()))
    original = summary[(1, "original")]["test_acc"]
    left.axhline(100 * original, color="gray", linewidth=0.8, linestyle=":", label="original")
    for axis, label in ((left, "test accuracy (%)"), (right, "relative logits error vs original (log)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        axis.set_xlabel("achieved params compression (original / pruned params)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    right.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_title(f"{name}: test accuracy (no fine-tuning)")
    right.set_title(f"{name}: output error on the test set")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8,
               title="hollow: peer missed\nthe params budget", title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


INT_FIELDS = ("seed", "calib_samples", "params", "macs", "dead_channels")
FLOAT_FIELDS = ("ratio", "params_ratio", "macs_ratio", "sparsity", "test_acc", "rel_logits_error", "prune_s",
                "bench_total_s")


def read_csv(path: Path) -> list[dict]:
    """Rows written by :func:`write_csv`, with their types back."""
    if not path.exists():
        raise SystemExit(f"--render-only: {path} does not exist (run the benchmark first)")
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = dict(raw)
            for field in INT_FIELDS + FLOAT_FIELDS:
                if row.get(field) not in (None, ""):
                    row[field] = (int if field in INT_FIELDS else float)(row[field])
            if row["ratio"] == int(row["ratio"]):
                row["ratio"] = int(row["ratio"])
            row["budget_met"] = row.get("budget_met") == "True"
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- main


def parse_model_seeds(items: list[str]) -> dict[str, int]:
    result = {}
    for item in items or []:
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--model-seeds wants NAME=N with N >= 1, got {item!r}")
        result[name] = int(count)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_bn", "resnet_small"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[2, 4, 8, 16],
                        help="params compression ratios (target_params = 1/ratio)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (calibration subsets)")
    parser.add_argument("--model-seeds", nargs="*", metavar="MODEL=N",
                        help="fewer (or more) seeds for some models, e.g. vgg_bn=2")
    parser.add_argument("--calib-samples", type=int, default=128,
                        help="calibration images per seed (4 x 128 = 512 at most: the whole file)")
    parser.add_argument("--allocation", default="uniform", choices=("uniform", "sensitivity"),
                        help="allocation of our variants except asym+sens")
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all)")
    parser.add_argument("--no-peer", action="store_true", help="leave out the onnxsim variants")
    parser.add_argument("--no-plot", action="store_true", help="no PNG (matplotlib not needed)")
    parser.add_argument("--batch-size", type=int, default=128, help="test-set inference batch")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results",
                        help="directory of the CSV and markdown files (PNGs go to its parent)")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs", help="directory of the PNGs")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "RESULTS.md",
                        help="document whose per-model blocks are replaced ('-': none)")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild the markdown, PNG and RESULTS.md block from the CSV in --out "
                             "written by an earlier run with the same options (no pruning)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.calib_samples < 1 or any(r < 1 for r in args.ratios):
        parser.error("--seeds and --calib-samples must be >= 1, ratios >= 1")
    per_model_seeds = parse_model_seeds(args.model_seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    providers = ["CPUExecutionProvider"]
    status = 0
    for name in args.models:
        from onnx_subprune.graph import load_model

        with_bn = has_batchnorm(load_model(MODELS / f"{name}.onnx"))
        variants = all_variants(with_bn)
        if args.variants:
            unknown = [v for v in args.variants if v not in all_variants(True)]
            if unknown:
                parser.error(f"unknown variant {unknown[0]!r} (choose from {', '.join(all_variants(True))})")
            variants = [v for v in variants if v in args.variants]
        if args.no_peer:
            variants = [v for v in variants if not is_peer(v)]
        seeds = list(range(per_model_seeds.get(name, args.seeds)))
        csv_path = args.out / f"quality_{name}.csv"
        if args.render_only:
            rows = read_csv(csv_path)
            total = float(rows[0]["bench_total_s"])
        else:
            started = time.perf_counter()
            rows = run_model(name, args, variants, seeds, providers)
            total = time.perf_counter() - started
            rows[0]["bench_total_s"] = total
            write_csv(csv_path, rows)
        plot = None
        if not args.no_plot:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot = args.plots / f"quality_{name}.png"
            plot_model(name, rows, variants, plot)
        text = block_markdown(name, rows, args, seeds, variants, plot, args.out)
        (args.out / f"quality_{name}.md").write_text(text)
        if str(args.results) != "-":
            splice(args.results, f"quality {name}",
                   block_markdown(name, rows, args, seeds, variants, plot, args.results.parent))
        print(text)
        print(f"[quality] {name}: {total:.0f} s", file=sys.stderr)
        if any(r["error"] for r in rows):
            status = 1
    overview = summary_markdown(args.out, list(dict.fromkeys(["lenet5", "vgg_bn", "resnet_small", *args.models])),
                                args.ratios)
    if overview:
        (args.out / "quality_summary.md").write_text(overview)
        if str(args.results) != "-":
            splice(args.results, "quality summary", overview)
    return status


if __name__ == "__main__":
    sys.exit(main())
