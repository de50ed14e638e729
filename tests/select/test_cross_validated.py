"""The cross-validated explained variance against an explicit per-fold least-squares refit."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from select_helpers import FORMS, columns, make_stats, random_problem

from onnx_subprune.select import cross_validated, fit_consumer, refit, residual_energy

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
