"""The refit shrunk toward an anchor (select/shrink.py) and the anchored greedy selection, against
dense solves written apart from the package."""

from __future__ import annotations

import numpy as np
import pytest
from select_helpers import FORMS, columns, make_stats, random_problem

from onnx_subprune.select import (
    data_starved,
    greedy_select,
    keep_weights,
    refit,
    residual_energy,
    select_group,
    weight_norm_order,
)
from onnx_subprune.select.shrink import LAMBDA_GRID, anchor_weight, shrink_refit, spectrum
from onnx_subprune.select.stats import ConsumerStats, sum_stats

BLOCK = 3
KEPT = np.array([0, 2, 3, 6])


def _design(b, y, kept, block, intercept):
    """B_S and Y, centered when ``intercept`` (the unpenalized intercept's normal equations)."""
    design = b[:, columns(kept, block)]
    if intercept:
        return design - design.mean(0), y - y.mean(0)
    return design, y


def _dense_shrunk(b, y, anchor, lam, kept, block, intercept):
    """argmin ||B_S W' (+ 1 c^T) - Y||^2 + lam ||W' - anchor||^2 by an augmented lstsq."""
    design, target = _design(b, y, kept, block, intercept)
    s = design.shape[1]
    aug = np.vstack([design, np.sqrt(lam) * np.eye(s)])
    rhs = np.vstack([target, np.sqrt(lam) * anchor])
    return np.linalg.lstsq(aug, rhs, rcond=None)[0]


def _dense_map_regression(b, w, kept, block, intercept, folds):
    """W_S + (M kron I) W_R with M the ridge regression of the removed channels' maps on the kept
    ones over the pixel rows (sample, offset), each offset centered on its own when
    ``intercept``, its ridge chosen over inf and LAMBDA_GRID * the mean eigenvalue by GCV on the
    pixels (``folds`` 0) or by the held-out error of ``folds`` contiguous blocks of samples."""
    n = b.shape[1] // block
    maps = b.reshape(len(b), n, block)
    if intercept:
        maps = maps - maps.mean(0)
    removed = np.setdiff1d(np.arange(n), kept)

    def pixels(samples):
        flat = samples.transpose(0, 2, 1).reshape(-1, n)
        return flat[:, kept], flat[:, removed]

    def ridge(x, t, lam):
        if np.isinf(lam):
            return np.zeros((len(kept), len(removed)))
        return np.linalg.solve(x.T @ x + lam * np.eye(len(kept)), x.T @ t)

    x, t = pixels(maps)
    scores = {}
    for lam in np.concatenate([[np.inf], LAMBDA_GRID[::-1] * np.trace(x.T @ x) / len(kept)]):
        if folds:
            scores[lam] = 0.0
            for held in np.array_split(np.arange(len(maps)), folds):
                fit_x, fit_t = pixels(np.delete(maps, held, axis=0))
                test_x, test_t = pixels(maps[held])
                scores[lam] += np.sum((test_x @ ridge(fit_x, fit_t, lam) - test_t) ** 2)
        else:
            dof = 0.0 if np.isinf(lam) else np.trace(np.linalg.solve(x.T @ x + lam * np.eye(len(kept)), x.T @ x))
            scores[lam] = np.sum((x @ ridge(x, t, lam) - t) ** 2) / (1 - (dof + intercept) / len(x)) ** 2
    coef = ridge(x, t, min(scores, key=scores.get))  # first minimum: ties go to the larger lam
    blocks = w.reshape(n, block, -1)
    return (blocks[kept] + np.einsum("kc,com->kom", coef, blocks[removed])).reshape(len(kept) * block, -1)


