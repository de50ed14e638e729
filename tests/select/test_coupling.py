"""Consumers that see part of a group (Split) or more than it (Concat): conditioning on the fixed
channels gives the same greedy as forcing them into a naive least-squares greedy."""

import numpy as np
import pytest

from onnx_subprune.select import ConsumerStats
from onnx_subprune.select.coupling import condition, consumer_kept, restrict, select_coupled
from onnx_subprune.select.reference import lstsq_residual


def _problem(rng, channels, block, rows=200, m=4):
    mix = rng.standard_normal((channels * block, channels * block)) * 0.3 + np.eye(channels * block)
    b = rng.standard_normal((rows, channels * block)) @ mix + 0.5
    w = rng.standard_normal((channels * block, m))
    return b, b @ w + 0.1 * rng.standard_normal((rows, m)), w


def _naive(problems, positions, n, k, block, intercept):
    """Greedy over group channels with each consumer's fixed channels always in the fit."""
    chosen = []
    for _ in range(k):
        best, best_value = None, None
        for j in range(n):
            if j in chosen:
                continue
            value = 0.0
            for (b, y, _), pos in zip(problems, positions):
                kept = consumer_kept_naive(pos, b.shape[1] // block, chosen + [j])
                cols = (kept[:, None] * block + np.arange(block)).ravel()
                value += lstsq_residual(b, y, cols, intercept=intercept)
            if best_value is None or value < best_value - 1e-9:
                best, best_value = j, value
        chosen.append(best)
    return chosen


def consumer_kept_naive(pos, channels, chosen):
    seen = set(pos[pos >= 0].tolist())
    fixed = [c for c in range(channels) if c not in seen]
    return np.array(sorted(fixed + [int(pos[j]) for j in chosen if pos[j] >= 0]), dtype=np.int64)


@pytest.mark.parametrize("bias_compensation", [True, False])
@pytest.mark.parametrize("row_form", [False, True])
def test_conditioned_greedy_matches_naive_with_fixed_channels(bias_compensation, row_form):
    rng = np.random.default_rng(7)
    block, n = 2, 5
    concat = _problem(rng, 9, block, rows=12 if row_form else 200)  # group at consumer channels 2..6
    split = _problem(rng, 3, block, rows=12 if row_form else 200)  # sees group channels 1, 3, 4
    positions = [np.array([2, 3, 4, 5, 6]), np.array([-1, 0, -1, 1, 2])]
    stats = [ConsumerStats.from_rows(b, y, w, block) if row_form else
             ConsumerStats.from_gram(b.T @ b, b.T @ y, y_sq=float(np.sum(y * y)), b_sum=b.sum(0),
                                     y_sum=y.sum(0), n_rows=len(b), weight=w, block=block)
             for b, y, w in (concat, split)]
    k = 3
    selection = select_coupled(stats, positions, k, method="asym", bias_compensation=bias_compensation)
    want = _naive([concat, split], positions, n, k, block, bias_compensation)
    if row_form:  # with 12 rows the fits saturate quickly: compare the first pick only
        assert selection.order[0] == want[0]
    else:
        assert selection.order.tolist() == want
    for s, p, fit in zip(stats, positions, selection.fits):
        assert fit.weight.shape[0] == len(consumer_kept(s, p, selection.kept)) * block


def test_condition_without_fixed_channels_is_the_identity():
    rng = np.random.default_rng(1)
    b, y, w = _problem(rng, 4, 3)
    stats = ConsumerStats.from_rows(b, y, w, 3)
    same = condition(stats, np.arange(4), bias_compensation=False)
    np.testing.assert_allclose(same.rows, b)
    np.testing.assert_allclose(same.y_sq, stats.y_sq)


def test_restrict_keeps_the_given_channels():
    rng = np.random.default_rng(2)
    b, y, w = _problem(rng, 4, 2)
    stats = ConsumerStats.from_gram(b.T @ b, b.T @ y, y_sq=float(np.sum(y * y)), b_sum=b.sum(0),
                                    y_sum=y.sum(0), n_rows=len(b), weight=w, block=2)
    sub = restrict(stats, np.array([0, 3]))
    cols = [0, 1, 6, 7]
    np.testing.assert_allclose(sub.gram, (b.T @ b)[np.ix_(cols, cols)])
    np.testing.assert_allclose(sub.weight, w[cols])
