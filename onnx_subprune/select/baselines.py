"""Baseline channel rankings (METHOD.md sec. 6). Each returns all n channels, best first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .stats import ConsumerStats, group_channels


def _weight_l1(stats: ConsumerStats) -> np.ndarray:
    """L1 norm (n,) of each channel's block of rows of the consumer weight."""
    return np.abs(stats.weight).reshape(stats.n_channels, -1).sum(axis=1)


def _descending(score: np.ndarray) -> np.ndarray:
    """Indices (n,) sorting ``score`` descending, ties in index order."""
    return np.argsort(-score, kind="stable")


def weight_norm_order(consumers: Sequence[ConsumerStats]) -> np.ndarray:
    """Channels (n,) by descending L1 norm of their input weights summed over consumers."""
    group_channels(consumers)
    return _descending(sum(_weight_l1(c) for c in consumers))


def activation_norm_order(consumers: Sequence[ConsumerStats]) -> np.ndarray:
    """Channels (n,) by descending sum over consumers of weight L1 norm x activation RMS.

    The activation RMS of channel j in a consumer is sqrt(sum of its block's diag(G) / N)
    (uncentered); dividing by N keeps consumers with different row counts comparable.
    """
    group_channels(consumers)
    score = sum(
        _weight_l1(c)
        * np.sqrt(np.maximum(c.gram_diag(False), 0.0).reshape(c.n_channels, -1).sum(1) / c.n_rows)
        for c in consumers
    )
    return _descending(score)


def random_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation (n,) of the channels."""
    return rng.permutation(n)
