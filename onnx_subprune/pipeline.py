"""The pruning pipeline: analyze -> calibrate -> select -> rewrite -> verify, as one call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import onnx

from . import runtime
from .analyze import analyze_selecting
from .augment import augment
from .calibrate import (AUTO_HOLDOUT, GroupStats, Product, Progress, Split, capture_names, capture_stats,
                        consumer_products, consumer_weights, expand_split,
                        keyed_batches, split_samples)
from .budget import (
    Allocation, Limits, SizeModel, allocate_equal_loss, allocate_marginal, allocate_uniform, check_reachable, grid,
    reachable,
)
from .config import PruneConfig
from .data import share_scalars
from .frontier import Cache, Frontier
from .errors import InternalError, QualityError, SubpruneError, UnsupportedPattern
from .graph import check_onnx, pin_input_dims, prepare, read_constants
from .metrics import count_macs, count_macs_open, count_params
from .ops import LAYERS
from .rewrite import channel_masks, latest_updates, rewrite, updated_weight
from .choose import choose, current_positions, original_to_current, selection_threads
from .sensitivity import Curve, measure_curves
from .plans import Plan, group_fractions
from .report import (GroupReport, PlannedGroupReport, PlanReport, PruneReport, SensitivityReport, TargetReport,
                     verified_text)
from .shapes import check_pinned, keep_interface, open_dims_note, pin_shapes
from .select import schedule_of
from .types import Analysis, ChannelGroup, ConsumerUpdate, GroupPlan
from .verify import fidelity, output_error, predict

Log = Callable[[str], None]

MIN_HELD_OUT = 16
"""Fewest held-out samples the sensitivity curves are measured on (else calibration samples)."""


@dataclass(frozen=True)
class PruneResult:
    """The pruned model and the report of the run."""

    model: onnx.ModelProto
    report: PruneReport


@dataclass
class _Run:
    """What the stages of one run share: the prepared model and its groups, the calibration
    samples and their split, onnxruntime settings, the consumers' original weight matrices
    (node -> (d, m)) and a session of the original model that also outputs every consumer's
    input."""

    model: onnx.ModelProto
    analysis: Analysis
    feeds: dict[str, np.ndarray]
    config: PruneConfig
    split: Split
    batch_size: int
    providers: list[str]
    weights: dict[str, np.ndarray]
    products: dict[str, Product]
    original: object
    progress: Progress | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def groups(self) -> tuple[ChannelGroup, ...]:
        return self.analysis.groups

    def capture(self, groups: Sequence[ChannelGroup], source, reference, weights=None,
                targets=None) -> list[GroupStats]:
        """Statistics of ``groups`` with B from session ``source`` and A from ``reference``
        (None: A = B); ``weights`` / ``targets`` as in :func:`calibrate.capture_stats`; the
        reference (the original) gives the targets of the consumers in ``self.products``."""
        return capture_stats(groups, source, reference, self.weights if weights is None else weights,
                             self.feeds, self.split, self.batch_size, self.progress, targets, self.products)


def _analyzed(model: onnx.ModelProto, config: PruneConfig) -> tuple[onnx.ModelProto, Analysis, Analysis]:
    """The model with every node named and constant layout ops folded, its groups (at least
    one): the channel groups, with the input selections when ``config.select_inputs`` is
    "always", or "auto" and there is no channel group; and every group the analysis found (the
    selections too, unless "never")."""
    model = prepare(model)
    analysis, found = analyze_selecting(model, config.include, config.exclude, config.select_inputs)
    if not analysis.groups:
        raise UnsupportedPattern(_nothing_prunable(analysis))
    return model, analysis, found


def _grids(groups: Sequence[ChannelGroup], config: PruneConfig) -> list[np.ndarray]:
    """The counts each group may keep under a target; one count where ``config.group_keep``
    fixes the group's fraction."""
    grids = [grid(g.channels, config.min_count(g.channels), config.count_step(g.channels)) for g in groups]
    for index, fraction in enumerate(group_fractions(config.group_keep, groups)):
        if fraction is not None:
            grids[index] = np.array([config.kept_count(groups[index].channels, fraction)])
    return grids


