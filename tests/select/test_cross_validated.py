"""The cross-validated explained variance against an explicit per-fold least-squares refit."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from select_helpers import FORMS, columns, make_stats, random_problem

from onnx_subprune.select import Candidate, cross_validated, cross_validated_choice, fit_consumer, refit, residual_energy

BLOCK, KEPT = 3, np.array([1, 2, 5, 7])


def _naive(problems, folds, bias_compensation):
    """1 - sum of held-out residuals / sum of held-out ||Y||^2, each fold's fit by np.linalg.lstsq
    on the other folds' rows (an intercept column with bias compensation)."""
    residual = energy = 0.0
    for held in folds:
        train = np.setdiff1d(np.arange(len(problems[0][0])), held)
        for b, y, _ in problems:
            def design(rows):
                x = b[np.ix_(rows, columns(KEPT, BLOCK))]
                return np.hstack([x, np.ones((len(rows), 1))]) if bias_compensation else x
            coef = np.linalg.lstsq(design(train), y[train], rcond=None)[0]
            residual += float(np.sum((design(held) @ coef - y[held]) ** 2))
            energy += float(np.sum(y[held] ** 2))
    return 1.0 - residual / energy


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias_compensation", [True, False])
def test_matches_a_per_fold_lstsq_refit(form, bias_compensation):
    rng = np.random.default_rng(5)
    problems = [random_problem(rng, 8, BLOCK, 80, m, mixing=1.0) for m in (4, 2)]  # two consumers
    folds = np.array_split(rng.permutation(80), 4)
    stats = [[make_stats(form, b[f], y[f], w, BLOCK) for b, y, w in problems] for f in folds]
    fit = partial(fit_consumer, refit_weights=True, shrink="none", ridge=0.0, bias_compensation=bias_compensation)
    got = cross_validated(stats, [KEPT, KEPT], [fit, fit])
    assert got == pytest.approx(_naive(problems, folds, bias_compensation), rel=1e-9)
    whole = [make_stats(form, b, y, w, BLOCK) for b, y, w in problems]
    in_sample = 1 - sum(residual_energy(s, KEPT, fit(s, KEPT)) for s in whole) / sum(s.y_sq for s in whole)
    assert got < in_sample  # held out for the fit: below the in-sample figure


def test_needs_two_folds():
    b, y, w = random_problem(np.random.default_rng(0), 8, BLOCK, 20, 2)
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_validated([[make_stats("gram", b, y, w, BLOCK)]], [KEPT], [partial(refit, ridge=0.0)])


@pytest.mark.parametrize("form", FORMS)
def test_choice_takes_each_consumers_lower_cross_validated_residual(form):
    """Per consumer, cross_validated_choice keeps the candidate whose per-fold refits leave the
    smaller held-out residual (here: the least-squares refit against the original rows, which
    is far worse on these problems), and reports that choice's in-sample and cross-validated
    explained variance."""
    rng = np.random.default_rng(8)
    problems = [random_problem(rng, 8, BLOCK, 60, m, mixing=1.0) for m in (3, 2)]
    folds = np.array_split(rng.permutation(60), 4)
    stats = [[make_stats(form, b[f], y[f], w, BLOCK) for b, y, w in problems] for f in folds]
    whole = [make_stats(form, b, y, w, BLOCK) for b, y, w in problems]
    fit = partial(fit_consumer, refit_weights=True, shrink="none", ridge=0.0, bias_compensation=True)
    keep = partial(fit_consumer, refit_weights=False, shrink="none", ridge=0.0, bias_compensation=True)

    def by(fitter):
        return lambda train, kept, _: fitter(train, kept)

    # consumer 0 offers (original rows, refit), consumer 1 (refit, original rows); consumer 1's
    # refit on all samples is made on the way (by the function), as a shrunk refit is
    candidates = [[Candidate(keep(whole[0], KEPT), by(keep)), Candidate(fit(whole[0], KEPT), by(fit))],
                  [Candidate(partial(fit, whole[1], KEPT), by(fit)), Candidate(keep(whole[1], KEPT), by(keep))]]
    fits, explained, held_out = cross_validated_choice(whole, stats, [KEPT, KEPT], candidates)
    assert fits[0] is candidates[0][1].whole
    np.testing.assert_array_equal(fits[1].weight, fit(whole[1], KEPT).weight)
    assert held_out == pytest.approx(cross_validated(stats, [KEPT, KEPT], [fit, fit]), rel=1e-12)
    in_sample = 1 - sum(residual_energy(s, KEPT, f) for s, f in zip(whole, fits)) / sum(s.y_sq for s in whole)
    assert explained == pytest.approx(in_sample, rel=1e-12)


