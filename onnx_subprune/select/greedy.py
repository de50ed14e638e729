"""Greedy channel selection maximizing explained target energy (METHOD.md sec. 3-4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .parallel import each
from . import residual
from .stats import ConsumerStats, check_k, group_channels, merge_shared


@dataclass(frozen=True, eq=False)
class GreedyResult:
    """Outcome of :func:`greedy_select`.

    ``order`` (k,): channel indices in pick order. ``gains`` (k,): the increment of F at each pick,
    summed over consumers. ``total``: ``gains.sum()`` = F(S) - F(empty), i.e. the decrease of the
    (ridge-penalized) least-squares residual obtained by the kept channels. With bias compensation
    F(empty) = N ||ybar||^2 (the intercept alone, summed over consumers) is not included; without
    it and with ridge 0, ``total`` is exactly the paper's F(S) = ||Y||^2 - min ||B_S W' - Y||^2.
    """

    order: np.ndarray
    gains: np.ndarray
    total: float


def greedy_select(
    consumers: Sequence[ConsumerStats],
    k: int,
    *,
    ridge: float = 0.0,
    bias_compensation: bool = True,
    anchored: bool = False,
) -> GreedyResult:
    """Pick ``k`` of the group's n channels greedily, maximizing F(S) summed over ``consumers``.

    Each step picks the channel with the largest gain tr(Cr[J]^T Gr[J,J]^+ Cr[J]) summed over
    consumers, then updates each consumer's residual statistics. Ties go to the lowest index.
    Channels whose residual block is numerically zero in every consumer (already spanned by the
    kept ones) come after all others, and channels dead from the start (e.g. all-zero after ReLU)
    come last. ``ridge`` is relative: lambda = ridge * mean(diag(G)) per consumer, G centered when
    ``bias_compensation``. ``anchored``: the ridge pulls the refit toward the original weights W
    instead of zero (METHOD.md sec. 9): F(S) = ||Y||^2 - min ||B_S W' - Y||^2 + lambda ||W' - W_S||^2,
    a gain of channel j is then its ridge gain with cross statistics C + lambda W minus the
    modular lambda ||W_J||^2, and can be negative.
    ``k == n`` gives the full greedy order. Requires 1 <= k <= n.
    """
    n = group_channels(consumers)
    check_k(k, n)
    consumers = merge_shared(consumers)
    lams = [c.ridge_lambda(ridge, bias_compensation) for c in consumers]
    states = each(lambda pair: residual.make_residual(pair[0], lam=pair[1], centered=bias_compensation,
                                                      capacity=k, anchored=anchored),
                  list(zip(consumers, lams)), sum(c.entries for c in consumers))
    if sum(state.entries for state in states) > residual.SINGLE_STATE_ENTRIES:
        for state in states:
            state.to_single()
    step_entries = sum(state.cross.size + state.diag.size for state in states)  # what a step reads
    penalty = np.zeros(n)
    if anchored:
        for c, lam in zip(consumers, lams):
            penalty += lam * np.sum(c.weight.reshape(n, -1) ** 2, axis=1)
    live = np.logical_or.reduce([state.live for state in states])
    fallback = np.where(live, -1.0, -2.0)
    picked = np.zeros(n, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    gains = np.empty(k)
    for step in range(k):
        gain = np.zeros(n)
        alive = np.zeros(n, dtype=bool)
        for g, a in each(lambda state: state.gains(), states, step_entries):
            gain += g
            alive |= a
        gain -= np.where(alive, penalty, 0.0)
        tier = np.where(alive, 0.0, fallback)
        tier[picked] = -np.inf
        j = int(np.argmax(np.where(tier == tier.max(), gain, -np.inf)))
        order[step], gains[step], picked[j] = j, gain[j], True
        if step + 1 < k:
            each(lambda state: state.commit(j), states, step_entries)
    return GreedyResult(order=order, gains=gains, total=float(gains.sum()))
