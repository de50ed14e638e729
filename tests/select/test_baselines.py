"""Baseline rankings."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_subprune.select import (
    ConsumerStats,
    activation_norm_order,
    random_order,
    weight_norm_order,
)


def _stats(weight, rows, block):
    targets = rows @ weight
    return ConsumerStats.from_rows(rows, targets, weight, block)


def test_weight_norm_order_sums_blocks_and_consumers_with_stable_ties():
    # 4 channels, block 2: per-channel L1 norms 3, 5, 3, 1 (first consumer), 0, 0, 0, 4 (second)
    w1 = np.array([[1, -1], [0, 1], [2, 2], [-1, 0], [1, 1], [0, -1], [0.5, 0.5], [0, 0]])
    w2 = np.zeros((8, 1))
    w2[6, 0] = -4.0
    rows = np.ones((3, 8))
    consumers = [_stats(w1, rows, 2), _stats(w2, rows, 2)]
    np.testing.assert_array_equal(weight_norm_order(consumers[:1]), [1, 0, 2, 3])
    np.testing.assert_array_equal(weight_norm_order(consumers), [1, 3, 0, 2])


def test_activation_norm_order():
    # equal weight norms; activation RMS per channel: 1, 3, 2 -> order 1, 2, 0
    weight = np.ones((3, 2))
    rows = np.array([[1.0, 3.0, 2.0], [-1.0, -3.0, 2.0]])
    np.testing.assert_array_equal(activation_norm_order([_stats(weight, rows, 1)]), [1, 2, 0])
    # weight norms 1, 0.1, 1 reverse channels 1 and 2; a dead channel goes last
    weight = np.array([[1.0], [0.1], [1.0]])
    rows[:, 0] = 0.0
    np.testing.assert_array_equal(activation_norm_order([_stats(weight, rows, 1)]), [2, 1, 0])


def test_activation_norm_uses_rms_per_consumer():
    """A consumer with many more rows does not dominate through its row count."""
    weight = np.ones((2, 1))
    few = _stats(weight, np.array([[2.0, 1.0]]), 1)
    many = _stats(weight, np.tile([[1.0, 1.5]], (100, 1)), 1)
    np.testing.assert_array_equal(activation_norm_order([few, many]), [0, 1])


def test_random_order_is_a_seeded_permutation():
    a = random_order(20, np.random.default_rng(3))
    b = random_order(20, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(20))
    assert not np.array_equal(a, random_order(20, np.random.default_rng(4)))


def test_baselines_reject_inconsistent_groups():
    with pytest.raises(ValueError):
        weight_norm_order([])
