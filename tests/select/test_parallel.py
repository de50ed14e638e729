"""Pieces of a selection run side by side give exactly what they give one after the other."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from select_helpers import FORMS, make_stats, random_problem

from onnx_subprune.choose import _cross_validated_refit
from onnx_subprune.select import parallel, select_group
from onnx_subprune.select.parallel import each


def test_each_keeps_the_order_and_runs_on_several_threads(monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 2)
    seen = set()
    barrier = threading.Barrier(2, timeout=10)

    def square(x: int) -> int:
        seen.add(threading.get_ident())
        if x < 2:
            barrier.wait()  # the first two items only finish once both run at the same time
        return x * x

    assert each(square, range(7)) == [x * x for x in range(7)]
    assert len(seen) >= 2


def test_nested_calls_run_serially_inside_a_worker(monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 2)
    assert each(lambda x: each(lambda y: (x, y, threading.get_ident()), range(2)), range(2))[0][0][:2] == (0, 0)
    inner = each(lambda x: {t for _, _, t in each(lambda y: (x, y, threading.get_ident()), range(3))}, range(2))
    assert all(len(threads) == 1 for threads in inner)  # each inner list ran on its worker's thread


def test_small_pieces_run_in_the_calling_thread(monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 4)
    here = threading.get_ident()
    assert each(lambda _: threading.get_ident(), range(3), entries=3 * parallel.SHARED_ENTRIES - 1) == [here] * 3


@pytest.mark.parametrize("total, count", [(10, 3), (2, 4), (7, 1), (0, 2)])
def test_even_ranges_cover_the_total(total, count):
    ranges = parallel.even_ranges(total, count)
    assert [i for r in ranges for i in range(total)[r]] == list(range(total))
    assert len(ranges) == max(1, min(total, count))
    assert max(r.stop - r.start for r in ranges) - min(r.stop - r.start for r in ranges) <= 1


def test_an_exception_of_one_piece_reaches_the_caller():
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        each(fail_on_three, range(5))


@pytest.mark.parametrize("form", FORMS)
def test_selection_and_cross_validated_refit_equal_the_serial_run(form, monkeypatch):
    """Three consumers, four folds: the kept channels, every refit and both explained variances
    are bit for bit those of one worker."""
    rng = np.random.default_rng(3)
    problems = [random_problem(rng, 10, 3, 64, m, mixing=1.0) for m in (4, 3, 2)]
    folds = np.array_split(np.arange(64), 4)
    whole = [make_stats(form, b, y, w, 3) for b, y, w in problems]
    fold_stats = [[make_stats(form, b[f], y[f], w, 3) for b, y, w in problems] for f in folds]
    fitting = dict(refit_weights=True, shrink="cv", ridge=1e-3, bias_compensation=True)

    def run():
        chosen = select_group(whole, 5, method="asym", **fitting)
        return _cross_validated_refit(chosen, whole, fold_stats, [chosen.kept] * 3, fitting)

    monkeypatch.setattr(parallel, "WORKERS", 1)
    serial = run()
    monkeypatch.setattr(parallel, "WORKERS", 4)
    monkeypatch.setattr(parallel, "SHARED_ENTRIES", 0)  # share even these small pieces
    side_by_side = run()
    assert np.array_equal(serial.kept, side_by_side.kept)
    assert (serial.explained, serial.explained_holdout) == (side_by_side.explained, side_by_side.explained_holdout)
    for a, b in zip(serial.fits, side_by_side.fits):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias_shift, b.bias_shift)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rows", [64, 16])  # 16: the row form's folds are fitted in the dual
def test_folds_sharing_their_totals_products_equal_the_serial_run(form, rows, monkeypatch):
    """Totals summed from the folds, as calibration makes them: the training sets are the total
    less a fold, and the folds' channel map products, kept-column products and dual kernel
    blocks are shared between sets fitted side by side. Bit for bit the serial run."""
    from onnx_subprune.select.stats import sum_stats

    rng = np.random.default_rng(4)
    problems = [random_problem(rng, 10, 3, rows, m, mixing=1.0) for m in (4, 3)]
    folds = np.array_split(np.arange(rows), 4)
    fitting = dict(refit_weights=True, shrink="cv", ridge=1e-3, bias_compensation=True)

    def run():  # fresh statistics: nothing kept from the other run
        fold_stats = [[make_stats(form, b[f], y[f], w, 3) for b, y, w in problems] for f in folds]
        whole = [sum_stats([fold[c] for fold in fold_stats]) for c in range(len(problems))]
        chosen = select_group(whole, 5, method="asym", **fitting)
        return _cross_validated_refit(chosen, whole, fold_stats, [chosen.kept] * len(problems), fitting)

    monkeypatch.setattr(parallel, "WORKERS", 1)
    serial = run()
    monkeypatch.setattr(parallel, "WORKERS", 4)
    monkeypatch.setattr(parallel, "SHARED_ENTRIES", 0)
    side_by_side = run()
    assert np.array_equal(serial.kept, side_by_side.kept)
    assert (serial.explained, serial.explained_holdout) == (side_by_side.explained, side_by_side.explained_holdout)
    for a, b in zip(serial.fits, side_by_side.fits):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias_shift, b.bias_shift)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("block", [1, 3])
@pytest.mark.parametrize("ridge", [0.0, 1e-3])  # the row form stays rows without a ridge
def test_greedy_steps_split_over_channel_ranges_pick_the_same(form, block, ridge, monkeypatch):
    """With every consumer's steps split into channel ranges (the split of wide layers, forced
    here on a small one) the greedy picks the same channels with the same gains."""
    from onnx_subprune.select import greedy_select, residual

    rng = np.random.default_rng(11)
    consumers = [make_stats(form, *random_problem(rng, 13, block, 40, 5, mixing=1.0), block)]
    whole = greedy_select(consumers, 9, ridge=ridge)
    monkeypatch.setattr(parallel, "WORKERS", 3)
    monkeypatch.setattr(parallel, "SHARED_ENTRIES", 0)
    monkeypatch.setattr(residual, "CHUNK_ENTRIES", 0)
    split = greedy_select(consumers, 9, ridge=ridge)
    assert np.array_equal(whole.order, split.order)
    np.testing.assert_allclose(split.gains, whole.gains, rtol=1e-10)