def _start(model: onnx.ModelProto, analysis: Analysis, feeds: dict[str, np.ndarray], config: PruneConfig,
           progress: Progress | None, log: Log | None) -> _Run:
    """Choose providers and batch size, split the samples and open a session of the original
    model (``model`` as :func:`_analyzed` returns it)."""
    samples = len(next(iter(feeds.values())))
    split = split_samples(samples, _holdout(config), config.seed)
    if config.augment:
        feeds, source = augment(feeds, config.augment)
        split = expand_split(split, source)
    providers, note = runtime.choose_providers(config.device)
    if log:
        log(note)
    weights = consumer_weights(model, analysis.groups)
    inputs = tuple(sorted({c.input for g in analysis.groups for c in g.consumers}))
    return _Run(
        model=model, analysis=analysis, feeds=feeds, config=config,
        split=split,
        batch_size=runtime.batch_size_for(model, config.batch_size, feeds), providers=providers,
        weights=weights, products=consumer_products(model, analysis.groups, weights),
        original=runtime.session(model, providers, inputs), progress=progress,
    )


def _holdout(config: PruneConfig) -> float | str:
    """The holdout of the run: ``config.holdout``, except that ``--max-error`` with "auto"
    holds :data:`calibrate.AUTO_HOLDOUT` out at any sample count, so that the error it bounds is
    measured on samples the fit did not see (in-sample, it reads several times lower)."""
    if config.holdout == "auto" and config.max_error is not None:
        return AUTO_HOLDOUT
    return config.holdout


def prune(model: onnx.ModelProto, feeds: dict[str, np.ndarray], config: PruneConfig,
          progress: Progress | None = None, log: Log | None = None,
          counts: Sequence[int] | None = None, plan: Plan | None = None) -> PruneResult:
    """Prune every channel group of ``model`` using calibration ``feeds`` (checked inputs,
    first axis = samples). ``progress(stage, done, total)`` and ``log(line)`` are optional.

    Kept counts per group: ``counts`` (in the order of
    ``analyze(model, config.include, config.exclude).groups``, with ``select_inputs=True`` when
    ``config.select_inputs`` is "always" or there is no channel group) or ``plan``'s (its kept
    channels too, where it lists them) when given, else allocated to meet ``config``'s
    params/FLOPs target (with input selections where the groups alone cannot, see
    :attr:`PruneConfig.select_inputs`), else ``config.kept_count``; ``config.group_keep``
    overrides any of them.
    """
    feeds = share_scalars(feeds, "calibration data")
    budget = _budget(model, feeds, config, progress, log, counts, plan, start=True)
    run, size, allocation, curves = budget.run, budget.size, budget.allocation, budget.curves
    groups, timings, original = run.groups, run.timings, model
    verified, verified_on = _verify_indices(run.split, config.verify_samples)
    verify_feeds = {name: array[verified] for name, array in feeds.items()}
    reference = None  # the original's outputs, from the capture where it computes them (_reference_on_the_way)
    if not _reference_on_the_way(run, verified):
        clock = time.perf_counter()
        reference = predict(run.model, verify_feeds, run.providers, run.batch_size)
        timings["verify"] = timings.get("verify", 0.0) + time.perf_counter() - clock  # the original's side of it
    compared, compared_on, used = None, None, None
    alternative = budget.alternative
    if alternative is None or alternative.counts == budget.counts:
        chosen = _pruned(run, budget, budget.counts, original, verify_feeds, reference)
    elif verified_on == "held-out" or not run.split.folds:
        # both final models, compared on the verification samples
        chosen = _pruned(run, budget, budget.counts, original, verify_feeds, reference)
        other = _pruned(run, budget, alternative.counts, original, verify_feeds, chosen.reference)
        compared = {config.allocation: chosen.error, "uniform": other.error}
        compared_on = verified_text({"samples": len(verified), "set": verified_on})
        if other.error < chosen.error:
            chosen, allocation, used = other, alternative, "uniform"
    else:
        # every sample is in the fit: compare models fitted without one fold, on that fold
        errors, compared_on = _fold_check(run, budget, (budget.counts, alternative.counts), original)
        compared = {config.allocation: errors[0], "uniform": errors[1]}
        if errors[1] < errors[0]:
            allocation, used = alternative, "uniform"
        chosen = _pruned(run, budget, allocation.counts, original, verify_feeds, reference)
    counts, entries, pruned, outputs = chosen.counts, chosen.entries, chosen.model, chosen.outputs
    params = {"before": count_params(run.model), "after": count_params(pruned)}
    macs = {"before": budget.macs, "after": count_macs(pin_input_dims(pruned, feeds))}
    # a model whose groups all keep every channel is left as it is (see _select), with no new biases
    predicted = (params["before"], macs["before"]) if _untouched(counts, groups) else size.totals(counts)
    if predicted != (params["after"], macs["after"]):
        raise InternalError(f"the size model predicted {predicted[0]:,} params and {predicted[1]:,} MACs, "
                            f"the pruned model has {params['after']:,} and {macs['after']:,}")
    for index, entry in enumerate(entries):
        _add_budget(entry, size, counts, index, curves[index] if curves else None)
    report = PruneReport(
        method=config.method,
        keep=config.keep if budget.by_keep else None,
        refit=config.refit,
        bias_compensation=config.bias_compensation,
        ridge=config.ridge,
        seed=config.seed,
        provider=run.providers[0],
        samples=_samples_report(run.split),
        groups=entries,
        skipped=list(run.analysis.skipped),
        params=params,
        macs=macs,
        target=_target_report(config, allocation, params, macs, predicted, compared, used, compared_on),
        outputs=outputs,
        output_error=chosen.error,
        verified_on={"samples": int(len(verified)), "set": verified_on},
        seconds={k: round(timings[k], 4) for k in sorted(timings, key=_stage_order)},
    )
    report.warnings = report.find_warnings()
    if config.max_error is not None and report.output_error > config.max_error:
        raise QualityError(report.too_large(config.max_error))
    return PruneResult(pruned, report)


