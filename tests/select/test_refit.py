"""Refit, keep_weights, residual energy and explained fraction against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from select_helpers import FORMS, columns, make_stats, random_problem

from onnx_subprune.select import Refit, explained, keep_weights, refit, residual_energy

KEPT = np.array([0, 2, 3, 6])
BLOCK = 3


def _direct_residual(b, y, fit, kept=KEPT):
    diff = b[:, columns(kept, BLOCK)] @ fit.weight + fit.bias_shift - y
    return float(np.sum(diff * diff))


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    cal = random_problem(rng, 8, BLOCK, 120, 5, mixing=1.5)
    holdout = random_problem(rng, 8, BLOCK, 50, 5, mixing=1.5)
    return cal, (holdout[0], holdout[1], cal[2])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("ridge", [0.0, 0.1])
@pytest.mark.parametrize("bias_compensation", [True, False])
def test_explained_matches_direct(data, form, ridge, bias_compensation):
    (b, y, w), (b2, y2, _) = data
    stats = make_stats(form, b, y, w, BLOCK)
    fit = refit(stats, KEPT, ridge=ridge, bias_compensation=bias_compensation)
    assert fit.weight.shape == (KEPT.size * BLOCK, 5) and fit.bias_shift.shape == (5,)
    if not bias_compensation:
        np.testing.assert_array_equal(fit.bias_shift, 0.0)
    for bb, yy in ((b, y), (b2, y2)):
        hold = make_stats(form, bb, yy, w, BLOCK)
        direct = _direct_residual(bb, yy, fit)
        assert residual_energy(hold, KEPT, fit) == pytest.approx(direct, rel=1e-9)
        assert explained(hold, KEPT, fit) == pytest.approx(1 - direct / np.sum(yy**2), rel=1e-9)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias_compensation", [True, False])
def test_refit_is_least_squares(data, form, bias_compensation):
    (b, y, w), _ = data
    design = b[:, columns(KEPT, BLOCK)]
    if bias_compensation:
        design = np.hstack([design, np.ones((b.shape[0], 1))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    fit = refit(make_stats(form, b, y, w, BLOCK), KEPT, bias_compensation=bias_compensation)
    np.testing.assert_allclose(fit.weight, coef[: KEPT.size * BLOCK], rtol=1e-7, atol=1e-9)
    if bias_compensation:
        np.testing.assert_allclose(fit.bias_shift, coef[-1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_ridge_refit_matches_augmented_lstsq(data, ridge):
    (b, y, w), _ = data
    stats = make_stats("gram", b, y, w, BLOCK)
    fit = refit(stats, KEPT, ridge=ridge, bias_compensation=False)
    design = b[:, columns(KEPT, BLOCK)]
    lam = ridge * np.mean(np.sum(b**2, 0))
    aug = np.vstack([design, np.sqrt(lam) * np.eye(design.shape[1])])
    target = np.vstack([y, np.zeros((design.shape[1], y.shape[1]))])
    np.testing.assert_allclose(fit.weight, np.linalg.lstsq(aug, target, rcond=None)[0], rtol=1e-7)


@pytest.mark.parametrize("bias_compensation", [True, False])
def test_underdetermined_and_duplicated_refit_is_min_norm(bias_compensation):
    """N < kept columns (row form solves the dual) and a duplicated channel (singular Gram):
    both forms give the minimum-norm least-squares solution, finite."""
    rng = np.random.default_rng(4)
    b, y, w = random_problem(rng, 8, BLOCK, 10, 3)
    b[:, columns([6], BLOCK)] = b[:, columns([0], BLOCK)]
    design = b[:, columns(KEPT, BLOCK)]
    if bias_compensation:
        design = design - design.mean(0)
        y = y - y.mean(0)
    expected = np.linalg.pinv(design, rcond=1e-10) @ y
    for form in FORMS:
        fit = refit(make_stats(form, b, y, w, BLOCK), KEPT, bias_compensation=bias_compensation)
        np.testing.assert_allclose(fit.weight, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("form", FORMS)
def test_dead_channel_refit_is_finite(form):
    rng = np.random.default_rng(6)
    b, y, w = random_problem(rng, 8, BLOCK, 60, 3)
    b[:, columns([2], BLOCK)] = 0.0
    fit = refit(make_stats(form, b, y, w, BLOCK), KEPT)
    assert np.all(np.isfinite(fit.weight)) and np.all(np.isfinite(fit.bias_shift))
    np.testing.assert_allclose(fit.weight[BLOCK : 2 * BLOCK], 0.0, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_keep_weights(data, form):
    (b, y, w), (b2, y2, _) = data
    fit = keep_weights(make_stats(form, b, y, w, BLOCK), KEPT)
    np.testing.assert_array_equal(fit.weight, w[columns(KEPT, BLOCK)])
    np.testing.assert_array_equal(fit.bias_shift, 0.0)
    for bb, yy in ((b, y), (b2, y2)):
        stats = make_stats(form, bb, yy, w, BLOCK)
        assert residual_energy(stats, KEPT, fit) == pytest.approx(_direct_residual(bb, yy, fit))


def test_zero_target_explained():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((10, 6))
    stats = make_stats("gram", b, np.zeros((10, 2)), np.zeros((6, 2)), BLOCK)
    kept = np.array([1])
    assert explained(stats, kept, refit(stats, kept)) == 1.0
    assert explained(stats, kept, Refit(np.ones((3, 2)), np.zeros(2))) == 0.0


def test_kept_and_fit_validation(data):
    (b, y, w), _ = data
    stats = make_stats("gram", b, y, w, BLOCK)
    for kept in ([2, 1], [0, 0], [-1, 2], [3, 8], [[1, 2]], [0.0, 1.0], []):
        with pytest.raises(ValueError, match="kept must"):
            refit(stats, np.array(kept))
    with pytest.raises(ValueError, match="expected"):
        residual_energy(stats, KEPT, Refit(np.zeros((3, 5)), np.zeros(5)))
