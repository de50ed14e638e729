"""The pruning pipeline: analyze -> calibrate -> select -> rewrite -> verify, as one call."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import onnx

from . import runtime
from .analyze import analyze
from .calibrate import GroupStats, Progress, Split, capture_stats, split_samples
from .budget import (
    Allocation, Limits, SizeModel, allocate_equal_loss, allocate_marginal, allocate_uniform, check_reachable, grid,
)
from .config import PruneConfig
from .errors import QualityError, SubpruneError, UnsupportedPattern
from .graph import pin_input_dims, prepare, read_constants
from .metrics import count_macs, count_params
from .ops import consumer_matrix
from .rewrite import channel_masks, rewrite
from .choose import choose, current_positions, original_to_current
from .sensitivity import Curve, measure_curves
from .types import Analysis, ChannelGroup, ConsumerUpdate, GroupPlan
from .verify import fidelity, predict

Log = Callable[[str], None]

MIN_HELD_OUT = 16
"""Fewest held-out samples the sensitivity curves are measured on (else calibration samples)."""


@dataclass(frozen=True)
class PruneResult:
    """The pruned model and the JSON-ready report of the run."""

    model: onnx.ModelProto
    report: dict


def prune(model: onnx.ModelProto, feeds: dict[str, np.ndarray], config: PruneConfig,
          progress: Progress | None = None, log: Log | None = None,
          counts: Sequence[int] | None = None) -> PruneResult:
    """Prune every channel group of ``model`` using calibration ``feeds`` (checked inputs,
    first axis = samples). ``progress(stage, done, total)`` and ``log(line)`` are optional.

    Kept counts per group: ``counts`` (in the order of
    ``analyze(model, config.include, config.exclude).groups``) when given, else allocated to meet ``config``'s params/FLOPs target, else ``config.kept_count``.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model, analysis = _analyzed(model, config)
    groups = analysis.groups
    size = SizeModel(pin_input_dims(model, feeds), groups, refit=config.refit,
                     bias_compensation=config.bias_compensation)
    grids = [grid(g.channels, config.min_count(g.channels), config.count_step(g.channels)) for g in groups]
    limits = Limits.from_ratios(size, config.target_params, config.target_flops)
    if counts is None and config.has_target:
        check_reachable(size, grids, limits)  # before any work
    timings["analyze"] = time.perf_counter() - clock
    batch_size, providers, split, weights, original = _runtime(model, groups, feeds, config, log)
    allocation, curves, initial = None, None, None
    by_keep = counts is None and not config.has_target
    if counts is not None:
        counts = _check_counts(counts, groups)
    elif config.has_target:
        clock = time.perf_counter()
        allocation, curves, initial = _allocate(model, groups, size, grids, limits, original, weights,
                                                feeds, split, batch_size, providers, config, progress)
        counts = allocation.counts
        timings["allocation"] = time.perf_counter() - clock
    else:
        counts = tuple(config.kept_count(g.channels) for g in groups)
    plans, entries = _prune_groups(model, groups, weights, feeds, split, batch_size, original,
                                   providers, counts, initial, config, progress, timings)
    clock = time.perf_counter()
    pruned = rewrite(model, plans)
    onnx.checker.check_model(pruned)
    timings["rewrite"] = time.perf_counter() - clock
    clock = time.perf_counter()
    verified, verified_on = _verify_indices(split, config.verify_samples)
    verify_feeds = {name: array[verified] for name, array in feeds.items()}
    outputs = fidelity(predict(model, verify_feeds, providers, batch_size),
                       predict(pruned, verify_feeds, providers, batch_size))
    timings["verify"] = time.perf_counter() - clock
    params = {"before": count_params(model), "after": count_params(pruned)}
    macs = {"before": count_macs(pin_input_dims(model, feeds)), "after": count_macs(pin_input_dims(pruned, feeds))}
    predicted = size.totals(counts)
    if log and predicted != (params["after"], macs["after"]):
        log(f"note: the size model predicted {predicted[0]:,} params and {predicted[1]:,} MACs, "
            f"the pruned model has {params['after']:,} and {macs['after']:,}")
    for index, entry in enumerate(entries):
        entry.update(_budget_entry(size, counts, index, curves[index] if curves else None))
    report = {
        "method": config.method,
        "keep": config.keep if by_keep else None,
        "refit": config.refit,
        "bias_compensation": config.bias_compensation,
        "ridge": config.ridge,
        "seed": config.seed,
        "provider": providers[0],
        "samples": {"calibration": int(len(split.calibration)), "holdout": int(len(split.holdout))},
        "groups": entries,
        "skipped": [vars(s) for s in analysis.skipped],
        "params": params,
        "macs": macs,
        "target": _target_report(config, allocation, params, macs, predicted),
        "outputs": outputs,
        "output_error": max(o["relative_error"] for o in outputs.values()),
        "verified_on": {"samples": int(len(verified)), "set": verified_on},
        "seconds": {k: round(v, 4) for k, v in timings.items()},
    }
    report["warnings"] = _warnings(report)
    if config.max_error is not None and report["output_error"] > config.max_error:
        raise QualityError(_too_large(report, config.max_error))
    return PruneResult(pruned, report)


