#!/usr/bin/env python3
"""Attention heads on a real sentence encoder: ours vs onnxsim at equal encoder params.

The model is the zoo's paraphrase-MiniLM-L3-v2 (torch.onnx export, 3 BERT layers, hidden 384,
12 heads; ``python tools/zoo.py fetch --only minilm_l3``). Its embedding tables hold most of the
params and are not pruned by either tool, so the budget is set on the *encoder* (every float
param but the embedding tables read by Gather): for each ``--keep`` fraction of the encoder's
params, ours prunes heads and FFN neurons (asym, sensitivity allocation, also uniform) with
``--calib`` sentences, and onnxsim 0.8.1 removes as many params (its sparsity bisected; the best
of L2, Wanda and Wanda + ridge refit by output error) from the model onnxsim simplified at batch 1
and the sentences' length (on the export as it is, with its Shape computations, onnxsim's pruning
removes nothing). Measured on ``--eval`` held-out
sentences: the cosine between the original's and the pruned model's sentence embeddings (mean,
min) and the relative error of the embedding output.

    python tools/bench_heads.py [--keep 0.75 0.5] [--calib 32] [--eval 64]

Writes docs/results/heads.csv and docs/results/heads.md (``--name``: another name).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import zoo
from bench_zoo import Peer
from common import ROOT

OUT = ROOT / "docs" / "results"
FIELDS = ["keep_encoder", "method", "encoder_params", "encoder_ratio", "params_ratio", "heads_kept",
          "cosine_mean", "cosine_min", "rel_error", "seconds", "note"]


def embedding_params(model: onnx.ModelProto) -> int:
    """Float params of the tables a Gather looks up (word, position and token-type embeddings)."""
    tables = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer
               if init.name in tables and init.data_type == onnx.TensorProto.FLOAT)


def trimmed(feeds: list[dict[str, np.ndarray]], entry: dict) -> list[dict[str, np.ndarray]]:
    """The sentences padded to the longest of them instead of the recipe's 64 tokens, as a
    deployment pads a batch (the embeddings do not change: padding is masked out). Without
    it three quarters of the calibration rows are padding tokens, which the model's outputs
    ignore but the statistics would not. One length for all, so that the peer can run on a
    model simplified at that fixed shape."""
    length = max(int(feed[entry["text_inputs"]["mask"]].sum(1).max()) for feed in feeds)
    return [{name: value[:, :length] for name, value in feed.items()} for feed in feeds]


def fixed_shape(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """onnxsim's own simplification at batch 1 and the sentences' length: it folds the
    exporter's Shape computations, without which onnxsim's pruning removes nothing here."""
    import onnxsim

    simplified, ok = onnxsim.simplify(model, overwrite_input_shapes={k: [1, v.shape[1]] for k, v in feed.items()})
    if not ok:
        raise RuntimeError("onnxsim could not check the simplified model")
    return simplified


def embeddings(path: str, feed: dict, entry: dict) -> np.ndarray:
    """(sentences, 384) sentence embeddings (the model's own mean pooling output)."""
    session = zoo.make_session(path)
    outs = zoo.run_model(session, feed, entry)
    names = [o.name for o in session.get_outputs()]
    return outs[names.index(entry["embedding_output"])].astype(np.float64)


def quality(original: np.ndarray, pruned: np.ndarray) -> dict:
    cos = (original * pruned).sum(1) / np.maximum(
        np.linalg.norm(original, axis=1) * np.linalg.norm(pruned, axis=1), 1e-12)
    error = np.linalg.norm(pruned - original) / np.linalg.norm(original)
    return {"cosine_mean": round(float(cos.mean()), 4), "cosine_min": round(float(cos.min()), 4),
            "rel_error": round(float(error), 4)}


def heads_kept(model: onnx.ModelProto) -> str:
    """Heads left per layer (from the analysis of the pruned model)."""
    from onnx_subprune.analyze import analyze
    from onnx_subprune.graph import prepare

    return "/".join(str(g.channels) for g in analyze(prepare(model)).groups if "query" in g.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=float, nargs="+", default=[0.75, 0.5], help="fractions of the encoder's params")
    ap.add_argument("--calib", type=int, default=32, help="calibration sentences")
    ap.add_argument("--eval", type=int, default=64, help="held-out sentences")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shrink", default="none", help="--shrink of ours (none, refit, auto)")
    ap.add_argument("--allocations", nargs="+", default=["sensitivity", "uniform"])
    ap.add_argument("--no-ffn-only", action="store_true", help="skip the run that leaves the heads alone")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--name", default="heads", help="write docs/results/NAME.csv and NAME.md")
    args = ap.parse_args(argv)

    from onnx_subprune.analyze import analyze, coverage
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.graph import prepare
    from onnx_subprune.metrics import count_params
    from onnx_subprune.pipeline import prune

    entry = zoo.get_entry("minilm_l3")
    path = zoo.cached_path(entry)
    if path is None:
        print("minilm_l3 is not fetched: python tools/zoo.py fetch --only minilm_l3", file=sys.stderr)
        return 1
    model = onnx.load(str(path))
    total, table = count_params(model), embedding_params(model)
    encoder = total - table
    reach = coverage(prepare(model), analyze(prepare(model)))
    print(f"params {total:,}: embeddings {table:,}, encoder {encoder:,}; the groups reach "
          f"{reach['params_in_groups']:,} = {reach['params_in_groups'] / encoder:.1%} of the encoder")
    calib, held_out = trimmed([zoo.feeds(entry, args.calib, args.seed, "calib"),
                               zoo.feeds(entry, args.eval, args.seed, "eval")], entry)
    print(f"{args.calib} calibration sentences of {calib[entry['text_inputs']['ids']].shape[1]} tokens "
          f"({int(calib[entry['text_inputs']['mask']].sum())} not padding)")
    reference = embeddings(str(path), held_out, entry)
    rows = []

    def measure(keep: float, method: str, pruned: onnx.ModelProto, seconds: float, note: str = "",
                simplified: onnx.ModelProto | None = None) -> None:
        """One row; ``simplified``: the peer's starting point, whose params it pruned from."""
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "pruned.onnx")
            onnx.save(pruned, out)
            scores = quality(reference, embeddings(out, held_out, entry))
        params = count_params(pruned) + (total - count_params(simplified) if simplified is not None else 0)
        row = {"keep_encoder": keep, "method": method, "encoder_params": params - table,
               "encoder_ratio": round((params - table) / encoder, 4), "params_ratio": round(params / total, 4),
               "heads_kept": heads_kept(pruned) if method.startswith("ours") else "", **scores,
               "seconds": round(seconds, 1), "note": note}
        rows.append(row)
        print(", ".join(f"{k} {v}" for k, v in row.items() if v != ""), flush=True)

    for keep in args.keep:
        target = (table + keep * encoder) / total
        runs = [(allocation, ()) for allocation in args.allocations]
        runs += [] if args.no_ffn_only else [(args.allocations[0], ("*attention*",))]
        for allocation, exclude in runs:
            clock = time.perf_counter()
            result = prune(model, calib, PruneConfig(target_params=target, method="asym", allocation=allocation,
                                                     shrink=args.shrink, device="cpu", seed=args.seed,
                                                     exclude=exclude))
            name = f"ours asym {allocation}" + (f" shrink {args.shrink}" if args.shrink != "none" else "")
            measure(keep, name + (", FFN only" if exclude else ""), result.model, time.perf_counter() - clock)
            if (allocation, exclude) == runs[0]:
                ours_model = result.model
        if args.no_peer:
            continue
        clock = time.perf_counter()
        simple = fixed_shape(model, calib)
        peer = Peer(simple, calib)
        removed = total - count_params(ours_model)  # the same encoder params as ours removed
        budget = count_params(simple) - removed
        sparsity, met = peer.sparsity_for(budget)
        best, skipped = None, []
        for variant in ("l2", "wanda", "wanda+ridge"):
            pruned = peer.variant(variant, sparsity)
            if count_params(pruned) > budget:  # a variant that did not prune (Wanda here) is no candidate
                print(f"onnxsim {variant}: {count_params(pruned):,} params, over the budget of {budget:,}")
                skipped.append(variant)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "peer.onnx")
                onnx.save(pruned, out)
                error = quality(reference, embeddings(out, held_out, entry))["rel_error"]
            if best is None or error < best[0]:
                best = (error, variant, pruned)
        if best is None:
            continue
        notes = ([] if met else ["budget not reached"]) + [f"{v} pruned nothing" for v in skipped]
        measure(keep, f"onnxsim {best[1]}", best[2], time.perf_counter() - clock, "; ".join(notes),
                simplified=simple)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Attention heads: paraphrase-MiniLM-L3-v2 (zoo `minilm_l3`, torch.onnx)",
        "",
        f"Generated by `python tools/bench_heads.py` ({args.calib} calibration sentences, {args.eval} held-out "
        f"sentences, seed {args.seed}). Params {total:,}: embedding tables {table:,} (not pruned by either tool), "
        f"encoder {encoder:,}; our channel groups (12 heads and 1536 FFN neurons per layer) reach "
        f"{reach['params_in_groups'] / encoder:.1%} of the encoder's params.",
        "",
        "| encoder keep | method | encoder params | params ratio | heads kept per layer | embedding cosine (mean / min) | relative error | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['keep_encoder']} | {r['method']} | {r['encoder_ratio']:.3f} | {r['params_ratio']:.3f} | "
                     f"{r['heads_kept']} | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['rel_error']:.4f} | "
                     f"{r['seconds']} {r['note']} |")
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
