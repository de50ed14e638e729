"""Choose one group's channels from its statistics, for plain and coupled consumers alike.

A consumer reads exactly the group's channels in a chain; after a Concat it also reads other
channels (fixed while this group is chosen), after a Split only some of them. Channel positions
are those of the model as pruned so far (``plans``): groups already pruned have shrunk the
consumers they share.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from .calibrate import GroupStats
from .config import PruneConfig
from .rewrite import channel_masks
from .select import Candidate, GroupSelection, cross_validated, cross_validated_choice, fit_consumer, select_group
from .select.coupling import consumer_kept, restrict, select_coupled
from .select.stats import forget_caches
from .types import ChannelGroup, GroupPlan


SELECT_THREADS = 1
"""BLAS threads of the selection: its greedy steps are many small products (gemv, rank-r
updates) that OpenBLAS threads only slow down, 1.5-14x on a 2-core machine with anything else
running (``tools/bench_speed.py selector``: the 512-channel greedy with one thread and all)."""


def selection_threads():
    """Context in which the greedy selection and refits run (:data:`SELECT_THREADS`)."""
    return threadpool_limits(SELECT_THREADS, user_api="blas")


def current_positions(group: ChannelGroup, plans: Sequence[GroupPlan]) -> list[np.ndarray] | None:
    """Per consumer, (n,) the input channel holding each group channel in the model pruned by
    ``plans`` (-1: the consumer does not read it); None when every consumer reads exactly the
    group's channels."""
    masks = channel_masks(plans, {c.input for c in group.consumers})
    if all(c.layout.is_full and c.input not in masks for c in group.consumers):
        return None
    result = []
    for consumer in group.consumers:
        where = consumer.layout.positions()
        mask = masks.get(consumer.input)
        if mask is not None:
            where = np.where(where >= 0, np.cumsum(mask)[where] - 1, -1)
        result.append(where)
    return result


def original_to_current(group: ChannelGroup, stats: GroupStats, plans: Sequence[GroupPlan]) -> GroupStats:
    """Statistics captured on the original model, restricted to the consumer channels that the
    model pruned by ``plans`` still has (the other groups' removed channels dropped)."""
    masks = channel_masks(plans, {c.input for c in group.consumers})
    if not any(c.input in masks for c in group.consumers):
        return stats

    def cut(all_stats):
        return tuple(
            restrict(s, np.flatnonzero(masks[c.input])) if c.input in masks else s
            for c, s in zip(group.consumers, all_stats)
        )

    return GroupStats(cut(stats.calibration), None if stats.holdout is None else cut(stats.holdout),
                      None if stats.folds is None else tuple(cut(fold) for fold in stats.folds))


def choose(group: ChannelGroup, stats: GroupStats, k: int, config: PruneConfig,
           plans: Sequence[GroupPlan] = (), refit: bool | None = None,
           given: Sequence[int] | None = None) -> GroupSelection:
    """Select ``k`` channels of ``group`` (``given``: keep these, as a plan says); ``stats`` are in
    the coordinates of the model pruned by ``plans``. Each fit has one row block per input
    channel the consumer keeps. With ``stats.folds``, ``explained_holdout`` is cross-validated
    over them (:func:`select.cross_validated`). What the statistics kept between the steps is
    dropped at the end (:func:`~.select.stats.forget_caches`)."""
    try:
        return _choose(group, stats, k, config, plans, refit, given)
    finally:
        forget_caches([*stats.calibration, *(stats.holdout or ()), *(s for fold in stats.folds or () for s in fold)])


def _choose(group: ChannelGroup, stats: GroupStats, k: int, config: PruneConfig, plans: Sequence[GroupPlan],
            refit: bool | None, given: Sequence[int] | None) -> GroupSelection:
    fitting = dict(refit_weights=config.refit if refit is None else refit, shrink=config.shrink,
                   ridge=config.ridge, bias_compensation=config.bias_compensation)
    options = dict(method=config.method, **fitting, seed=config.seed, holdout=stats.holdout, given=given)
    positions = current_positions(group, plans)
    if positions is None:
        chosen = select_group(stats.calibration, k, **options)
    else:
        chosen = select_coupled(stats.calibration, positions, k, **options)
    if stats.folds is None:
        return chosen
    consumers = stats.calibration
    kept = ([chosen.kept] * len(consumers) if positions is None
            else [consumer_kept(c, p, chosen.kept) for c, p in zip(consumers, positions)])
    if config.shrink == "cv" and fitting["refit_weights"]:
        return _cross_validated_refit(chosen, consumers, stats.folds, kept, fitting)
    fits = [partial(fit_consumer, **fitting, like=fit) for fit in chosen.fits]
    return replace(chosen, explained_holdout=cross_validated(stats.folds, kept, fits, consumers))


def _cross_validated_refit(chosen: GroupSelection, consumers, folds, kept, fitting: dict) -> GroupSelection:
    """``chosen`` with each consumer refitted by least squares or shrunk, whichever the folds
    score better (``shrink`` "cv"; ``chosen.fits`` are the least-squares ones). The shrunk fits
    on all samples, whose strength the folds' shrunk fits take, are made side by side with the
    folds' least-squares fits."""
    shrunk = dict(fitting, shrink="refit")

    def on_fold(options: dict):
        return lambda train, channels, whole: fit_consumer(train, channels, **options, like=whole)

    candidates = [[Candidate(plain, on_fold(fitting)),
                   Candidate(partial(fit_consumer, stats, channels, **shrunk), on_fold(shrunk))]
                  for plain, stats, channels in zip(chosen.fits, consumers, kept)]
    fits, explained, held_out = cross_validated_choice(consumers, folds, kept, candidates)
    return replace(chosen, fits=fits, explained=explained, explained_holdout=held_out)