LARGE_ERROR = 0.25
"""Relative output error from which the pruned model is flagged as far from the original."""

INACTIVE_ENERGY = 1e-3
"""A channel is inactive when its variance on the calibration data is below this fraction of the
mean variance of its group's channels."""

INACTIVE_SHARE = 0.25
"""Share of a group's channels inactive from which the calibration data is suspected."""

INACTIVE_MIN_GROUP = 8
"""Smallest group the inactive-channel warning looks at (one idle channel of two says little)."""


def _verify_indices(split: Split, limit: int) -> tuple[np.ndarray, str]:
    """Samples the pruned model is verified on: the held-out ones, else the calibration ones."""
    if len(split.holdout):
        return split.holdout[:limit], "held-out"
    return split.calibration[:limit], "calibration"


def _warnings(report: dict) -> list[str]:
    """One line per problem a user must hear of: a large output error, calibration data that
    leaves many of a group's channels inactive."""
    lines = []
    error, verified = report["output_error"], report["verified_on"]
    if error >= LARGE_ERROR:
        lines.append(f"the pruned model's outputs differ from the original's by {error:.3f} (relative error "
                     f"on {verified['samples']} {verified['set']} samples): it may be unusable; "
                     f"keep more, or check that the calibration data looks like deployment inputs")
    idle = [g for g in report["groups"]
            if g["channels"] >= INACTIVE_MIN_GROUP and g["inactive"] >= INACTIVE_SHARE * g["channels"]]
    if idle:
        worst = ", ".join(f"{g['group']} {g['inactive']}/{g['channels']}" for g in idle[:3])
        lines.append(f"the calibration data leaves many channels inactive in {len(idle)} of "
                     f"{len(report['groups'])} groups ({worst}{', ...' if len(idle) > 3 else ''}): if deployment "
                     f"inputs look different, those channels will be missed")
    return lines


def _too_large(report: dict, limit: float) -> str:
    """Why a result over the error limit is refused, naming the groups that cost the most."""
    verified = report["verified_on"]
    costs = sorted(((_cost(g), g["group"]) for g in report["groups"]), reverse=True)[:3]
    named = ", ".join(f"{name} ({cost:.3f})" for cost, name in costs)
    return (f"the pruned model's relative output error {report['output_error']:.4f} on "
            f"{verified['samples']} {verified['set']} samples exceeds the limit {limit:g}; "
            f"the groups that cost the most: {named}; nothing was written")


