"""Channel selection and least-squares refit for one channel group (pure NumPy/SciPy).

Entry point: :func:`select_group`. The building blocks (:class:`ConsumerStats`,
:func:`greedy_select`, :func:`refit`, the baselines) are re-exported for direct use.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from .stats import ConsumerStats, check_k, group_channels

METHODS_GREEDY = ("asym", "seq", "layer")
"""Greedy variants: all use :func:`greedy_select`, differing only in how the stats were captured."""
BASELINES = ("weight-norm", "activation-norm", "random")
"""Ranking baselines (METHOD.md sec. 6)."""
METHODS = METHODS_GREEDY + BASELINES

__all__ = [
    "BASELINES",
    "METHODS",
    "METHODS_GREEDY",
    "ConsumerStats",
    "GreedyResult",
    "GroupSelection",
    "Refit",
    "activation_norm_order",
    "explained",
    "greedy_select",
    "keep_weights",
    "random_order",
    "refit",
    "residual_energy",
    "select_group",
    "weight_norm_order",
]


@dataclass(frozen=True, eq=False)
class GroupSelection:
    """Selection for one channel group.

    ``kept`` (k,): sorted channel indices. ``order`` (k,): pick order (greedy) or ranking prefix
    (baselines). ``fits``: one :class:`Refit` per consumer, in the consumers' order.
    ``explained``: 1 - sum of residual energies / sum of ||Y||^2 over consumers, on the
    calibration statistics. ``explained_holdout``: the same on the held-out statistics, or None.
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
) -> np.ndarray:
    if method in METHODS_GREEDY:
        return greedy_select(consumers, k, ridge=ridge, bias_compensation=bias_compensation).order
    if method == "weight-norm":
        return weight_norm_order(consumers)[:k]
    if method == "activation-norm":
        return activation_norm_order(consumers)[:k]
    if method == "random":
        return random_order(consumers[0].n_channels, np.random.default_rng(seed))[:k]
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def select_group(
    consumers: Sequence[ConsumerStats],
    k: int,
    *,
    method: str,
    refit_weights: bool = True,
    ridge: float = 0.0,
    bias_compensation: bool = True,
    seed: int = 0,
    holdout: Sequence[ConsumerStats] | None = None,
) -> GroupSelection:
    """Choose ``k`` channels of a group with ``method`` and compute each consumer's new weights.

    ``method``: one of :data:`METHODS`. ``refit_weights``: least-squares refit (with ``ridge``
    and ``bias_compensation``, as in the greedy) or keep the original weight rows. ``seed`` drives
    the random baseline. ``holdout``: statistics of held-out samples for the same consumers, used
    only to report ``explained_holdout``. Requires 1 <= k <= n.
    """
    n = group_channels(consumers)
    check_k(k, n)
    if holdout is not None:
        _check_holdout(consumers, holdout)
    order = np.asarray(_ranking(consumers, k, method, ridge, bias_compensation, seed))
    kept = np.sort(order)
    if refit_weights:
        fits = tuple(
            refit(c, kept, ridge=ridge, bias_compensation=bias_compensation) for c in consumers
        )
    else:
        fits = tuple(keep_weights(c, kept) for c in consumers)
    return GroupSelection(
        kept=kept,
        order=order,
        fits=fits,
        explained=_group_explained(consumers, kept, fits),
        explained_holdout=None if holdout is None else _group_explained(holdout, kept, fits),
        underdetermined=any(c.n_rows < c.d for c in consumers),
    )