@pytest.mark.parametrize("kept_entries", [0, 1 << 26], ids=["summed-again", "kept"])
def test_waiting_folds_get_the_fit_on_all_samples(kept_entries, monkeypatch):
    """A candidate whose fit on all samples is made on the way (the shrunk refit) has each fold
    fitted with that fit (its strength), whether the folds' training statistics were kept from
    the first pass or summed again; the scores are those of the same fits made beforehand."""
    from onnx_subprune import select

    monkeypatch.setattr(select, "KEPT_TRAIN_ENTRIES", kept_entries)
    rng = np.random.default_rng(12)
    problems = [random_problem(rng, 8, BLOCK, 60, m, mixing=1.0) for m in (3, 2)]
    folds = np.array_split(rng.permutation(60), 4)
    stats = [[make_stats("rows", b[f], y[f], w, BLOCK) for b, y, w in problems] for f in folds]
    whole = [make_stats("rows", b, y, w, BLOCK) for b, y, w in problems]
    plain = partial(fit_consumer, refit_weights=True, shrink="none", ridge=0.0, bias_compensation=True)
    shrunk = partial(fit_consumer, refit_weights=True, shrink="refit", ridge=0.0, bias_compensation=True)
    seen = []

    def fold_shrunk(train, kept, made):
        seen.append(made)
        return shrunk(train, kept, like=made)

    def plain_fold(train, kept, _):
        return plain(train, kept)

    lazy = [[Candidate(plain(s, KEPT), plain_fold), Candidate(partial(shrunk, s, KEPT), fold_shrunk)] for s in whole]
    fits, explained, held_out = cross_validated_choice(whole, stats, [KEPT, KEPT], lazy)
    made = [shrunk(s, KEPT) for s in whole]
    assert len(seen) == 8 and all(m is not None and m.strength is not None for m in seen)
    eager = [[Candidate(plain(s, KEPT), plain_fold), Candidate(m, lambda train, kept, m: shrunk(train, kept, like=m))]
             for s, m in zip(whole, made)]
    want = cross_validated_choice(whole, stats, [KEPT, KEPT], eager)
    assert (explained, held_out) == pytest.approx(want[1:], rel=1e-12)
    for got, expected in zip(fits, want[0]):
        np.testing.assert_allclose(got.weight, expected.weight, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_statistics_summed_from_the_folds_train_on_the_total_less_each_fold(form, monkeypatch):
    """Where the statistics on all samples were summed from the folds (as calibration sums them),
    each fold's training statistics are the total less that fold (``leave_out``: the other
    folds summed, up to rounding), and the choice scores as with totals made directly."""
    from onnx_subprune import select
    from onnx_subprune.select.stats import leave_out, sum_stats

    rng = np.random.default_rng(9)
    problems = [random_problem(rng, 8, BLOCK, 60, m, mixing=1.0) for m in (3, 2)]
    folds = np.array_split(rng.permutation(60), 4)
    stats = [[make_stats(form, b[f], y[f], w, BLOCK) for b, y, w in problems] for f in folds]
    summed = [sum_stats([fold[c] for fold in stats]) for c in range(2)]
    for c in range(2):
        for f in range(4):
            others = [stats[g][c] for g in range(4) if g != f]
            train, expected = leave_out(summed[c], stats[f][c]), sum_stats(others)
            assert train.parts() == tuple(others) and train.n_rows == expected.n_rows
            for name in ("gram", "cross", "rows", "targets", "b_sum", "y_sum"):
                if getattr(expected, name) is not None:
                    np.testing.assert_allclose(getattr(train, name), getattr(expected, name), rtol=1e-12, atol=1e-9)
            assert train.y_sq == pytest.approx(expected.y_sq, rel=1e-12)
    with pytest.raises(ValueError, match="one of the parts"):
        leave_out(summed[0], stats[0][1])
    used = []
    monkeypatch.setattr(select, "leave_out", lambda total, part: used.append(part) or leave_out(total, part))
    whole = [make_stats(form, b, y, w, BLOCK) for b, y, w in problems]
    fit = partial(fit_consumer, refit_weights=True, shrink="none", ridge=0.0, bias_compensation=True)

    def candidates(totals):
        return [[Candidate(fit(total, KEPT), lambda train, kept, _: fit(train, kept))] for total in totals]

    got = cross_validated_choice(summed, stats, [KEPT, KEPT], candidates(summed))
    assert len(used) == 8
    held_out = cross_validated(stats, [KEPT, KEPT], [fit, fit], summed)
    assert len(used) == 16 and held_out == pytest.approx(cross_validated(stats, [KEPT, KEPT], [fit, fit]), rel=1e-9)
    want = cross_validated_choice(whole, stats, [KEPT, KEPT], candidates(whole))
    assert got[1:] == pytest.approx(want[1:], rel=1e-9)