def _cost(entry: dict) -> float:
    """A group's share of the loss: its predicted output error where the sensitivity curves
    measured it, else its layer's unexplained residual sqrt(1 - F(S)/||Y||^2)."""
    if entry.get("predicted_loss") is not None:
        return float(entry["predicted_loss"])
    explained = entry["explained_holdout"] if entry["explained_holdout"] is not None else entry["explained"]
    return float(np.sqrt(max(0.0, 1.0 - explained)))


def _check_counts(counts: Sequence[int], groups: Sequence[ChannelGroup]) -> tuple[int, ...]:
    if len(counts) != len(groups):
        raise SubpruneError(f"{len(counts)} kept counts given for {len(groups)} channel groups")
    for count, group in zip(counts, groups):
        if not 1 <= int(count) <= group.channels:
            raise SubpruneError(f"group {group.name}: kept count {count} is not in [1, {group.channels}]")
    return tuple(int(c) for c in counts)


def _allocate(model, groups, size: SizeModel, grids, limits: Limits, original, weights, feeds, split,
              batch_size, providers, config: PruneConfig, progress):
    """Per-group counts meeting the target; the sensitivity curves and the original model's
    statistics of every group (reused by the prune) when the allocation measured them."""
    if config.allocation == "uniform":
        return allocate_uniform(size, grids, limits), None, None
    curves, stats, _ = _curves(model, groups, original, weights, feeds, split, batch_size, providers,
                               config, progress)
    rule = allocate_marginal if config.allocation == "marginal" else allocate_equal_loss
    return rule(size, grids, [c.loss for c in curves], limits), curves, stats


def _curves(model, groups, original, weights, feeds, split, batch_size, providers, config: PruneConfig,
            progress):
    """Sensitivity curves of every group, the original model's statistics they came from, and
    the samples the output error was measured on (held-out ones when there are enough)."""
    stats = capture_stats(groups, original, None, weights, feeds, split, batch_size, progress)
    indices = split.holdout if len(split.holdout) >= MIN_HELD_OUT else split.calibration
    indices = indices[: config.sensitivity_samples]
    subset = {name: array[indices] for name, array in feeds.items()}
    floors = [config.min_count(g.channels) for g in groups]
    curves = measure_curves(model, groups, stats, subset, providers, batch_size, floors, config, progress)
    return curves, stats, indices


def _budget_entry(size: SizeModel, counts: Sequence[int], index: int, curve: Curve | None) -> dict:
    """Per-group report fields: kept count and fraction, size of the tensors and layers whose
    shape depends on the group, predicted loss and the measured curve (sensitivity only)."""
    k = int(counts[index])
    n = int(size.channels[index])
    params, macs = size.group_totals(counts, index)
    entry = {"k": k, "fraction": k / n, "params": params, "macs": macs,
             "predicted_loss": None if curve is None else curve.loss(k)}
    if curve is not None:
        entry["curve"] = {"k": list(curve.points), "error": list(curve.errors)}
    return entry


def _target_report(config: PruneConfig, allocation: Allocation | None, params: dict, macs: dict,
                   predicted: tuple[int, int]) -> dict | None:
    if not config.has_target:
        return None
    return {
        "params": config.target_params,
        "flops": config.target_flops,
        "allocation": config.allocation,
        "min_keep": config.floor_fraction,
        "round_to": config.round_to,
        "achieved": {"params": params["after"] / params["before"],
                     "macs": macs["after"] / max(macs["before"], 1)},
        "predicted": {"params": predicted[0], "macs": predicted[1]},
        "tolerated_loss": None if allocation is None else allocation.tolerance,
        "uniform_fraction": None if allocation is None else allocation.fraction,
    }