STAGES = ("analyze", "allocation", "capture", "select", "rewrite", "verify")
"""The stages whose seconds the report gives, in the order they run."""


def _stage_order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


@dataclass(frozen=True)
class _Candidate:
    """The model pruned to one allocation's counts, with its group entries and its outputs'
    fidelity on the verification samples (``error``: the report's output error)."""

    counts: tuple[int, ...]
    entries: list[GroupReport]
    model: onnx.ModelProto
    outputs: dict
    error: float
    reference: dict[str, np.ndarray]  # the original's outputs on the verification samples


def _fold_check(run: _Run, budget: "_Budget", candidates: Sequence[tuple[int, ...]],
                original: onnx.ModelProto) -> tuple[list[float], str]:
    """Output error of the model pruned to each of ``candidates`` (kept counts) when fitted on
    the calibration samples outside the first cross-validation fold, measured on that fold's
    original samples, which neither fit saw; and those samples in words. In-sample, a group
    whose refit overfits few samples looks better than it is, and the allocation that leans on
    it wins the comparison it then loses on deployment inputs. The seconds count as allocation."""
    split = run.split
    check, rest = split.folds[0], split.folds[1:]
    fit = replace(split, calibration=np.sort(np.concatenate(rest)), holdout=split.holdout[:0],
                  folds=rest if len(rest) >= 2 else ())
    held = check if split.originals is None else check[check < split.originals]
    feeds = {name: array[held] for name, array in run.feeds.items()}
    clock = time.perf_counter()
    reference = predict(run.model, feeds, run.providers, run.batch_size)
    checking = replace(run, split=fit, timings={"verify": time.perf_counter() - clock})
    unmeasured = replace(budget, initial=None)  # the budget's statistics include the fold: captured again
    errors = [_pruned(checking, unmeasured, counts, original, feeds, reference).error for counts in candidates]
    run.timings["allocation"] = run.timings.get("allocation", 0.0) + sum(checking.timings.values())
    return errors, f"{len(held)} held-out calibration samples (the fits of this check left them out)"


