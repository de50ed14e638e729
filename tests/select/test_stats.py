"""ConsumerStats construction, validation and accessors."""

from __future__ import annotations

import numpy as np
import pytest
from select_helpers import FORMS, columns, make_stats, random_problem

from onnx_subprune.select import ConsumerStats, sum_stats


@pytest.fixture
def problem():
    return random_problem(np.random.default_rng(0), 5, 3, 40, 4, mixing=1.0)


def test_from_rows_sums(problem):
    b, y, w = problem
    stats = ConsumerStats.from_rows(b, y, w, 3)
    assert stats.is_row_form and stats.gram is None and stats.cross is None
    assert (stats.n_rows, stats.d, stats.m, stats.n_channels) == (40, 15, 4, 5)
    np.testing.assert_allclose(stats.b_sum, b.sum(0))
    np.testing.assert_allclose(stats.y_sum, y.sum(0))
    assert stats.y_sq == pytest.approx(np.sum(y**2))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("centered", [True, False])
def test_accessors_match_direct(problem, form, centered):
    b, y, w = problem
    stats = make_stats(form, b, y, w, 3)
    bc = b - b.mean(0) if centered else b
    yc = y - y.mean(0) if centered else y
    cols = columns([1, 4], 3)
    np.testing.assert_allclose(stats.gram_matrix(centered), bc.T @ bc, atol=1e-9)
    np.testing.assert_allclose(stats.gram_matrix(centered, cols), bc[:, cols].T @ bc[:, cols])
    np.testing.assert_allclose(stats.cross_matrix(centered, cols), bc[:, cols].T @ yc, atol=1e-9)
    np.testing.assert_allclose(stats.gram_diag(centered), np.sum(bc**2, 0))
    blocks = stats.diag_blocks(centered)
    for j in range(5):
        np.testing.assert_allclose(blocks[j], bc[:, 3 * j : 3 * j + 3].T @ bc[:, 3 * j : 3 * j + 3])
    assert stats.target_energy(centered) == pytest.approx(np.sum(yc**2))
    assert stats.ridge_lambda(0.5, centered) == pytest.approx(0.5 * np.mean(np.sum(bc**2, 0)))


def test_accessors_do_not_mutate(problem):
    b, y, w = problem
    stats = make_stats("gram", b, y, w, 3)
    gram = stats.gram.copy()
    stats.gram_matrix(True)[:] = 0
    stats.cross_matrix(True)[:] = 0
    stats.diag_blocks(True)[:] = 0
    np.testing.assert_array_equal(stats.gram, gram)
    with pytest.raises(ValueError, match="row-form"):
        stats.row_matrices(True)


@pytest.mark.parametrize("form", FORMS)
def test_kept_products_are_made_once_per_column_set(problem, form, monkeypatch):
    """The uncentered products of the latest kept columns are kept (the centered copies handed
    out can be changed freely), made again for other columns, and not kept above the limit."""
    from onnx_subprune.select import stats as stats_module

    b, y, w = problem
    stats = make_stats(form, b, y, w, 3)
    cols, other = columns([1, 4], 3), columns([0, 2], 3)
    gram, cross = stats.kept_products(cols)
    np.testing.assert_allclose(gram, b[:, cols].T @ b[:, cols])
    np.testing.assert_allclose(cross, b[:, cols].T @ y)
    stats.gram_matrix(True, cols)[:] = 0
    stats.cross_matrix(True, cols)[:] = 0
    assert stats.kept_products(cols.copy())[0] is gram
    np.testing.assert_allclose(stats.gram_matrix(False, cols), b[:, cols].T @ b[:, cols])
    assert stats.kept_products(other)[0] is not gram and stats.kept_products(cols)[0] is not gram
    monkeypatch.setattr(stats_module, "KEPT_PRODUCT_ENTRIES", 0)
    fresh = make_stats(form, b, y, w, 3)
    assert fresh.kept_products(cols)[0] is not fresh.kept_products(cols)[0]


@pytest.mark.parametrize("centered", [True, False])
def test_dual_kernels_of_summed_folds_come_from_shared_blocks(problem, centered):
    """Row-form statistics summed from folds, and each fold's training set (``leave_out``), form
    their dual kernels from blocks that the folds keep: the same kernels as from their own rows,
    each block made once."""
    from onnx_subprune.select.stats import leave_out

    b, y, w = problem
    folds = [ConsumerStats.from_rows(b[rows], y[rows], w, 3) for rows in np.array_split(np.arange(len(b)), 4)]
    total = sum_stats(folds)
    cols = columns([0, 2, 3], 3)
    trains = [leave_out(total, fold) for fold in folds]
    for stats in [total] + trains:
        rows, targets, kernel = stats.dual(centered, cols)
        direct = ConsumerStats.from_rows(stats.rows, stats.targets, w, 3).dual(centered, cols)
        for found, expected in zip((rows, targets, kernel), direct):
            np.testing.assert_allclose(found, expected, rtol=1e-10, atol=1e-10)
    blocks = [fold.__dict__["_kernels"][1] for fold in folds if "_kernels" in fold.__dict__]
    assert sum(len(kept) for kept in blocks) == 4 * 5 // 2  # one per pair of folds