def _prune_groups(model, groups: Sequence[ChannelGroup], weights, feeds, split, batch_size, original,
                  providers, counts: Sequence[int], initial, config: PruneConfig, progress, timings):
    """Capture statistics and select channels group by group, following ``config.schedule``.

    layer: one capture of all groups from the original model. seq / asym: groups in
    topological order, B from the model pruned so far (A from the original for asym).
    ``initial``: statistics of every group from the original model, if already captured.
    """
    capture = lambda gs, source, reference: capture_stats(
        gs, source, reference, weights, feeds, split, batch_size, progress)
    timings["capture"] = timings["select"] = 0.0
    clock = time.perf_counter()
    all_stats = None
    if config.schedule == "layer":
        all_stats = initial if initial is not None else capture(groups, original, None)
    timings["capture"] += time.perf_counter() - clock
    plans, entries = [], []
    for index, group in enumerate(groups):
        clock = time.perf_counter()
        if all_stats is not None:
            stats = original_to_current(group, all_stats[index], plans)
        elif not plans:
            stats = initial[0] if initial is not None else capture([group], original, None)[0]
        else:
            names = tuple(c.input for c in group.consumers)
            pruned = rewrite(model, plans)
            current = runtime.session(pruned, providers, names)
            mine, targets = _current_matrices(pruned, group, weights, plans)
            asym = config.schedule == "asym"
            stats = capture_stats([group], current, original if asym else None, mine, feeds, split,
                                  batch_size, progress, targets if asym else None)[0]
        captured = time.perf_counter()
        timings["capture"] += captured - clock
        plan, entry = _select(group, stats, counts[index], config, plans)
        timings["select"] += time.perf_counter() - captured
        entry["seconds"] = round(time.perf_counter() - clock, 4)
        plans.append(plan)
        entries.append(entry)
        if progress:
            progress("groups", index + 1, len(groups))
    return plans, entries


def _select(group: ChannelGroup, stats: GroupStats, k: int, config: PruneConfig,
            plans: Sequence[GroupPlan] = ()) -> tuple[GroupPlan, dict]:
    """Choose ``k`` channels of one group and the consumers' new weights; ``stats`` are in the
    coordinates of the model pruned by ``plans``."""
    chosen = choose(group, stats, k, config, plans)
    updates = tuple(
        ConsumerUpdate(c.node, fit.weight, fit.bias_shift) if config.refit else ConsumerUpdate(c.node)
        for c, fit in zip(group.consumers, chosen.fits)
    )
    kept = tuple(int(i) for i in chosen.kept)
    entry = {
        "group": group.name,
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
        "inactive": inactive_channels(group, stats, plans),
    }
    return GroupPlan(group, kept, updates), entry


def inactive_channels(group: ChannelGroup, stats: GroupStats, plans: Sequence[GroupPlan] = ()) -> int:
    """How many of the group's channels barely vary on the calibration data (variance below
    :data:`INACTIVE_ENERGY` of the group's mean, at every consumer)."""
    positions = current_positions(group, plans)
    energy = np.zeros(group.channels)
    for index, consumer in enumerate(stats.calibration):
        per_input = consumer.channel_energy(centered=True)
        where = np.arange(group.channels) if positions is None else positions[index]
        seen = where >= 0
        energy[seen] = np.maximum(energy[seen], per_input[where[seen]])
    return int(np.sum(energy <= INACTIVE_ENERGY * max(float(energy.mean()), 1e-300)))


def _current_matrices(pruned: onnx.ModelProto, group: ChannelGroup, weights: dict[str, np.ndarray],
                      plans: Sequence[GroupPlan]):
    """Consumer weights as they are in ``pruned`` (the model pruned by ``plans``) for consumers
    whose input an earlier group already shrank (after a Concat), and their original weights as
    the targets' weights; (``weights``, None) when no consumer was touched."""
    masks = channel_masks(plans)
    touched = [c for c in group.consumers if c.input in masks and not masks[c.input].all()]
    if not touched:
        return weights, None
    nodes = {node.name: node for node in pruned.graph.node}
    names = {nodes[c.node].input[1] for c in touched}
    values = read_constants(pruned, names)
    mine = dict(weights)
    for consumer in touched:
        node = nodes[consumer.node]
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0) if consumer.op == "Gemm" else 1.0
        mine[consumer.node] = consumer_matrix(replace(consumer, scale=alpha), values[node.input[1]])
    return mine, {c.node: weights[c.node] for c in touched}