def _pruned(run: _Run, budget: "_Budget", counts: tuple[int, ...], original: onnx.ModelProto,
            verify_feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> _Candidate:
    """Capture, select, rewrite and verify at ``counts`` (the stages' seconds add up over calls);
    ``reference``: the original's outputs on ``verify_feeds``, None when the capture gives them
    on the way (:func:`_reference_on_the_way`)."""
    spent = {key: run.timings.get(key, 0.0) for key in ("capture", "select", "rewrite", "verify")}
    plans, entries, found = _prune_groups(run, counts, budget.initial, budget.given, reference is None)
    clock = time.perf_counter()
    pruned = keep_interface(rewrite(run.model, plans), original)
    check_onnx(pruned)
    run.timings["rewrite"] = time.perf_counter() - clock
    clock = time.perf_counter()
    reference = reference if reference is not None else found
    if reference is None:  # not on the way after all (a schedule without the original's frontier)
        reference = predict(run.model, verify_feeds, run.providers, run.batch_size)
    outputs = fidelity(reference, predict(pruned, verify_feeds, run.providers, run.batch_size))
    run.timings["verify"] += time.perf_counter() - clock
    for key, before in spent.items():
        run.timings[key] += before
    return _Candidate(counts, entries, pruned, outputs, max(output_error(o) for o in outputs.values()), reference)


@dataclass
class _Budget:
    """The kept counts of a run and what they came from: the pinned, prepared model's size
    model and MACs, the kept channels a plan gives (None per group: chosen by the method), the
    allocation, sensitivity curves and original statistics when measured, and the run's
    context (None for a dry run that measured nothing)."""

    model: onnx.ModelProto
    analysis: Analysis
    size: SizeModel
    macs: int
    counts: tuple[int, ...]
    given: list[tuple[int, ...] | None]
    by_keep: bool
    allocation: Allocation | None = None
    curves: list[Curve] | None = None
    initial: list[GroupStats] | None = None
    run: _Run | None = None
    alternative: Allocation | None = None


def _budget(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None, config: PruneConfig,
            progress: Progress | None, log: Log | None, counts: Sequence[int] | None, plan: Plan | None,
            start: bool) -> _Budget:
    """Pin and analyze ``model``, then decide every group's kept count (see :func:`prune`);
    ``start``: open the run (sessions of the original) even when the counts need no measurement.
    ``feeds`` may be None only when nothing is measured (a dry run by keep, plan or uniform)."""
    clock = time.perf_counter()
    model = pin_shapes(model, config.input_shapes)
    if feeds is not None:
        check_pinned(feeds, config.input_shapes, "calibration data")
    model, analysis, found = _analyzed(model, config)
    pinned = pin_input_dims(model, feeds) if feeds is not None else model

    def sized(groups):
        size = SizeModel(pinned, groups, refit=config.refit, bias_compensation=config.bias_compensation)
        return size, _grids(groups, config), Limits.from_ratios(size, config.target_params, config.target_flops)

    size, grids, limits = sized(analysis.groups)
    allocating = counts is None and plan is None and config.has_target
    if config.select_inputs == "auto" and len(found.groups) > len(analysis.groups) and (
            (allocating and not reachable(size, grids, limits)) or
            (plan is not None and len(plan.groups) > len(analysis.groups))):  # a plan with input selections
        if log and allocating:
            log(f"the channel groups alone cannot reach the target: also selecting the inputs of "
                f"{len(found.groups) - len(analysis.groups)} tensors that layers read and no group prunes")
        analysis = found
        size, grids, limits = sized(analysis.groups)
    groups = analysis.groups
    macs, open_layers = count_macs_open(pinned)
    if open_layers and log:
        log(open_dims_note(open_layers))
    by_keep = counts is None and plan is None and not config.has_target
    given: list[tuple[int, ...] | None] = [None] * len(groups)
    if plan is not None:
        counts, given = plan.match(groups)
    if counts is not None:
        counts = list(_check_counts(counts, groups))
    elif not config.has_target:
        counts = [config.kept_count(g.channels) for g in groups]
    for index, fraction in enumerate(group_fractions(config.group_keep, groups)):
        if fraction is not None:
            given[index] = None
            if counts is not None:
                counts[index] = config.kept_count(groups[index].channels, fraction)
    if counts is None:
        check_reachable(size, grids, limits)  # before any work
    measured = counts is None and config.allocation != "uniform"
    run, analyzed = None, time.perf_counter() - clock
    if start or measured:
        if feeds is None:
            raise SubpruneError(f"the {config.allocation} allocation measures the model: it needs calibration data")
        run = _start(model, analysis, feeds, config, progress, log)
        run.timings["analyze"] = analyzed
    budget = _Budget(model, analysis, size, macs, (), given, by_keep, run=run)
    if counts is None:
        clock = time.perf_counter()
        if measured:
            budget.allocation, budget.curves, budget.initial = _allocate(run, size, grids, limits)
            budget.alternative = allocate_uniform(size, grids, limits)
        else:
            budget.allocation = allocate_uniform(size, grids, limits)
        counts = budget.allocation.counts
        if run is not None:
            run.timings["allocation"] = time.perf_counter() - clock
    budget.counts = tuple(int(k) for k in counts)
    return budget


def dry_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None, config: PruneConfig,
            progress: Progress | None = None, log: Log | None = None, counts: Sequence[int] | None = None,
            plan: Plan | None = None) -> PlanReport:
    """What :func:`prune` would keep, without pruning: every group's kept count and the size
    model's predicted params and MACs (a dry run). ``feeds`` are needed only when the
    allocation measures sensitivity curves (and size the MACs of symbolic input dims)."""
    feeds = share_scalars(feeds, "calibration data") if feeds is not None else None
    budget = _budget(model, feeds, config, progress, log, counts, plan, start=False)
    size, counts = budget.size, budget.counts
    entries = []
    for index, group in enumerate(budget.analysis.groups):
        params, macs = size.group_totals(counts, index)
        curve = budget.curves[index] if budget.curves else None
        entries.append(PlannedGroupReport(
            group=group.name, producer=group.lead, producers=[p.node for p in group.producers],
            consumers=[c.node for c in group.consumers], channels=group.channels, k=counts[index],
            fraction=counts[index] / group.channels, params=params, macs=macs,
            predicted_loss=None if curve is None else curve.loss(counts[index]),
            kept=None if budget.given[index] is None else list(budget.given[index])))
    before = (count_params(budget.model), budget.macs)
    predicted = before if _untouched(counts, budget.analysis.groups) else size.totals(counts)
    return PlanReport(
        method=config.method, keep=config.keep if budget.by_keep else None, groups=entries,
        skipped=list(budget.analysis.skipped),
        params={"before": before[0], "predicted": predicted[0]},
        macs={"before": before[1], "predicted": predicted[1]},
        target=_target_report(config, budget.allocation, {"before": before[0], "after": predicted[0]},
                              {"before": before[1], "after": predicted[1]}, predicted))