@pytest.fixture
def problem():
    return random_problem(np.random.default_rng(11), 8, BLOCK, 150, 4, mixing=1.5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias_compensation", [True, False])
@pytest.mark.parametrize("lam", [0.5, 40.0])
@pytest.mark.parametrize("rows", [150, 4])
def test_shrunk_refit_matches_dense_solve(problem, form, bias_compensation, lam, rows):
    """Both anchors and the fit toward them, also with 4 rows (12 pixel rows for the channel
    regression, fewer rows than kept columns for the fit). Row form cross-validates the channel
    regression over blocks of samples, Gram form uses GCV on the pixels."""
    b, y, w = problem
    b, y = b[:rows], y[:rows]
    stats = make_stats(form, b, y, w, BLOCK)
    expected_anchors = {
        "original": w[columns(KEPT, BLOCK)],
        "channel-regression": _dense_map_regression(b, w, KEPT, BLOCK, bias_compensation,
                                                    folds=min(5, rows) if form == "rows" else 0),
    }
    for name, anchor in expected_anchors.items():
        found = anchor_weight(stats, KEPT, name, bias_compensation=bias_compensation)
        np.testing.assert_allclose(found, anchor, rtol=1e-7, atol=1e-9)
        fit = shrink_refit(stats, KEPT, lam=lam, anchor=name, bias_compensation=bias_compensation)
        expected = _dense_shrunk(b, y, anchor, lam, KEPT, BLOCK, bias_compensation)
        np.testing.assert_allclose(fit.weight, expected, rtol=1e-7, atol=1e-9)
        design = b[:, columns(KEPT, BLOCK)]
        bias = y.mean(0) - design.mean(0) @ fit.weight if bias_compensation else np.zeros(y.shape[1])
        np.testing.assert_allclose(fit.bias_shift, bias, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("bias_compensation", [True, False])
def test_channel_regression_of_summed_folds_cross_validates_over_them(problem, bias_compensation):
    """Row-form statistics summed from folds (as the calibration's are) take the channel map
    products from the folds, and cross-validate the channel regression over those folds: the
    same anchor as the dense computation with those folds, and the same map Gram matrix."""
    b, y, w = problem
    folds = [ConsumerStats.from_rows(b[rows], y[rows], w, BLOCK) for rows in np.array_split(np.arange(len(b)), 4)]
    summed = sum_stats(folds)
    assert summed.parts() == tuple(folds)
    expected = _dense_map_regression(b, w, KEPT, BLOCK, bias_compensation, folds=4)
    found = anchor_weight(summed, KEPT, "channel-regression", bias_compensation=bias_compensation)
    np.testing.assert_allclose(found, expected, rtol=1e-7, atol=1e-9)
    direct = make_stats("rows", b, y, w, BLOCK)
    np.testing.assert_allclose(summed.map_gram(bias_compensation), direct.map_gram(bias_compensation), rtol=1e-9)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias_compensation", [True, False])
def test_lambda_limits(problem, form, bias_compensation):
    """lam -> 0: the plain least-squares refit; lam -> inf: the original rows (keep_weights, with
    the intercept re-fitted under bias compensation)."""
    b, y, w = problem
    stats = make_stats(form, b, y, w, BLOCK)
    plain = refit(stats, KEPT, ridge=0.0, bias_compensation=bias_compensation)
    for lam in (0.0, 1e-9):
        fit = shrink_refit(stats, KEPT, lam=lam, anchor="original", bias_compensation=bias_compensation)
        np.testing.assert_allclose(fit.weight, plain.weight, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fit.bias_shift, plain.bias_shift, rtol=1e-6, atol=1e-8)
    kept_rows = keep_weights(stats, KEPT)
    for lam in (np.inf, 1e15):
        fit = shrink_refit(stats, KEPT, lam=lam, anchor="original", bias_compensation=bias_compensation)
        np.testing.assert_allclose(fit.weight, kept_rows.weight, rtol=1e-9, atol=1e-9)
        if bias_compensation:
            mean_shift = stats.mean_y - kept_rows.weight.T @ stats.mean_b[columns(KEPT, BLOCK)]
            np.testing.assert_allclose(fit.bias_shift, mean_shift, rtol=1e-7, atol=1e-9)
        else:
            np.testing.assert_allclose(fit.bias_shift, kept_rows.bias_shift, atol=1e-9)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rows", [150, 10])
def test_spectrum_rss_and_dof(problem, form, rows):
    """RSS(lam) from the eigen-coordinates equals the direct residual of the fit; dof(lam) is the
    trace of the hat matrix B_S (B_S^T B_S + lam I)^-1 B_S^T; also with fewer rows than columns."""
    b, y, w = problem
    b, y = b[:rows], y[:rows]
    stats = make_stats(form, b, y, w, BLOCK)
    design, target = _design(b, y, KEPT, BLOCK, True)
    for name in ("original", "channel-regression"):
        anchor = anchor_weight(stats, KEPT, name, bias_compensation=True)
        spec = spectrum(stats, KEPT, anchor, bias_compensation=True)
        lams = np.array([0.0, 3.0, 300.0, np.inf])
        for lam, rss, dof in zip(lams, spec.rss(lams), spec.dof(lams)):
            weight = anchor + spec.correction(lam)
            diff = design @ weight - target
            assert rss == pytest.approx(float(np.sum(diff * diff)), rel=1e-6, abs=1e-8 * np.sum(target**2))
            if np.isfinite(lam) and lam > 0:
                hat = design @ np.linalg.solve(design.T @ design + lam * np.eye(design.shape[1]), design.T)
                assert dof == pytest.approx(np.trace(hat), rel=1e-7)
        assert spec.dof(np.array([np.inf]))[0] == 0.0


def _overfitting_case(rng, block, rows):
    """A layer-like problem: Y = B W (+ noise) over all 12 channels, half of them kept, few rows
    for the kept columns; returns calibration (b, y), held-out (b, y) and w."""
    n, m = 12, 5
    d = n * block
    mixing = np.eye(d) + 0.4 * rng.standard_normal((d, d)) / np.sqrt(d)
    shift = rng.standard_normal(d)
    w = rng.standard_normal((d, m))

    def draw(count):
        b = rng.standard_normal((count, d)) @ mixing + shift
        return b, b @ w + 0.5 * rng.standard_normal((count, m))

    return draw(rows), draw(2000), w


@pytest.mark.parametrize("block", [1, 4])
@pytest.mark.parametrize("form", FORMS)
def test_chosen_lambda_not_worse_than_no_refit_held_out(block, form):
    """With few rows the plain refit overfits (worse than keeping the original rows on held-out
    data); the GCV-chosen shrinkage is never worse than either, on 8 random draws."""
    kept = np.arange(0, 12, 2)
    overfit = 0
    for seed in range(8):
        rng = np.random.default_rng([block, seed])
        (b, y), (hb, hy), w = _overfitting_case(rng, block, rows=len(kept) * block + 4)
        stats = make_stats(form, b, y, w, block)
        held = make_stats("rows", hb, hy, w, block)
        error = {
            "auto": residual_energy(held, kept, shrink_refit(stats, kept)),
            "plain": residual_energy(held, kept, refit(stats, kept, ridge=0.0)),
            "none": residual_energy(held, kept, keep_weights(stats, kept)),
        }
        overfit += error["plain"] > error["none"]
        assert error["auto"] <= error["none"]
        assert error["auto"] <= error["plain"] * 1.02
    assert overfit >= 4  # the case does overfit


def _dense_anchored_residual(problems, channels, block, ridge, intercept):
    """Sum over consumers of min ||B_S W' (+ 1 c^T) - Y||^2 + lam ||W' - W_S||^2 (no channel:
    ||Y||^2, centered when ``intercept``); lam = ridge * mean column energy (centered)."""
    total = 0.0
    for b, y, w in problems:
        x = b - b.mean(0) if intercept else b
        lam = ridge * float(np.mean(np.sum(x * x, axis=0)))
        design, target = _design(b, y, channels, block, intercept)
        if not channels:
            total += float(np.sum(target * target))
            continue
        anchor = w[columns(channels, block)]
        weight = _dense_shrunk(b, y, anchor, lam, channels, block, intercept)
        diff = design @ weight - target
        total += float(np.sum(diff * diff)) + lam * float(np.sum((weight - anchor) ** 2))
    return total


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias_compensation", [True, False])
@pytest.mark.parametrize("rows", [80, 9])
def test_anchored_greedy_matches_dense_greedy(form, bias_compensation, rows):
    """The anchored greedy (ridge toward W) picks what a greedy on dense anchored solves picks,
    with the same gains, also with fewer rows than columns and with a dead channel (its anchored
    gain is 0, ahead of channels whose penalty outweighs their fit)."""
    rng = np.random.default_rng([3, rows, int(bias_compensation)])
    n, block, k, ridge = 7, 2, 7, 0.05
    problems = [random_problem(rng, n, block, rows + i, 3 + i, mixing=1.0) for i in range(2)]
    for b, _, _ in problems:
        b[:, columns([4], block)] = 0.0
    stats = [make_stats(form, b, y, w, block) for b, y, w in problems]
    fast = greedy_select(stats, k, ridge=ridge, bias_compensation=bias_compensation, anchored=True)
    order, gains = [], []
    current = _dense_anchored_residual(problems, [], block, ridge, bias_compensation)
    for _ in range(k):
        scores = {j: _dense_anchored_residual(problems, sorted(order + [j]), block, ridge, bias_compensation)
                  for j in range(n) if j not in order}
        best = min(scores, key=lambda j: (scores[j], j))
        order.append(best)
        gains.append(current - scores[best])
        current = scores[best]
    np.testing.assert_array_equal(fast.order, order)
    np.testing.assert_allclose(fast.gains, gains, rtol=1e-6, atol=1e-8 * max(abs(g) for g in gains))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("centered", [True, False])
def test_map_gram(problem, form, centered):
    b, y, w = problem
    maps = b.reshape(len(b), -1, BLOCK)
    if centered:
        maps = maps - maps.mean(0)
    expected = np.einsum("kir,kjr->ij", maps, maps)
    np.testing.assert_allclose(make_stats(form, b, y, w, BLOCK).map_gram(centered), expected, rtol=1e-9)


def test_select_group_shrink_modes(problem):
    b, y, w = problem
    stats = [make_stats("gram", b, y, w, BLOCK)]
    for shrink in ("refit", "auto"):
        selection = select_group(stats, 4, method="asym", shrink=shrink, ridge=0.01)
        expected = shrink_refit(stats[0], selection.kept)
        np.testing.assert_allclose(selection.fits[0].weight, expected.weight)
        anchored = greedy_select(stats, 4, ridge=0.01, anchored=shrink == "auto").order
        np.testing.assert_array_equal(selection.order, anchored)
    plain = select_group(stats, 4, method="asym", shrink="none", ridge=0.01)
    np.testing.assert_allclose(plain.fits[0].weight, refit(stats[0], plain.kept, ridge=0.01).weight)
    unfitted = select_group(stats, 4, method="weight-norm", shrink="auto", refit_weights=False)
    np.testing.assert_array_equal(unfitted.fits[0].weight, keep_weights(stats[0], unfitted.kept).weight)
    with pytest.raises(ValueError, match="unknown shrink"):
        select_group(stats, 4, method="asym", shrink="zero")


def test_shrink_refit_validation(problem):
    b, y, w = problem
    stats = make_stats("gram", b, y, w, 1)
    with pytest.raises(ValueError, match="lam must be"):
        shrink_refit(stats, KEPT, lam=-1.0)
    with pytest.raises(ValueError, match="unknown anchor"):
        shrink_refit(stats, KEPT, anchor="zero")


@pytest.mark.parametrize("block", [1, BLOCK])
def test_default_anchor(problem, block):
    """Without ``anchor``: the channel regression for block > 1, the original rows for block 1."""
    b, y, w = problem
    stats = make_stats("gram", b, y, w, block)
    name = "channel-regression" if block > 1 else "original"
    np.testing.assert_array_equal(shrink_refit(stats, KEPT).weight,
                                  shrink_refit(stats, KEPT, anchor=name).weight)


def test_auto_ranks_starved_groups_by_weight_norm():
    """shrink auto: a group with fewer rows than channels in every consumer is ranked by weight
    norm; with enough rows in one consumer the anchored greedy ranks it."""
    rng = np.random.default_rng(8)
    starved = [make_stats("rows", *random_problem(rng, 10, 2, rows, 3), 2) for rows in (6, 9)]
    assert data_starved(starved)
    np.testing.assert_array_equal(select_group(starved, 4, method="asym", shrink="auto").order,
                                  weight_norm_order(starved)[:4])
    np.testing.assert_array_equal(select_group(starved, 4, method="asym", shrink="refit").order,
                                  greedy_select(starved, 4).order)
    fed = [starved[0], make_stats("gram", *random_problem(rng, 10, 2, 30, 3), 2)]
    assert not data_starved(fed)
    np.testing.assert_array_equal(select_group(fed, 4, method="asym", shrink="auto").order,
                                  greedy_select(fed, 4, anchored=True).order)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias_compensation", [True, False])
@pytest.mark.parametrize("rows", [150, 4])
def test_a_fit_at_anothers_strength(problem, form, bias_compensation, rows):
    """A refit with the strength another chose (``strength``, how cross-validation folds are
    refitted) is that fit at the lam both it and its channel regression chose, scaled to the
    rows: on the same statistics it is the same fit; on the samples repeated twice (twice the
    rows, the same least-squares problem) it is the same fit too."""
    b, y, w = problem
    b, y = b[:rows], y[:rows]
    stats = make_stats(form, b, y, w, BLOCK)
    twice = make_stats(form, np.vstack([b, b]), np.vstack([y, y]), w, BLOCK)
    for name in ("original", "channel-regression"):
        chosen = shrink_refit(stats, KEPT, anchor=name, bias_compensation=bias_compensation)
        assert chosen.strength.anchor == name and chosen.strength.rows == rows
        assert (chosen.strength.map_lam is None) == (name == "original")
        for other in (stats, twice):
            again = shrink_refit(other, KEPT, bias_compensation=bias_compensation, strength=chosen.strength)
            np.testing.assert_allclose(again.weight, chosen.weight, rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(again.bias_shift, chosen.bias_shift, rtol=1e-6, atol=1e-8)


def test_map_products_is_the_sum_over_rows_and_offsets():
    from onnx_subprune.select.stats import map_products

    maps = np.random.default_rng(3).standard_normal((7, 5, 4))
    np.testing.assert_allclose(map_products(maps), np.einsum("kir,kjr->ij", maps, maps), rtol=1e-12)


@pytest.mark.parametrize("bias_compensation", [True, False])
def test_fits_in_the_dual_share_one_kernel(problem, bias_compensation):
    """Row form with fewer rows than kept columns: the least-squares refit, the shrunk refit and
    its spectrum solve with one N x N kernel per (centering, columns), formed once and left
    unchanged by each of them: every fit equals the same fit on fresh statistics. Only the latest
    columns' arrays are kept."""
    b, y, w = problem
    b, y = b[:4], y[:4]
    stats = make_stats("rows", b, y, w, BLOCK)
    cols = columns(KEPT, BLOCK)
    assert cols.size > stats.n_rows
    kernel = stats.dual(bias_compensation, cols)[2]
    assert stats.dual(bias_compensation, cols)[2] is kernel
    before = kernel.copy()
    fits = [refit(stats, KEPT, ridge=0.1, bias_compensation=bias_compensation),
            shrink_refit(stats, KEPT, bias_compensation=bias_compensation),
            shrink_refit(stats, KEPT, lam=0.5, bias_compensation=bias_compensation)]
    np.testing.assert_array_equal(kernel, before)
    fresh = [refit(make_stats("rows", b, y, w, BLOCK), KEPT, ridge=0.1, bias_compensation=bias_compensation),
             shrink_refit(make_stats("rows", b, y, w, BLOCK), KEPT, bias_compensation=bias_compensation),
             shrink_refit(make_stats("rows", b, y, w, BLOCK), KEPT, lam=0.5, bias_compensation=bias_compensation)]
    for fit, alone in zip(fits, fresh):
        np.testing.assert_array_equal(fit.weight, alone.weight)
        np.testing.assert_array_equal(fit.bias_shift, alone.bias_shift)
    other = stats.dual(bias_compensation, columns(KEPT[1:], BLOCK))[2]  # other columns replace the kept arrays
    assert other.shape == kernel.shape and stats.dual(bias_compensation, cols)[2] is not kernel
