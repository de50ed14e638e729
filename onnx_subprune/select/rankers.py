"""The selection methods, in one registry: each ranks a group's channels from its consumers'
statistics and says how the statistics are to be captured.

Capture schedules: ``layer`` (every group from the original model, A = B), ``seq`` (groups in
order, B from the model pruned so far, A = B), ``asym`` (B from the pruned model, A from the
original). Adding a method is one :class:`Ranker` in :data:`RANKERS`; the configuration, the
CLI's choices and help, and the tests read it from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .baselines import activation_norm_order, random_order, weight_norm_order
from .greedy import greedy_select
from .stats import ConsumerStats

SCHEDULES = ("layer", "seq", "asym")


@dataclass(frozen=True)
class RankOptions:
    """What a ranking may depend on besides the statistics."""

    ridge: float = 0.0
    bias_compensation: bool = True
    seed: int = 0
    anchored: bool = False


@dataclass(frozen=True)
class Ranker:
    """A selection method: ``rank(consumers, k, options)`` -> the first k channels (k,) in pick
    order; ``schedule``: how its statistics are captured; ``greedy``: it maximizes F(S) (its
    pick order gives the explained energy of every prefix); ``help``: one line for the CLI."""

    name: str
    rank: Callable[[Sequence[ConsumerStats], int, RankOptions], np.ndarray]
    schedule: str
    greedy: bool
    help: str


def _greedy(consumers: Sequence[ConsumerStats], k: int, options: RankOptions) -> np.ndarray:
    return greedy_select(consumers, k, ridge=options.ridge, bias_compensation=options.bias_compensation,
                         anchored=options.anchored).order


RANKERS: dict[str, Ranker] = {
    ranker.name: ranker for ranker in (
        Ranker("asym", _greedy, "asym", True,
               "greedy selection; B from the model pruned so far, targets from the original (the paper's best)"),
        Ranker("seq", _greedy, "seq", True, "greedy selection; B and targets from the model pruned so far"),
        Ranker("layer", _greedy, "layer", True, "greedy selection; every layer on the original model"),
        Ranker("weight-norm", lambda c, k, o: weight_norm_order(c)[:k], "asym", False,
               "baseline: L1 norm of the consumers' input weights"),
        Ranker("activation-norm", lambda c, k, o: activation_norm_order(c)[:k], "asym", False,
               "baseline: weight L1 norm x activation RMS"),
        Ranker("random", lambda c, k, o: random_order(c[0].n_channels, np.random.default_rng(o.seed))[:k],
               "asym", False, "baseline: a random choice (seeded)"),
    )
}
"""Method name -> its ranker, in the order the CLI lists them."""

METHODS = tuple(RANKERS)


def schedule_of(method: str) -> str:
    """How ``method``'s statistics are captured (layer | seq | asym)."""
    return RANKERS[method].schedule