INACTIVE_ENERGY = 1e-3
"""A channel is inactive when its variance on the calibration data is below this fraction of the
mean variance of its group's channels."""


def _samples_report(split: Split) -> dict:
    """The report's sample counts: calibration and held-out originals, how the held-out explained
    variance is measured and, with augmentation, the copies added to the statistics."""
    calibration = len(split.plain_calibration)
    counts = {"calibration": int(calibration), "holdout": int(len(split.holdout)), "holdout_kind": split.kind}
    if split.originals is not None:
        counts["augmented"] = int(len(split.calibration) - calibration)
    return counts


def _verify_indices(split: Split, limit: int) -> tuple[np.ndarray, str]:
    """Samples the pruned model is verified on: the held-out ones, else the calibration ones
    (originals, not augmented copies)."""
    if len(split.holdout):
        return split.holdout[:limit], "held-out"
    return split.plain_calibration[:limit], "calibration"


def _check_counts(counts: Sequence[int], groups: Sequence[ChannelGroup]) -> tuple[int, ...]:
    if len(counts) != len(groups):
        raise SubpruneError(f"{len(counts)} kept counts given for {len(groups)} channel groups")
    for count, group in zip(counts, groups):
        if not 1 <= int(count) <= group.channels:
            raise SubpruneError(f"group {group.name}: kept count {count} is not in [1, {group.channels}]")
    return tuple(int(c) for c in counts)


def _allocate(run: _Run, size: SizeModel, grids, limits: Limits):
    """Per-group counts meeting the target; the sensitivity curves and the original model's
    statistics of every group (reused by the prune) when the allocation measured them."""
    if run.config.allocation == "uniform":
        return allocate_uniform(size, grids, limits), None, None
    curves, stats, _ = _curves(run)
    rule = allocate_marginal if run.config.allocation == "marginal" else allocate_equal_loss
    return rule(size, grids, [c.loss for c in curves], limits), curves, stats


