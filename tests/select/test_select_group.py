"""The select_group entry point."""

from __future__ import annotations

import numpy as np
import pytest
from select_helpers import columns, make_stats, random_problem

from onnx_subprune.select import (
    METHODS,
    explained,
    greedy_select,
    keep_weights,
    refit,
    select_group,
    weight_norm_order,
)

BLOCK = 2


@pytest.fixture
def group():
    """Two consumers of 10 channels (block 2), calibration and holdout statistics."""
    rng = np.random.default_rng(9)
    cal, hold = [], []
    for rows, m in ((80, 4), (60, 3)):
        b, y, w = random_problem(rng, 10, BLOCK, rows, m, mixing=1.0)
        b2, y2, _ = random_problem(rng, 10, BLOCK, 30, m, mixing=1.0)
        cal.append(make_stats("gram", b, y, w, BLOCK))
        hold.append(make_stats("rows", b2, y2, w, BLOCK))
    return cal, hold


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("refit_weights", [True, False])
def test_every_method(group, method, refit_weights):
    cal, hold = group
    sel = select_group(cal, 4, method=method, refit_weights=refit_weights, holdout=hold, seed=1)
    assert sel.order.shape == (4,) and len(set(sel.order.tolist())) == 4
    np.testing.assert_array_equal(sel.kept, np.sort(sel.order))
    assert len(sel.fits) == 2
    for stats, fit in zip(cal, sel.fits):
        expected = refit(stats, sel.kept) if refit_weights else keep_weights(stats, sel.kept)
        np.testing.assert_allclose(fit.weight, expected.weight)
        np.testing.assert_allclose(fit.bias_shift, expected.bias_shift)
    for stats_set, value in ((cal, sel.explained), (hold, sel.explained_holdout)):
        residual = sum(
            s.y_sq * (1 - explained(s, sel.kept, f)) for s, f in zip(stats_set, sel.fits)
        )
        assert value == pytest.approx(1 - residual / sum(s.y_sq for s in stats_set))
    assert sel.underdetermined is False


def test_method_orders(group):
    cal, _ = group
    greedy = select_group(cal, 5, method="asym", ridge=0.1, bias_compensation=False)
    np.testing.assert_array_equal(
        greedy.order, greedy_select(cal, 5, ridge=0.1, bias_compensation=False).order
    )
    np.testing.assert_array_equal(
        select_group(cal, 5, method="weight-norm").order, weight_norm_order(cal)[:5]
    )
    np.testing.assert_array_equal(
        select_group(cal, 5, method="random", seed=3).order,
        np.random.default_rng(3).permutation(10)[:5],
    )
    assert select_group(cal, 5, method="seq").explained == pytest.approx(
        select_group(cal, 5, method="layer").explained
    )
    assert select_group(cal, 10, method="layer").explained_holdout is None


def test_refit_beats_keep_weights_in_sample(group):
    cal, _ = group
    for method in ("asym", "weight-norm"):
        fitted = select_group(cal, 5, method=method).explained
        assert fitted >= select_group(cal, 5, method=method, refit_weights=False).explained


def test_underdetermined_flag():
    rng = np.random.default_rng(0)
    b, y, w = random_problem(rng, 10, BLOCK, 12, 3)
    sel = select_group([make_stats("rows", b, y, w, BLOCK)], 8, method="asym")
    assert sel.underdetermined is True
    assert np.isfinite(sel.explained)
    direct = b[:, columns(sel.kept, BLOCK)] @ sel.fits[0].weight + sel.fits[0].bias_shift - y
    assert sel.explained == pytest.approx(1 - np.sum(direct**2) / np.sum(y**2))


def test_errors(group):
    cal, hold = group
    for k in (0, 11):
        with pytest.raises(ValueError, match="k must satisfy"):
            select_group(cal, k, method="asym")
    with pytest.raises(ValueError, match="unknown method"):
        select_group(cal, 3, method="magic")
    with pytest.raises(ValueError, match="holdout has 1"):
        select_group(cal, 3, method="asym", holdout=hold[:1])
    with pytest.raises(ValueError, match="holdout consumer 1"):
        select_group(cal, 3, method="asym", holdout=[hold[0], hold[0]])
