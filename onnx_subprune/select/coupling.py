"""Consumers that see only part of a group, or more than the group (after Split / Concat).

A consumer's input channels are described by ``positions`` (n,): the consumer channel holding
group channel j, or -1 when the consumer does not see it. The consumer's other input channels
(another group's, after a Concat) are *fixed*: always kept while this group is selected. The
greedy then runs on the statistics conditioned on the fixed channels (everything projected off
them), and each consumer is re-fitted on its fixed channels plus the kept ones it sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import GroupSelection, fit_consumer, residual_energy, select_group
from .linalg import project_off, psd_solve, psd_tolerance
from .refit import explained_fraction
from .stats import ConsumerStats


def restrict(stats: ConsumerStats, channels: np.ndarray) -> ConsumerStats:
    """The statistics of the consumer reading only ``channels`` (sorted consumer channels)."""
    cols = stats.columns(np.asarray(channels, dtype=np.int64))
    common = dict(block=stats.block, n_rows=stats.n_rows, y_sq=stats.y_sq, b_sum=stats.b_sum[cols],
                  y_sum=stats.y_sum, weight=stats.weight[cols])
    if stats.is_row_form:
        return ConsumerStats(**common, rows=stats.rows[:, cols], targets=stats.targets)
    return ConsumerStats(**common, gram=stats.gram[np.ix_(cols, cols)], cross=stats.cross[cols])


def condition(stats: ConsumerStats, positions: np.ndarray, *, bias_compensation: bool) -> ConsumerStats:
    """Statistics over the group's n channels given the consumer's fixed channels.

    Returns Gram (or row) statistics of (I - P_F) B_J and (I - P_F) Y, centered first when
    ``bias_compensation`` (its sums are then zero, so the greedy's centering is a no-op), with
    zero columns for the group channels the consumer does not see. P_F projects on the fixed
    channels' columns.
    """
    positions = np.asarray(positions, dtype=np.int64)
    n, r, centered = len(positions), stats.block, bias_compensation
    visible = np.flatnonzero(positions >= 0)
    fixed = np.setdiff1d(np.arange(stats.n_channels), positions[visible])
    j_cols, f_cols = stats.columns(positions[visible]), stats.columns(fixed)
    slots = (visible[:, None] * r + np.arange(r)).ravel()
    weight = np.zeros((n * r, stats.m))
    weight[slots] = stats.weight[j_cols]
    common = dict(block=r, n_rows=stats.n_rows, b_sum=np.zeros(n * r), y_sum=np.zeros(stats.m), weight=weight)
    if stats.is_row_form:
        rows, targets = stats.row_matrices(centered)
        part, base = rows[:, j_cols], targets
        if fixed.size:
            residual = project_off(rows[:, f_cols], np.hstack([part, base]))
            part, base = residual[:, : part.shape[1]], residual[:, part.shape[1] :]
        padded = np.zeros((stats.n_rows, n * r))
        padded[:, slots] = part
        return ConsumerStats(**common, y_sq=float(np.sum(base**2)), rows=padded, targets=base)
    gram, cross = stats.gram_matrix(centered), stats.cross_matrix(centered)
    g_jj, c_j, energy = gram[np.ix_(j_cols, j_cols)], cross[j_cols], stats.target_energy(centered)
    if fixed.size:
        g_ff = gram[np.ix_(f_cols, f_cols)]
        rhs = np.hstack([gram[np.ix_(f_cols, j_cols)], cross[f_cols]])
        solved = psd_solve(g_ff, rhs, psd_tolerance(np.diag(g_ff)))
        k_g, k_c = solved[:, : j_cols.size], solved[:, j_cols.size :]
        g_fj = gram[np.ix_(f_cols, j_cols)]
        g_jj = g_jj - g_fj.T @ k_g
        c_j = c_j - g_fj.T @ k_c
        energy -= float(np.sum(cross[f_cols] * k_c))
    padded_gram = np.zeros((n * r, n * r))
    padded_gram[np.ix_(slots, slots)] = g_jj
    padded_cross = np.zeros((n * r, stats.m))
    padded_cross[slots] = c_j
    return ConsumerStats(**common, y_sq=max(energy, 0.0), gram=padded_gram, cross=padded_cross)


def consumer_kept(stats: ConsumerStats, positions: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Consumer channels kept (sorted): its fixed channels and the kept group channels it sees."""
    positions = np.asarray(positions, dtype=np.int64)
    seen = positions[positions >= 0]
    fixed = np.setdiff1d(np.arange(stats.n_channels), seen)
    chosen = positions[kept]
    return np.union1d(fixed, chosen[chosen >= 0])


def select_coupled(
    consumers: Sequence[ConsumerStats],
    positions: Sequence[np.ndarray],
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
    """:func:`select_group` for consumers given by ``positions`` (one (n,) array per consumer).

    The ranking runs on :func:`condition`-ed statistics; each consumer is then re-fitted (or
    keeps its weights) on :func:`consumer_kept`, so ``fits[i].weight`` has a row block per kept
    consumer channel. ``explained`` and ``explained_holdout`` are measured on the full statistics.
    """
    virtual = [condition(c, p, bias_compensation=bias_compensation) for c, p in zip(consumers, positions)]
    ranking = select_group(virtual, k, method=method, refit_weights=False, shrink=shrink, ridge=ridge,
                           bias_compensation=bias_compensation, seed=seed, given=given)
    kept_per = [consumer_kept(c, p, ranking.kept) for c, p in zip(consumers, positions)]
    fits = tuple(
        fit_consumer(c, s, refit_weights=refit_weights, shrink=shrink, ridge=ridge,
                     bias_compensation=bias_compensation)
        for c, s in zip(consumers, kept_per)
    )

    def explained(stats: Sequence[ConsumerStats]) -> float:
        residual = sum(residual_energy(c, s, f) for c, s, f in zip(stats, kept_per, fits))
        return explained_fraction(residual, sum(c.y_sq for c in stats))

    return GroupSelection(
        kept=ranking.kept, order=ranking.order, fits=fits, explained=explained(consumers),
        explained_holdout=None if holdout is None else explained(holdout),
        underdetermined=any(c.n_rows < c.d for c in consumers),
    )