def _curves(run: _Run):
    """Sensitivity curves of every group, the original model's statistics they came from, and
    the samples the output error was measured on (held-out ones when there are enough)."""
    config, split = run.config, run.split
    stats = run.capture(run.groups, run.original, None)
    indices = split.holdout if len(split.holdout) >= MIN_HELD_OUT else split.plain_calibration
    indices = indices[: config.sensitivity_samples]
    subset = {name: array[indices] for name, array in run.feeds.items()}
    floors = [config.min_count(g.channels) for g in run.groups]
    curves = measure_curves(run.model, run.groups, stats, subset, run.providers, run.batch_size, floors,
                            config, run.progress)
    return curves, stats, indices


def _add_budget(entry: GroupReport, size: SizeModel, counts: Sequence[int], index: int,
                curve: Curve | None) -> None:
    """Fill a group's size fields: kept count and fraction, size of the tensors and layers whose
    shape depends on the group, predicted loss and the measured curve (sensitivity only)."""
    entry.k = int(counts[index])
    entry.fraction = entry.k / int(size.channels[index])
    entry.params, entry.macs = size.group_totals(counts, index)
    if curve is not None:
        entry.predicted_loss = curve.loss(entry.k)
        entry.curve = {"k": list(curve.points), "error": list(curve.errors)}


def _target_report(config: PruneConfig, allocation: Allocation | None, params: dict, macs: dict,
                   predicted: tuple[int, int], compared: dict | None = None,
                   used: str | None = None, compared_on: str | None = None) -> TargetReport | None:
    """The report's target section; ``compared``: the output error of the model pruned to each
    candidate allocation, measured on ``compared_on``; ``used``: the one written (default: the
    configured one)."""
    if not config.has_target:
        return None
    return TargetReport(
        params=config.target_params,
        flops=config.target_flops,
        allocation=used or config.allocation,
        min_keep=config.floor_fraction,
        round_to=config.round_to,
        achieved={"params": params["after"] / params["before"], "macs": macs["after"] / max(macs["before"], 1)},
        predicted={"params": predicted[0], "macs": predicted[1]},
        tolerated_loss=None if allocation is None else allocation.tolerance,
        uniform_fraction=None if allocation is None else allocation.fraction,
        compared=compared,
        compared_on=compared_on,
    )


def _prune_groups(run: _Run, counts: Sequence[int], initial,
                  given: Sequence[Sequence[int] | None] | None = None, reference: bool = False
                  ) -> tuple[list[GroupPlan], list[GroupReport], dict[str, np.ndarray] | None]:
    """Capture statistics and select channels group by group, following the method's capture
    schedule.

    layer: one capture of all groups from the original model. seq / asym: groups in
    topological order, B from the model pruned so far (A from the original for asym).
    ``initial``: statistics of every group from the original model, if already captured.
    ``given``: per group, the channels to keep (a plan's) or None (chosen by the method).
    ``reference``: also give the original's outputs on the calibration samples, from the
    original's frontier (asym; its seconds count as verify), else None.
    """
    config, timings, groups = run.config, run.timings, run.groups
    schedule = schedule_of(config.method)
    touched = refitted_consumers(counts, groups)
    timings["capture"] = timings["select"] = timings["verify"] = 0.0
    clock = time.perf_counter()
    all_stats = None
    if schedule == "layer":
        all_stats = initial if initial is not None else run.capture(groups, run.original, None)
    timings["capture"] += time.perf_counter() - clock
    plans, entries = [], []
    fixed = runtime.fixed_batch(run.model, run.feeds)
    with Cache(config.cache_memory << 20) as cache:
        pruned_side = Frontier(cache, "pruned", run.providers, fixed)
        original_side = Frontier(cache, "original", run.providers, fixed) if schedule == "asym" else None
        for index, group in enumerate(groups):
            clock = time.perf_counter()
            if all_stats is not None:
                stats = original_to_current(group, all_stats[index], plans)
            elif not plans and initial is not None:
                stats = initial[0]
            else:
                stats = _capture_step(run, groups, index, plans, pruned_side, original_side)
            captured = time.perf_counter()
            timings["capture"] += captured - clock
            plan, entry = _select(group, stats, counts[index], config, plans, touched,
                                  given[index] if given is not None else None)
            timings["select"] += time.perf_counter() - captured
            entry.seconds = round(time.perf_counter() - clock, 4)
            plans.append(plan)
            entries.append(entry)
            if run.progress:
                run.progress("groups", index + 1, len(groups))
        outputs = None
        if reference and original_side is not None:
            clock = time.perf_counter()
            outputs = _outputs_from(original_side, run)
            timings["verify"] += time.perf_counter() - clock
    return plans, entries, outputs