def _consumer_matrices(model: onnx.ModelProto, groups: Sequence[ChannelGroup]) -> dict[str, np.ndarray]:
    """Consumer node -> its original weight as a (d, m) matrix."""
    consumers = [c for g in groups for c in g.consumers]
    values = read_constants(model, {c.weight for c in consumers})
    return {c.node: consumer_matrix(c, values[c.weight]) for c in consumers}


def _analyzed(model: onnx.ModelProto, config: PruneConfig) -> tuple[onnx.ModelProto, Analysis]:
    """The model with every node named, and its channel groups (at least one)."""
    model = prepare(model)
    analysis = analyze(model, config.include, config.exclude)
    if not analysis.groups:
        raise UnsupportedPattern(_nothing_prunable(analysis))
    return model, analysis


def _runtime(model: onnx.ModelProto, groups: Sequence[ChannelGroup], feeds: dict[str, np.ndarray],
             config: PruneConfig, log: Log | None):
    """(batch size, providers, sample split, consumer weight matrices, a session of the original
    model that also outputs every consumer's input)."""
    samples = len(next(iter(feeds.values())))
    batch_size = runtime.batch_size_for(model, config.batch_size)
    providers, note = runtime.choose_providers(config.device)
    if log:
        log(note)
    split = split_samples(samples, config.holdout, config.seed)
    weights = _consumer_matrices(model, groups)
    inputs = tuple(sorted({c.input for g in groups for c in g.consumers}))
    return batch_size, providers, split, weights, runtime.session(model, providers, inputs)


def _nothing_prunable(analysis: Analysis) -> str:
    if not analysis.skipped:
        return "nothing prunable: the model has no Conv, Gemm or MatMul layer"
    first = analysis.skipped[0]
    return (f"nothing prunable: all {len(analysis.skipped)} candidate layers were skipped "
            f"(e.g. {first.node}: {first.reason}); run 'onnx-subprune analyze' for details")


def sensitivity(model: onnx.ModelProto, feeds: dict[str, np.ndarray], config: PruneConfig,
                progress: Progress | None = None, log: Log | None = None) -> tuple[dict, list[Curve]]:
    """Per-group sensitivity curves of ``model`` (what ``--allocation sensitivity`` measures):
    a JSON-ready report and the :class:`Curve` objects."""
    clock = time.perf_counter()
    model, analysis = _analyzed(model, config)
    groups = analysis.groups
    batch_size, providers, split, weights, original = _runtime(model, groups, feeds, config, log)
    curves, _, indices = _curves(model, groups, original, weights, feeds, split, batch_size, providers,
                                 config, progress)
    held_out = len(split.holdout) >= MIN_HELD_OUT
    floors = [config.min_count(g.channels) for g in groups]
    fractions = sorted({config.floor_fraction, *config.sensitivity_points} - {0.0})
    entries = []
    for group, curve, floor in zip(groups, curves, floors):
        entry = curve.to_json()
        by_k = [max(floor, min(group.channels, int(f * group.channels + 0.5))) for f in fractions]
        entry["by_fraction"] = [curve.loss(k) for k in by_k]
        entry["by_fraction_k"] = by_k
        entries.append(entry)
    report = {
        "method": config.method,
        "refit": config.refit,
        "bias_compensation": config.bias_compensation,
        "provider": providers[0],
        "fractions": fractions,
        "samples": {"calibration": int(len(split.calibration)), "holdout": int(len(split.holdout)),
                    "measured": int(len(indices)), "measured_on": "held-out" if held_out else "calibration"},
        "groups": entries,
        "skipped": [vars(s) for s in analysis.skipped],
        "seconds": round(time.perf_counter() - clock, 4),
    }
    return report, curves