@pytest.mark.parametrize("centered", [True, False])
def test_gram_training_sets_form_only_what_a_fit_reads(problem, centered):
    """A Gram-form fold's training set (``leave_out``) gives every accessor as the other folds
    summed, and a shrunk refit on it (strength by GCV: the spectrum, the map regression, the
    solve) forms only the kept columns' products, from the total's and the fold's kept ones,
    never the full d x d difference."""
    from onnx_subprune.select.shrink import shrink_refit
    from onnx_subprune.select.stats import leave_out

    b, y, w = problem
    folds = [make_stats("gram", b[rows], y[rows], w, 3) for rows in np.array_split(np.arange(len(b)), 4)]
    total = sum_stats(folds)
    kept = np.array([0, 2, 3])
    cols = columns(kept, 3)
    for f, fold in enumerate(folds):
        train = leave_out(total, fold)
        fit = shrink_refit(train, kept, bias_compensation=centered)
        assert not train.__dict__.get("_differences")
        expected = sum_stats([other for g, other in enumerate(folds) if g != f])
        assert np.isfinite(fit.weight).all() and train.n_rows == expected.n_rows
        for name in ("gram_diag", "map_gram", "gram_matrix", "cross_matrix"):
            np.testing.assert_allclose(getattr(train, name)(centered), getattr(expected, name)(centered),
                                       rtol=1e-12, atol=1e-9)
        for found, want in zip(train.kept_products(cols), expected.kept_products(cols)):
            np.testing.assert_allclose(found, want, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(train.gram_matrix(centered, cols), expected.gram_matrix(centered, cols),
                                   rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(train.gram, expected.gram, rtol=1e-12, atol=1e-9)  # formed when read


def test_forget_caches_drops_what_statistics_and_their_parts_keep(problem):
    from onnx_subprune.select.stats import forget_caches

    b, y, w = problem
    folds = [ConsumerStats.from_rows(b[rows], y[rows], w, 3) for rows in np.array_split(np.arange(len(b)), 4)]
    total = sum_stats(folds)
    cols = columns([0, 2, 3], 3)
    total.dual(True, cols), total.kept_products(cols), total.map_products()
    holders = [total, *folds]
    assert all(any(name.startswith("_") and name != "_parts" for name in h.__dict__) for h in holders)
    forget_caches([total])
    assert all({n for n in h.__dict__ if n.startswith("_")} <= {"_parts", "_kernel_lock"} for h in holders)
    np.testing.assert_allclose(total.map_gram(False), sum(f.map_gram(False) for f in folds))


def _gram_kwargs(b, y, w):
    return dict(
        gram=b.T @ b, cross=b.T @ y, y_sq=float(np.sum(y * y)), b_sum=b.sum(0), y_sum=y.sum(0),
        n_rows=b.shape[0], weight=w, block=3,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(block=4), "multiple of block"),
        (dict(block=0), "block must be"),
        (dict(n_rows=0), "n_rows must be"),
        (dict(cross=np.zeros((15, 5))), "cross has shape"),
        (dict(gram=np.zeros((15, 14))), "gram has shape"),
        (dict(b_sum=np.zeros(14)), "b_sum has shape"),
        (dict(y_sum=np.zeros(3)), "y_sum has shape"),
        (dict(weight=np.zeros(15)), "weight must be 2-D"),
        (dict(y_sq=-1.0), "y_sq"),
        (dict(cross=None), "exactly one form|cross is missing"),
    ],
)
def test_validation(problem, change, message):
    kwargs = _gram_kwargs(*problem)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        ConsumerStats.from_gram(**kwargs)


def test_validation_mixed_forms(problem):
    b, y, w = problem
    with pytest.raises(ValueError, match="exactly one form"):
        ConsumerStats(block=3, n_rows=40, y_sq=1.0, b_sum=b.sum(0), y_sum=y.sum(0), weight=w,
                      gram=b.T @ b, cross=b.T @ y, rows=b, targets=y)
    with pytest.raises(ValueError, match="rows has shape"):
        ConsumerStats(block=3, n_rows=39, y_sq=1.0, b_sum=b.sum(0), y_sum=y.sum(0), weight=w,
                      rows=b, targets=y)
    with pytest.raises(ValueError, match="2-D"):
        ConsumerStats.from_rows(b.ravel(), y, w, 3)


@pytest.mark.parametrize("form", FORMS)
def test_sum_of_parts_equals_the_whole(problem, form):
    b, y, w = problem
    cuts = [0, 7, 8, 25, 40]  # parts of 7, 1, 17 and 15 rows
    parts = [make_stats(form, b[lo:hi], y[lo:hi], w, 3) for lo, hi in zip(cuts, cuts[1:])]
    total, whole = sum_stats(parts), make_stats(form, b, y, w, 3)
    assert total.is_row_form == (form == "rows") and total.n_rows == 40
    for name in ("b_sum", "y_sum", "gram", "cross", "rows", "targets"):
        if getattr(whole, name) is not None:
            np.testing.assert_allclose(getattr(total, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    assert total.y_sq == pytest.approx(whole.y_sq, rel=1e-12)
    assert total.weight is parts[0].weight and sum_stats(parts[:1]) is parts[0]
    np.testing.assert_array_equal(parts[0].b_sum, b[:7].sum(0))  # the parts are left as they were


def test_sum_refuses_mismatched_parts(problem):
    b, y, w = problem
    with pytest.raises(ValueError, match="at least one part"):
        sum_stats([])
    with pytest.raises(ValueError, match="part 1 has"):
        sum_stats([make_stats("gram", b, y, w, 3), make_stats("rows", b, y, w, 3)])
    with pytest.raises(ValueError, match="part 1 has"):
        sum_stats([make_stats("gram", b, y, w, 3), make_stats("gram", b, y, w, 1)])