def _reference_on_the_way(run: _Run, verified: np.ndarray) -> bool:
    """Whether the original's outputs on the ``verified`` samples come from the asym capture,
    which computes the original model on the calibration samples anyway (then only the part
    after the last group's consumers is run for them, not the whole model once more): the
    samples are the calibration ones in the same order, and every graph output is computed by a
    node and given by :func:`runtime.run` as onnxruntime computes it, as the capture's parts
    give it (:func:`runtime.samples_first_as_run`)."""
    if schedule_of(run.config.method) != "asym" or not np.array_equal(verified, run.split.calibration):
        return False
    made = {name for node in run.model.graph.node for name in node.output}
    return all(output.name in made for output in run.model.graph.output) and runtime.samples_first_as_run(run.model)


def _outputs_from(side: Frontier, run: _Run) -> dict[str, np.ndarray]:
    """The model's graph outputs on the calibration samples, from a frontier of the original
    model that the capture has run (only the part after its kept tensors)."""
    names = [output.name for output in run.model.graph.output]
    side.step(run.model, names, ())
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for key, feed in keyed_batches("calibration", run.feeds, run.split.calibration, run.batch_size):
        for name, value in side(key, feed, names).items():
            parts[name].append(value)
    side.settle()
    return {name: np.concatenate(values) for name, values in parts.items()}


def _capture_step(run: _Run, groups: Sequence[ChannelGroup], index: int, plans: Sequence[GroupPlan],
                  pruned_side: Frontier, original_side: Frontier | None) -> GroupStats:
    """Statistics of ``groups[index]`` for seq / asym: B from the model pruned by ``plans`` and
    (asym, once a group is pruned) A from the original, each computed from its frontier."""
    group = groups[index]
    b_names, a_names = capture_names(group.consumers, run.products)
    later_b, later_a = capture_names([c for later in groups[index + 1:] for c in later.consumers], run.products)
    changing = [node for later in groups[index:] for node in later.changes]
    reference = original_side if original_side is not None and plans else None
    pruned_side.step(run.model, b_names, changing, later_b, plans)
    if reference is not None:
        outputs = [output.name for output in run.model.graph.output]  # kept for _outputs_from when computed
        reference.step(run.model, a_names, (), later_a + outputs)
    mine, targets = _current_matrices(run.model, group, run.weights, plans) if plans else (run.weights, None)
    stats = run.capture([group], pruned_side, reference, mine, targets if reference is not None else None)[0]
    for side in (pruned_side, reference):
        if side is not None:
            side.settle()
    return stats


def refitted_consumers(counts: Sequence[int], groups: Sequence[ChannelGroup]) -> frozenset[str]:
    """The consumers whose input loses channels: one of the groups they read keeps fewer than
    all. The others are left exactly as they are (no refit, no new bias)."""
    return frozenset(c.node for k, g in zip(counts, groups) if k < g.channels for c in g.consumers)


def _untouched(counts: Sequence[int], groups: Sequence[ChannelGroup]) -> bool:
    """Every group keeps all its channels: nothing is pruned and nothing is re-fitted."""
    return all(k == g.channels for k, g in zip(counts, groups))


