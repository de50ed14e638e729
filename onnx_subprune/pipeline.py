"""The pruning pipeline: analyze -> calibrate -> select -> rewrite -> verify, as one call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from . import runtime
from .analyze import analyze
from .calibrate import GroupStats, Progress, capture_stats, split_samples
from .config import PruneConfig
from .errors import UnsupportedPattern
from .graph import name_nodes, read_constants
from .metrics import count_macs, count_params
from .ops import consumer_matrix
from .rewrite import rewrite
from .select import select_group
from .types import Analysis, ChannelGroup, ConsumerUpdate, GroupPlan
from .verify import fidelity, predict

Log = Callable[[str], None]


@dataclass(frozen=True)
class PruneResult:
    """The pruned model and the JSON-ready report of the run."""

    model: onnx.ModelProto
    report: dict


def prune(model: onnx.ModelProto, feeds: dict[str, np.ndarray], config: PruneConfig,
          progress: Progress | None = None, log: Log | None = None) -> PruneResult:
    """Prune every channel group of ``model`` using calibration ``feeds`` (checked inputs,
    first axis = samples). ``progress(stage, done, total)`` and ``log(line)`` are optional."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = name_nodes(model)
    analysis = analyze(model)
    if not analysis.groups:
        raise UnsupportedPattern(_nothing_prunable(analysis))
    timings["analyze"] = time.perf_counter() - clock
    samples = len(next(iter(feeds.values())))
    batch_size = runtime.batch_size_for(model, config.batch_size, samples)
    providers, note = runtime.choose_providers(config.device)
    if log:
        log(note)
    split = split_samples(samples, config.holdout, config.seed)
    weights = _consumer_matrices(model, analysis.groups)
    plans, entries = _prune_groups(model, analysis.groups, weights, feeds, split, batch_size,
                                   providers, config, progress, timings)
    clock = time.perf_counter()
    pruned = rewrite(model, plans)
    onnx.checker.check_model(pruned)
    timings["rewrite"] = time.perf_counter() - clock
    clock = time.perf_counter()
    verify_feeds = {name: array[: config.verify_samples] for name, array in feeds.items()}
    outputs = fidelity(predict(model, verify_feeds, providers, batch_size),
                       predict(pruned, verify_feeds, providers, batch_size))
    timings["verify"] = time.perf_counter() - clock
    report = {
        "method": config.method,
        "keep": config.keep,
        "refit": config.refit,
        "bias_compensation": config.bias_compensation,
        "ridge": config.ridge,
        "seed": config.seed,
        "provider": providers[0],
        "samples": {"calibration": int(len(split.calibration)), "holdout": int(len(split.holdout))},
        "groups": entries,
        "skipped": [vars(s) for s in analysis.skipped],
        "params": {"before": count_params(model), "after": count_params(pruned)},
        "macs": {"before": count_macs(model), "after": count_macs(pruned)},
        "outputs": outputs,
        "output_error": max(o["relative_error"] for o in outputs.values()),
        "seconds": {k: round(v, 4) for k, v in timings.items()},
    }
    return PruneResult(pruned, report)


def _prune_groups(model, groups: Sequence[ChannelGroup], weights, feeds, split, batch_size,
                  providers, config: PruneConfig, progress, timings):
    """Capture statistics and select channels group by group, following ``config.schedule``.

    layer: one capture of all groups from the original model. seq / asym: groups in
    topological order, B from the model pruned so far (A from the original for asym).
    """
    inputs = tuple(sorted({c.input for g in groups for c in g.consumers}))
    original = runtime.session(model, providers, inputs)
    capture = lambda gs, source, reference: capture_stats(
        gs, source, reference, weights, feeds, split, batch_size, progress)
    timings["capture"] = timings["select"] = 0.0
    clock = time.perf_counter()
    all_stats = capture(groups, original, None) if config.schedule == "layer" else None
    timings["capture"] += time.perf_counter() - clock
    plans, entries = [], []
    for index, group in enumerate(groups):
        clock = time.perf_counter()
        if all_stats is not None:
            stats = all_stats[index]
        elif not plans:
            stats = capture([group], original, None)[0]
        else:
            names = tuple(c.input for c in group.consumers)
            current = runtime.session(rewrite(model, plans), providers, names)
            stats = capture([group], current, original if config.schedule == "asym" else None)[0]
        captured = time.perf_counter()
        timings["capture"] += captured - clock
        plan, entry = _select(group, stats, config)
        timings["select"] += time.perf_counter() - captured
        entry["seconds"] = round(time.perf_counter() - clock, 4)
        plans.append(plan)
        entries.append(entry)
        if progress:
            progress("groups", index + 1, len(groups))
    return plans, entries


def _select(group: ChannelGroup, stats: GroupStats, config: PruneConfig) -> tuple[GroupPlan, dict]:
    """Choose the kept channels of one group and the consumers' new weights."""
    k = config.kept_count(group.channels)
    chosen = select_group(
        stats.calibration, k, method=config.method, refit_weights=config.refit,
        ridge=config.ridge, bias_compensation=config.bias_compensation, seed=config.seed,
        holdout=stats.holdout,
    )
    updates = tuple(
        ConsumerUpdate(c.node, fit.weight, fit.bias_shift) if config.refit else ConsumerUpdate(c.node)
        for c, fit in zip(group.consumers, chosen.fits)
    )
    kept = tuple(int(i) for i in chosen.kept)
    entry = {
        "producer": group.producers[0].node,
        "producers": [p.node for p in group.producers],
        "consumers": [c.node for c in group.consumers],
        "channels": group.channels,
        "kept": list(kept),
        "explained": float(chosen.explained),
        "explained_holdout": None if chosen.explained_holdout is None else float(chosen.explained_holdout),
        "rows": min(s.n_rows for s in stats.calibration),
        "columns": max(s.d for s in stats.calibration),
        "underdetermined": bool(chosen.underdetermined),
    }
    return GroupPlan(group, kept, updates), entry


def _consumer_matrices(model: onnx.ModelProto, groups: Sequence[ChannelGroup]) -> dict[str, np.ndarray]:
    """Consumer node -> its original weight as a (d, m) matrix."""
    consumers = [c for g in groups for c in g.consumers]
    values = read_constants(model, {c.weight for c in consumers})
    return {c.node: consumer_matrix(c, values[c.weight]) for c in consumers}


def _nothing_prunable(analysis: Analysis) -> str:
    if not analysis.skipped:
        return "nothing prunable: the model has no Conv, Gemm or MatMul layer"
    first = analysis.skipped[0]
    return (f"nothing prunable: all {len(analysis.skipped)} candidate layers were skipped "
            f"(e.g. {first.node}: {first.reason}); run 'onnx-subprune analyze' for details")
