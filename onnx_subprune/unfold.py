"""Unfold a consumer's input into the rows of the least-squares problem (im2col)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .types import ConvGeometry


def unfold_conv(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """Rows of a Conv's input patches, following its pads, strides and dilations exactly.

    x: (N, C, *spatial) -> (N * prod(out_spatial), C * prod(kernel)); row order is
    (sample, output position), column order is (channel, kernel offset), so that
    ``rows @ W.reshape(M, -1).T`` is the convolution without bias. The rows are the transpose
    of a contiguous (C * prod(kernel), N * prod(out_spatial)) copy (Fortran order): that copy
    gathers runs of neighbouring output positions, several times faster than gathering kernel
    offsets one element at a time, and BLAS reads the transpose at no cost.
    """
    dims = len(geometry.kernel)
    if x.ndim != dims + 2:
        raise ValueError(f"expected a rank-{dims + 2} input, got shape {x.shape}")
    pads = geometry.pads
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + dims]) for i in range(dims)]) if any(pads) else x
    reach = [(k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations)]
    windows = sliding_window_view(padded, reach, axis=tuple(range(2, dims + 2)))
    windows = windows[
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in geometry.strides)
        + tuple(slice(None, None, d) for d in geometry.dilations)
    ]
    positions = windows.shape[2 : 2 + dims]
    order = (1, *range(dims + 2, 2 * dims + 2), 0, *range(2, dims + 2))
    return windows.transpose(order).reshape(-1, x.shape[0] * int(np.prod(positions))).T


def unfold_dense(x: np.ndarray) -> np.ndarray:
    """Rows of a Gemm/MatMul input: (..., d) -> (prod(...), d), one row per sample or token."""
    return x.reshape(-1, x.shape[-1])