def _select(group: ChannelGroup, stats: GroupStats, k: int, config: PruneConfig,
            plans: Sequence[GroupPlan] = (), touched: frozenset[str] | None = None,
            given: Sequence[int] | None = None) -> tuple[GroupPlan, GroupReport]:
    """Choose ``k`` channels of one group and the consumers' new weights; ``stats`` are in the
    coordinates of the model pruned by ``plans``. ``touched``: the consumers to re-fit
    (:func:`refitted_consumers`; None: all of them), the others keep their weights. ``given``:
    keep these channels."""
    refitted = [config.refit and (touched is None or c.node in touched) for c in group.consumers]
    refit = any(refitted)
    with selection_threads():
        chosen = choose(group, stats, k, config, plans, refit=refit, given=given)
    updates = tuple(
        ConsumerUpdate(c.node, fit.weight, fit.bias_shift) if again else ConsumerUpdate(c.node)
        for c, fit, again in zip(group.consumers, chosen.fits, refitted)
    )
    kept = tuple(int(i) for i in chosen.kept)
    entry = GroupReport(
        group=group.name,
        producer=group.lead,
        producers=[p.node for p in group.producers],
        consumers=[c.node for c in group.consumers],
        channels=group.channels,
        kept=list(kept),
        explained=float(chosen.explained),
        explained_holdout=None if chosen.explained_holdout is None else float(chosen.explained_holdout),
        rows=min(s.n_rows for s in stats.calibration),
        columns=max(s.d for s in stats.calibration),
        underdetermined=bool(chosen.underdetermined),
        inactive=inactive_channels(group, stats, plans),
    )
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


def _current_matrices(model: onnx.ModelProto, group: ChannelGroup, weights: dict[str, np.ndarray],
                      plans: Sequence[GroupPlan]):
    """Consumer weights as they are in ``model`` pruned by ``plans`` for consumers whose input
    an earlier group already shrank (after a Concat), and their original weights as the
    targets' weights; (``weights``, None) when no consumer was touched. Each is the weight the
    rewrite gives it (:func:`rewrite.updated_weight`), without rewriting the model."""
    masks = channel_masks(plans, {c.input for c in group.consumers})
    touched = [c for c in group.consumers if c.input in masks and not masks[c.input].all()]
    if not touched:
        return weights, None
    latest = latest_updates(plans)
    values = read_constants(model, {c.weight for c in touched})
    mine = dict(weights)
    for consumer in touched:
        planned, update = latest.get(consumer.node, (consumer, ConsumerUpdate(consumer.node)))
        weight = updated_weight(planned, update, masks[consumer.input], values[consumer.weight])
        now = replace(consumer, scale=1.0 if update.weight is not None else consumer.scale)
        mine[consumer.node] = LAYERS[consumer.op].matrix(now, weight)
    return mine, {c.node: weights[c.node] for c in touched}


def _nothing_prunable(analysis: Analysis) -> str:
    if not analysis.skipped:
        return "nothing prunable: the model has no Conv, Gemm or MatMul layer"
    first = analysis.skipped[0]
    return (f"nothing prunable: all {len(analysis.skipped)} candidate layers were skipped "
            f"(e.g. {first.node}: {first.reason}); run 'onnx-subprune analyze' for details")


def sensitivity(model: onnx.ModelProto, feeds: dict[str, np.ndarray], config: PruneConfig,
                progress: Progress | None = None, log: Log | None = None) -> tuple[SensitivityReport, list[Curve]]:
    """Per-group sensitivity curves of ``model`` (what the ``sensitivity`` allocation measures):
    the report and the :class:`Curve` objects."""
    clock = time.perf_counter()
    feeds = share_scalars(feeds, "calibration data")
    check_pinned(feeds, config.input_shapes, "calibration data")
    model, analysis, _ = _analyzed(pin_shapes(model, config.input_shapes), config)
    run = _start(model, analysis, feeds, config, progress, log)
    groups, split = run.groups, run.split
    curves, _, indices = _curves(run)
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
    report = SensitivityReport(
        method=config.method,
        refit=config.refit,
        bias_compensation=config.bias_compensation,
        provider=run.providers[0],
        fractions=fractions,
        samples={"calibration": int(len(split.calibration)), "holdout": int(len(split.holdout)),
                 "measured": int(len(indices)), "measured_on": "held-out" if held_out else "calibration"},
        groups=entries,
        skipped=list(run.analysis.skipped),
        seconds=round(time.perf_counter() - clock, 4),
    )
    return report, curves
