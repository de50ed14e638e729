"""One chunk of a consumer's least-squares rows B, and its products with B, in two forms.

:class:`UnfoldedRows` holds B itself, (r, d): every consumer can be unfolded so.

:class:`RowWindows` holds a stride-1 2-D Conv's input unfolded along the width only, and never
builds B. A row of B (output position (oy, ox) of sample s) lists, for each kernel row i, the
window ``V[y, s, ox]`` (C * kw: channel, kernel column) of padded input row y = oy + i * dy. So the
Gram block of kernel rows (i, i + t) is

    G[i, i + t] = sum_{y in [i * dy, i * dy + Ho)} sum_{s, ox} V[y, s, ox] V[y + t * dy, s, ox]^T,

a sum over input rows of products that depend only on the shift t. The rows that every i reads
(the core, [(kh - 1) * dy, Ho)) are multiplied once per shift; the 2 (kh - 1) dy rows above and
below it are multiplied band by band and added to the blocks that read them. This takes about
kh times fewer multiplications than B^T B (3x for a 3x3 kernel), and the copy of the input is
kw times its size instead of kh * kw times. The sums are exact: the same products, regrouped.

Both forms accumulate into float64 totals in a layout of their own (:meth:`new_totals`) and turn
them into the (channel, kernel offset) column order of B at the end (:meth:`finish`). Products are
made in float32 (BLAS) over at most ``block`` rows at a time before they are added to the totals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .types import ConvGeometry

MIN_ROWS_PER_BAND = 4
"""Output rows per row of the band above the core below which B^T B is made from unfolded rows:
on small maps the bands' small products and the float64 block sums cost more than they save.
Per chunk, against unfolded rows (2 cores): a 512-channel 3x3 Conv on 7x7 maps took 1.4x as long
this way, 256 channels on 14x14 maps 0.97x, 96 channels on 52x52 maps 0.65x, 32 channels on
32x32 maps 0.6x."""


@dataclass
class Totals:
    """Running float64 sums of one consumer in the layout of the form that made them: B^T B,
    B^T Y and B's column sums. ``gram`` None: B's sums are another consumer's (one that reads the
    same input), and only B^T Y is kept; ``b_sum`` is then left at zero."""

    gram: np.ndarray | None
    cross: np.ndarray
    b_sum: np.ndarray


def _accumulate(total: np.ndarray, left: np.ndarray, right: np.ndarray, block: int) -> None:
    """``total += left @ right`` (float64 total) from float32 products over at most ``block`` of
    the shared columns of ``left`` (p, r) and rows of ``right`` (r, q) at a time."""
    for start in range(0, left.shape[1], block):
        total += left[:, start : start + block] @ right[start : start + block]


def _product_rows(view: np.ndarray, bias: np.ndarray | None, count: int) -> np.ndarray:
    """A layer's output ``view`` (..., m), its axes in the order of B's rows, as the (r, m)
    float32 rows of its product: less ``bias`` (m,), one copy at most."""
    if bias is None:
        rows = np.ascontiguousarray(view, dtype=np.float32)
    else:
        rows = np.empty(view.shape, np.float32)
        np.subtract(view, bias, out=rows)
    rows = rows.reshape(-1, view.shape[-1])
    if rows.shape[0] != count:
        raise ValueError(f"an output of shape {list(view.shape)} has {rows.shape[0]} rows, B has {count}")
    return rows


class UnfoldedRows:
    """B as its rows, (r, d) float32 (im2col of a Conv input, or a dense input's rows);
    ``conv``: the rows are a Conv's (its output holds channels on axis 1, not last)."""

    def __init__(self, rows: np.ndarray, block: int, conv: bool = False):
        self.rows = rows if rows.dtype == np.float32 else rows.astype(np.float32)
        self.count, self.width = self.rows.shape
        self.block = block
        self.conv = conv

    def new_totals(self, m: int, gram: bool) -> Totals:
        d = self.width
        return Totals(np.zeros((d, d)) if gram else None, np.zeros((d, m)), np.zeros(d))

    def times(self, weight: np.ndarray) -> np.ndarray:
        """B @ weight: (r, m) float32, for weight (d, m) float32."""
        return self.rows @ weight

    def product_rows(self, output: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """The layer's output on these rows' samples, (n, m, *positions) for a Conv, else
        (n, ..., m), as its product's rows (r, m) float32 in B's row order, less ``bias``."""
        return _product_rows(np.moveaxis(output, 1, -1) if self.conv else output, bias, self.count)

    def add(self, totals: Totals, y: np.ndarray) -> None:
        """Fold this chunk (and its targets ``y`` (r, m) float32) into ``totals``; B^T B only when
        ``totals.gram`` is kept."""
        if totals.gram is not None:
            totals.b_sum += self.rows.sum(axis=0, dtype=np.float64)
            _accumulate(totals.gram, self.rows.T, self.rows, self.block)
        _accumulate(totals.cross, self.rows.T, y, self.block)

    @staticmethod
    def finish(totals: Totals) -> Totals:
        return totals


class RowWindows:
    """A stride-1 2-D Conv input (n, C, H, W) unfolded along the width only (module docstring).

    ``windows``: (C * kw, Hp * n * Wo) float32; column (y, s, ox) is the window of padded row y,
    sample s, output column ox. Rows of B correspond to (oy, s, ox) in that order.
    """

    def __init__(self, x: np.ndarray, geometry: ConvGeometry, block: int):
        (kh, kw), (dy, dx), (_, sx) = geometry.kernel, geometry.dilations, geometry.strides
        top, left, bottom, right = geometry.pads
        padded = np.pad(x, [(0, 0), (0, 0), (top, bottom), (left, right)])
        windows = sliding_window_view(padded, (kw - 1) * dx + 1, axis=3)[:, :, :, ::sx, ::dx]
        n, channels, rows, out_cols, _ = windows.shape
        self.windows = windows.transpose(1, 4, 2, 0, 3).reshape(channels * kw, rows * n * out_cols)
        if self.windows.dtype != np.float32:
            self.windows = self.windows.astype(np.float32)
        self.channels, self.kh, self.kw, self.dy = channels, kh, kw, dy
        self.width = channels * kh * kw  # columns of B
        self.out_rows = rows - (kh - 1) * dy
        self.line = n * out_cols  # columns per input row
        self.count = self.out_rows * self.line
        self.block = block

    @staticmethod
    def fits(geometry: ConvGeometry | None, shape: tuple[int, ...], columns: int) -> bool:
        """Whether a Conv input of ``shape`` (n, C, H, W) unfolds this way into ``columns``
        columns and gains by it: 2-D, stride 1 along the height, more than one kernel row, and
        at least :data:`MIN_ROWS_PER_BAND` times as many output rows as the band above the core."""
        if geometry is None or len(geometry.kernel) != 2 or len(shape) != 4:
            return False
        (kh, kw), dy = geometry.kernel, geometry.dilations[0]
        out_rows = shape[2] + geometry.pads[0] + geometry.pads[2] - (kh - 1) * dy
        return (geometry.strides[0] == 1 and kh > 1 and out_rows >= MIN_ROWS_PER_BAND * (kh - 1) * dy
                and shape[1] * kh * kw == columns)

    def _rows(self, first: int, stop: int) -> np.ndarray:
        """The windows of input rows [first, stop): (C * kw, (stop - first) * n * Wo)."""
        return self.windows[:, first * self.line : stop * self.line]

    def _kernel_row(self, i: int) -> np.ndarray:
        """What kernel row i reads for every row of B: (C * kw, r)."""
        return self._rows(i * self.dy, i * self.dy + self.out_rows)

    def new_totals(self, m: int, gram: bool) -> Totals:
        shape = (self.kh, self.channels, self.kw)
        return Totals(np.zeros(shape + shape) if gram else None, np.zeros(shape + (m,)), np.zeros(shape))

    def times(self, weight: np.ndarray) -> np.ndarray:
        """B @ weight: (r, m) float32, for weight (C * kh * kw, m) float32 in B's column order."""
        parts = weight.reshape(self.channels, self.kh, self.kw, -1)
        y = self._kernel_row(0).T @ parts[:, 0].reshape(self.channels * self.kw, -1)
        for i in range(1, self.kh):
            y += self._kernel_row(i).T @ parts[:, i].reshape(self.channels * self.kw, -1)
        return y

    def product_rows(self, output: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """The Conv's output on these samples (n, m, Ho, Wo) as its product's rows (r, m)
        float32 in B's row order (oy, s, ox), less ``bias``."""
        return _product_rows(output.transpose(2, 0, 3, 1), bias, self.count)

    def _product(self, first: int, stop: int, shift: int) -> np.ndarray:
        """sum over input rows y in [first, stop) of V[y] V[y + shift]^T: (C kw, C kw) float64,
        float32 products over at most ``block`` columns at a time."""
        left = self._rows(first, stop)
        total = np.zeros((left.shape[0], left.shape[0]))
        _accumulate(total, left, self._rows(first + shift, stop + shift).T, self.block)
        return total

    def add(self, totals: Totals, y: np.ndarray) -> None:
        """Fold this chunk (and its targets ``y`` (r, m) float32) into ``totals``."""
        width = self.channels * self.kw
        for i in range(self.kh):
            cross = np.zeros((width, y.shape[1]))
            _accumulate(cross, self._kernel_row(i), y, self.block)
            totals.cross[i] += cross.reshape(self.channels, self.kw, -1)
        if totals.gram is None:
            return
        line_sums = self.windows.reshape(width, -1, self.line) @ np.ones(self.line, np.float32)  # (C kw, Hp)
        for i in range(self.kh):
            rows = line_sums[:, i * self.dy : i * self.dy + self.out_rows]
            totals.b_sum[i] += rows.sum(axis=1, dtype=np.float64).reshape(self.channels, self.kw)
        shape = (self.channels, self.kw, self.channels, self.kw)
        kh, dy, core_end = self.kh, self.dy, self.out_rows
        for t in range(kh):
            blocks = range(kh - t)  # kernel rows i with a block (i, i + t)
            core = self._product((kh - 1) * dy, core_end, t * dy).reshape(shape)
            for i in blocks:
                totals.gram[i, :, :, i + t] += core
            for band in range(kh - 1):  # band of rows above the core: read by kernel rows i <= band
                above = self._product(band * dy, (band + 1) * dy, t * dy).reshape(shape)
                for i in blocks[: band + 1]:
                    totals.gram[i, :, :, i + t] += above
            for band in range(kh - 1 - t):  # below the core: read by kernel rows i > band
                below = self._product(core_end + band * dy, core_end + (band + 1) * dy, t * dy).reshape(shape)
                for i in blocks[band + 1 :]:
                    totals.gram[i, :, :, i + t] += below

    @staticmethod
    def finish(totals: Totals) -> Totals:
        """Totals in B's column order (channel, kernel row, kernel column): gram (d, d), cross
        (d, m), b_sum (d,); the blocks below the diagonal are the transposes of those above."""
        cross = totals.cross.transpose(1, 0, 2, 3).reshape(-1, totals.cross.shape[-1])
        b_sum = totals.b_sum.transpose(1, 0, 2).reshape(-1)
        if totals.gram is None:
            return Totals(None, cross, b_sum)
        gram = totals.gram
        kh = gram.shape[0]
        for i in range(kh):
            for j in range(i):
                gram[i, :, :, j] = gram[j, :, :, i].transpose(2, 3, 0, 1)
        d = int(np.prod(gram.shape[:3]))
        return Totals(gram.transpose(1, 0, 2, 4, 3, 5).reshape(d, d), cross, b_sum)
