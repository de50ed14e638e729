"""Channel selection and least-squares refit for one channel group (pure NumPy/SciPy).

Entry point: :func:`select_group`. The building blocks (:class:`ConsumerStats`,
:func:`greedy_select`, :func:`refit`, the baselines) are re-exported for direct use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .baselines import activation_norm_order, random_order, weight_norm_order
from .greedy import GreedyResult, greedy_select
from .refit import (
    Refit,
    explained,
    explained_fraction,
    keep_weights,
    refit,
    residual_energy,
)
from .parallel import each
from .rankers import METHODS, RANKERS, RankOptions, Ranker, schedule_of
from .shrink import SHRINK, SHRUNK, shrink_refit
from .stats import ConsumerStats, check_k, group_channels, leave_out, sum_stats

__all__ = [
    "METHODS",
    "RANKERS",
    "SHRINK",
    "Candidate",
    "ConsumerStats",
    "GreedyResult",
    "GroupSelection",
    "RankOptions",
    "Ranker",
    "Refit",
    "activation_norm_order",
    "cross_validated",
    "cross_validated_choice",
    "explained",
    "greedy_select",
    "keep_weights",
    "random_order",
    "refit",
    "residual_energy",
    "schedule_of",
    "data_starved",
    "fit_consumer",
    "select_group",
    "shrink_refit",
    "sum_stats",
    "weight_norm_order",
]


@dataclass(frozen=True, eq=False)
class GroupSelection:
    """Selection for one channel group.

    ``kept`` (k,): sorted channel indices. ``order`` (k,): pick order (greedy) or ranking prefix
    (baselines). ``fits``: one :class:`Refit` per consumer, in the consumers' order.
    ``explained``: 1 - sum of residual energies / sum of ||Y||^2 over consumers, on the
    calibration statistics. ``explained_holdout``: the same on the held-out statistics (or
    cross-validated over folds, :func:`cross_validated`), or None.
    ``underdetermined``: some consumer has fewer rows than columns (n_rows < d).
    """

    kept: np.ndarray
    order: np.ndarray
    fits: tuple[Refit, ...]
    explained: float
    explained_holdout: float | None
    underdetermined: bool


def _group_explained(
    consumers: Sequence[ConsumerStats], kept: np.ndarray, fits: Sequence[Refit]
) -> float:
    residual = sum(residual_energy(c, kept, f) for c, f in zip(consumers, fits))
    return explained_fraction(residual, sum(c.y_sq for c in consumers))


def cross_validated(
    folds: Sequence[Sequence[ConsumerStats]],
    kept: Sequence[np.ndarray],
    fits: Sequence[Callable[[ConsumerStats, np.ndarray], Refit]],
    totals: Sequence[ConsumerStats] | None = None,
) -> float:
    """Cross-validated explained variance of a group's chosen channels.

    ``folds``: K >= 2 folds, each one :class:`ConsumerStats` per consumer (disjoint samples);
    ``kept``: per consumer, its kept channels (sorted); ``fits``: per consumer,
    ``fit(stats, kept)`` gives its new weights from ``stats``; ``totals``: per consumer, its
    statistics on all samples, if at hand (see :func:`_cv_residuals`). For each fold f and
    consumer c, c is fitted on the sum of the other folds' statistics and its residual measured
    on fold f; the result is 1 - the sum of those residuals / the sum of ||Y||^2, over folds and
    consumers. The kept channels (and a shrunk refit's strength, :func:`fit_consumer` ``like``)
    are not chosen again per fold: the estimate is held out for the fit, and in-sample for those
    choices.
    """
    candidates = [[Candidate(None, lambda train, channels, _, fit=fit: fit(train, channels))] for fit in fits]
    residual = sum(scores[0] for scores in _cv_residuals(folds, kept, candidates, totals)[0])
    return explained_fraction(residual, sum(held[c].y_sq for held in folds for c in range(len(kept))))


@dataclass(frozen=True)
class Candidate:
    """One way to refit a consumer, scored over folds by :func:`cross_validated_choice`.

    ``whole``: its fit on all samples, or a function that makes it (then made side by side with
    the folds' fits of the candidates that do not wait for it); ``fold(train, kept, whole)``: its
    fit on the training statistics of a fold, given the fit on all samples (whose strength a
    shrunk refit takes).
    """

    whole: Refit | Callable[[], Refit] | None
    fold: Callable[[ConsumerStats, np.ndarray, Refit | None], Refit]

    @property
    def waits(self) -> bool:
        """Its folds wait for the fit on all samples, still to be made."""
        return callable(self.whole)


KEPT_TRAIN_ENTRIES = 1 << 26
"""Training statistics of the folds (float64 entries, 512 MiB) kept from the scoring of the
candidates that need no fit on all samples to the scoring of those that wait for one; more are
made again. Counted as :attr:`ConsumerStats.entries`, d x (d + m) each; row-form statistics
fitted in the dual (more kept columns than rows) also hold their dual arrays
(:meth:`ConsumerStats.dual`, under twice that count again), which the second pass reuses.
ResNet-50's last-stage 3 x 3 groups (d = 4608, four folds: 94M entries) are made again."""


def _cv_residuals(folds: Sequence[Sequence[ConsumerStats]], kept: Sequence[np.ndarray],
                  candidates: Sequence[Sequence[Candidate]], totals: Sequence[ConsumerStats] | None = None,
                  ) -> tuple[list[list[float]], list[list[Refit | None]]]:
    """Per consumer c, per candidate of ``candidates[c]``: c's residual energy summed over the
    folds, each fold scored with the candidate's fit on the sum of the other folds' statistics
    (made once per fold for all of c's candidates: ``totals[c]`` less the fold where c's
    statistics on all samples were summed from these folds, :func:`.stats.leave_out`); and each
    candidate's fit on all samples.

    The fits on all samples still to be made and the (consumer, fold) pairs of the candidates
    that do not wait for them run side by side (:func:`.parallel.each`), then the pairs of the
    candidates that wait."""
    if len(folds) < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {len(folds)}")
    pairs = [(c, f) for c in range(len(kept)) for f in range(len(folds))]
    now = [[i for i, option in enumerate(options) if not option.waits] for options in candidates]
    later = [[i for i, option in enumerate(options) if option.waits] for options in candidates]
    made = [(c, i) for c, waiting in enumerate(later) for i in waiting]
    entries = len(folds) * sum(stats.entries for stats in folds[0])
    keep = bool(made) and entries <= KEPT_TRAIN_ENTRIES
    ready = [[option.whole for option in options] for options in candidates]
    scores = [[0.0] * len(options) for options in candidates]

    summed = [None if totals is None or totals[c].parts() != tuple(fold[c] for fold in folds) else totals[c]
              for c in range(len(kept))]

    def train(c: int, f: int) -> ConsumerStats:
        if summed[c] is not None:
            return leave_out(summed[c], folds[f][c])
        return sum_stats([other[c] for g, other in enumerate(folds) if g != f])

    def score(c: int, f: int, stats: ConsumerStats, chosen: list[int]) -> list[float]:
        return [residual_energy(folds[f][c], kept[c], candidates[c][i].fold(stats, kept[c], ready[c][i]))
                for i in chosen]

    def add(c: int, chosen: list[int], values: list[float]) -> None:
        for i, value in zip(chosen, values):
            scores[c][i] += value

    def first(item: tuple) -> object:
        if item[0] == "whole":
            return candidates[item[1]][item[2]].whole()
        c, f = item[1:]
        stats = train(c, f)
        return score(c, f, stats, now[c]), stats if keep else None

    results = each(first, [("whole", c, i) for c, i in made] + [("fold", c, f) for c, f in pairs], entries)
    for (c, i), whole in zip(made, results):
        ready[c][i] = whole
    firsts = results[len(made):]
    for (c, _), (values, _) in zip(pairs, firsts):
        add(c, now[c], values)
    if made:
        def second(index: int) -> list[float]:
            c, f = pairs[index]
            stats = firsts[index][1]
            return score(c, f, train(c, f) if stats is None else stats, later[c])

        for (c, _), values in zip(pairs, each(second, range(len(pairs)), entries)):
            add(c, later[c], values)
    return scores, ready


def cross_validated_choice(
    consumers: Sequence[ConsumerStats],
    folds: Sequence[Sequence[ConsumerStats]],
    kept: Sequence[np.ndarray],
    candidates: Sequence[Sequence[Candidate]],
) -> tuple[tuple[Refit, ...], float, float]:
    """Per consumer, the candidate fit with the lowest cross-validated residual.

    ``consumers``: the statistics of all samples; ``folds`` and ``kept`` as in
    :func:`cross_validated`; ``candidates``: per consumer, its :class:`Candidate` fits, the
    first winning ties. Returns (the chosen fits on all samples, their in-sample explained
    variance, their cross-validated explained variance: the choice itself is in-sample).
    """
    chosen, cv_residual, residual = [], 0.0, 0.0
    all_scores, wholes = _cv_residuals(folds, kept, candidates, consumers)
    for stats, channels, made, scores in zip(consumers, kept, wholes, all_scores):
        best = int(np.argmin(scores))
        chosen.append(made[best])
        cv_residual += scores[best]
        residual += residual_energy(stats, channels, made[best])
    cv_energy = sum(held[c].y_sq for held in folds for c in range(len(consumers)))
    return (tuple(chosen), explained_fraction(residual, sum(c.y_sq for c in consumers)),
            explained_fraction(cv_residual, cv_energy))


def _check_holdout(consumers: Sequence[ConsumerStats], holdout: Sequence[ConsumerStats]) -> None:
    if len(holdout) != len(consumers):
        raise ValueError(f"holdout has {len(holdout)} consumers, expected {len(consumers)}")
    for i, (c, h) in enumerate(zip(consumers, holdout)):
        if (h.block, h.d, h.m) != (c.block, c.d, c.m):
            raise ValueError(
                f"holdout consumer {i} has (block, d, m) = {(h.block, h.d, h.m)}, "
                f"expected {(c.block, c.d, c.m)}"
            )


def _ranking(
    consumers: Sequence[ConsumerStats],
    k: int,
    method: str,
    ridge: float,
    bias_compensation: bool,
    seed: int,
    shrink: str,
) -> np.ndarray:
    if method not in RANKERS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    ranker, auto = RANKERS[method], shrink == "auto"
    if auto and ranker.greedy and data_starved(consumers):
        return weight_norm_order(consumers)[:k]
    return ranker.rank(consumers, k, RankOptions(ridge, bias_compensation, seed, anchored=auto))


def data_starved(consumers: Sequence[ConsumerStats]) -> bool:
    """Every consumer has fewer rows than the group has channels: its greedy gains rest on fewer
    samples than candidates (on LeNet-5 and VGG-BN at 8-32 calibration images, ranking such
    groups by weight norm instead was as good or better, up to +18 points of test accuracy)."""
    return all(c.n_rows < c.n_channels for c in consumers)


def fit_consumer(
    stats: ConsumerStats,
    kept: np.ndarray,
    *,
    refit_weights: bool,
    shrink: str,
    ridge: float,
    bias_compensation: bool,
    like: Refit | None = None,
) -> Refit:
    """New weights of one consumer on its ``kept`` channels: the original rows (no refit), the
    least-squares refit with a ridge toward zero (``shrink`` "none", and "cv", whose choice
    between it and the shrunk refit is made over folds by :func:`cross_validated_choice`), or
    the refit shrunk toward
    an anchor with a data-chosen strength (``shrink`` "refit" or "auto", :func:`shrink_refit`;
    with the strength of fit ``like`` instead, when it has one)."""
    if not refit_weights:
        return keep_weights(stats, kept)
    if shrink in SHRUNK:
        strength = None if like is None else like.strength
        return shrink_refit(stats, kept, bias_compensation=bias_compensation, strength=strength)
    return refit(stats, kept, ridge=ridge, bias_compensation=bias_compensation)


def select_group(
    consumers: Sequence[ConsumerStats],
    k: int,
    *,
    method: str,
    refit_weights: bool = True,
    shrink: str = "none",
    ridge: float = 0.0,
    bias_compensation: bool = True,
    seed: int = 0,
    holdout: Sequence[ConsumerStats] | None = None,
    given: Sequence[int] | None = None,
) -> GroupSelection:
    """Choose ``k`` channels of a group with ``method`` and compute each consumer's new weights.

    ``method``: one of :data:`METHODS`. ``refit_weights``: least-squares refit (with ``ridge``
    and ``bias_compensation``, as in the greedy) or keep the original weight rows; ``shrink``
    (one of :data:`SHRINK`): how the refit is regularized (:func:`fit_consumer`) and, with
    "auto", the greedy's ridge pulls toward the original weights and a :func:`data_starved`
    group is ranked by weight norm instead. ``seed`` drives
    the random baseline. ``holdout``: statistics of held-out samples for the same consumers, used
    only to report ``explained_holdout``. ``given``: the k channels to keep (a plan's), used
    instead of the method's choice. Requires 1 <= k <= n.
    """
    n = group_channels(consumers)
    check_k(k, n)
    if shrink not in SHRINK:
        raise ValueError(f"unknown shrink {shrink!r}; expected one of {', '.join(SHRINK)}")
    if holdout is not None:
        _check_holdout(consumers, holdout)
    if given is not None:
        order = np.asarray(given, dtype=np.int64)
        if len(order) != k or len(np.unique(order)) != k or order.min() < 0 or order.max() >= n:
            raise ValueError(f"given channels {list(order)} are not {k} distinct channels of {n}")
    else:
        order = np.asarray(_ranking(consumers, k, method, ridge, bias_compensation, seed, shrink))
    kept = np.sort(order)
    fits = tuple(each(lambda c: fit_consumer(c, kept, refit_weights=refit_weights, shrink=shrink, ridge=ridge,
                                             bias_compensation=bias_compensation),
                      consumers, sum(c.entries for c in consumers)))
    return GroupSelection(
        kept=kept,
        order=order,
        fits=fits,
        explained=_group_explained(consumers, kept, fits),
        explained_holdout=None if holdout is None else _group_explained(holdout, kept, fits),
        underdetermined=any(c.n_rows < c.d for c in consumers),
    )
