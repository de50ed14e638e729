"""A Conv input unfolded along the width only gives the statistics of the full unfolding."""

import numpy as np
import pytest

import builders
from onnx_subprune import calibrate, runtime
from onnx_subprune.calibrate import _Accumulator, unfold
from onnx_subprune.patches import RowWindows, UnfoldedRows
from onnx_subprune.types import ConvGeometry
from test_calibrate import _setup


GEOMETRIES = [  # kernel, width stride, dilations, pads (top, left, bottom, right), input (H, W)
    ((3, 3), 1, (1, 1), (1, 1, 1, 1), (16, 9)),
    ((5, 5), 1, (1, 1), (2, 2, 2, 2), (22, 10)),
    ((3, 1), 1, (1, 1), (1, 0, 1, 0), (12, 6)),
    ((2, 2), 1, (1, 1), (0, 0, 1, 1), (9, 7)),
    ((3, 3), 2, (2, 2), (2, 0, 1, 3), (23, 11)),
    ((3, 5), 2, (1, 1), (0, 1, 2, 0), (14, 12)),
    ((7, 1), 1, (3, 1), (3, 0, 3, 0), (90, 5)),
]


@pytest.mark.parametrize("kernel, stride, dilations, pads, spatial", GEOMETRIES)
@pytest.mark.parametrize("block", [2048, 7])  # one product per band, and bands split into blocks
def test_row_windows_give_the_statistics_of_the_unfolded_rows(kernel, stride, dilations, pads, spatial, block):
    geometry = ConvGeometry(kernel, (1, stride), dilations, pads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4) + spatial).astype(np.float32)
    x_a = rng.standard_normal((3, 5) + spatial).astype(np.float32)  # A with more channels than B
    w_a = rng.standard_normal((5 * kernel[0] * kernel[1], 6)).astype(np.float32)
    unfold_rows = calibrate.unfold_conv(x.astype(np.float64), geometry)
    assert RowWindows.fits(geometry, x.shape, unfold_rows.shape[1])

    windows, source = RowWindows(x, geometry, block), RowWindows(x_a, geometry, block)
    y = source.times(w_a)
    totals = windows.new_totals(6, gram=True)
    for _ in range(2):  # two chunks
        windows.add(totals, y)
    totals = RowWindows.finish(totals)

    # rows of B in the windows' order: (output row, sample, output column)
    out_rows, out_cols = windows.out_rows, windows.line // len(x)
    order = np.arange(len(unfold_rows)).reshape(len(x), out_rows, out_cols).transpose(1, 0, 2).ravel()
    rows = unfold_rows[order]
    targets = calibrate.unfold_conv(x_a.astype(np.float64), geometry)[order] @ w_a
    assert windows.count == len(rows)
    for got, expected in ((y, targets), (totals.gram, 2 * rows.T @ rows), (totals.cross, 2 * rows.T @ y),
                          (totals.b_sum, 2 * rows.sum(axis=0))):
        assert got.shape == expected.shape
        assert np.linalg.norm(got - expected) <= 1e-6 * np.linalg.norm(expected)


def test_row_windows_only_where_they_apply():
    square = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    assert RowWindows.fits(square, (2, 4, 16, 16), 36)
    assert not RowWindows.fits(square, (2, 4, 16, 16), 35)  # other columns than the unfolding's
    assert not RowWindows.fits(square, (2, 4, 6, 16), 36)  # few output rows: unfolded rows are faster
    assert not RowWindows.fits(ConvGeometry((3, 3), (2, 1), (1, 1), (1, 1, 1, 1)), (2, 4, 16, 16), 36)
    assert not RowWindows.fits(ConvGeometry((1, 3), (1, 1), (1, 1), (0, 1, 0, 1)), (2, 4, 16, 16), 12)
    assert not RowWindows.fits(ConvGeometry((3,), (1,), (1,), (1, 1)), (2, 4, 16), 12)
    assert not RowWindows.fits(None, (2, 16), 16)


def _windowed_consumer():
    """A 3x3 stride-1 Conv on 12x12 maps of the conv_bn_pool_conv-like chain (its second conv)."""
    model = builders.build(
        builders.header("float[N, 3, 12, 12] x", "float[N, 5, 12, 12] y")
        + """{
            h = Conv <pads = [1, 1, 1, 1]> (x, w1)
            r = Relu (h)
            y = Conv <pads = [1, 1, 1, 1]> (r, w2)
        }""",
        {"w1": (6, 3, 3, 3), "w2": (5, 6, 3, 3)},
    )
    groups, weights, session, feeds = _setup(model, 24)
    (consumer,) = groups[0].consumers
    return consumer, weights[consumer.node], runtime.run(session, feeds)[consumer.input]


def _stats(consumer, weight, x, batch):
    accumulator = _Accumulator(weight, weight, consumer.block, len(x))
    for start in range(0, len(x), batch):
        accumulator.add(consumer, x[start : start + batch], x[start : start + batch])
    return accumulator, accumulator.stats()


def test_gathered_batches_of_one_give_the_statistics_of_one_batch(monkeypatch):
    """A fixed batch of 1 is gathered into chunks (several flushes here) and gives the same
    statistics as one batch, in the windowed form and in the unfolded form."""
    consumer, weight, x = _windowed_consumer()
    monkeypatch.setattr(calibrate, "GATHER_ROWS", 5 * 144)
    for windowed in (True, False):
        if not windowed:
            monkeypatch.setattr(RowWindows, "fits", staticmethod(lambda *_: False))
        accumulator, whole = _stats(consumer, weight, x, len(x))
        assert accumulator.form is (RowWindows if windowed else UnfoldedRows)
        _, single = _stats(consumer, weight, x, 1)
        rows = unfold(consumer, x).astype(np.float64)
        assert single.n_rows == whole.n_rows == len(rows)
        for field, expected in (("gram", rows.T @ rows), ("cross", rows.T @ rows @ weight), ("b_sum", rows.sum(0))):
            np.testing.assert_allclose(getattr(single, field), expected, rtol=1e-6, atol=1e-5)
            np.testing.assert_allclose(getattr(whole, field), expected, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(single.y_sq, whole.y_sq, rtol=1e-9)
