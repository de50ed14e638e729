"""Least-squares refit of a consumer's weights on the kept channels, and its evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linalg import psd_solve, psd_tolerance
from .stats import ConsumerStats


@dataclass(frozen=True)
class Strength:
    """How a shrunk refit (:mod:`.shrink`) was regularized: the ``anchor``'s name, ``lam``
    (absolute, for statistics of ``rows`` rows; inf keeps the anchor) and the channel
    regression's own ``map_lam`` (None for other anchors). Another sample set is refitted with
    the same strength by scaling both by its rows / ``rows`` (the same penalty per row)."""

    anchor: str
    lam: float
    map_lam: float | None
    rows: int


@dataclass(frozen=True, eq=False)
class Refit:
    """New consumer weights for the kept channels.

    ``weight`` (len(kept) * block, m): W', rows are the blocks of the kept channels in sorted
    order. ``bias_shift`` (m,): to ADD to the consumer's existing bias (zeros when there is none).
    ``strength``: the shrinkage a shrunk refit chose (None for the other fits).
    """

    weight: np.ndarray
    bias_shift: np.ndarray
    strength: Strength | None = None


def kept_columns(stats: ConsumerStats, kept: np.ndarray) -> np.ndarray:
    """Column indices (len(kept) * block,) of ``kept`` (non-empty, strictly increasing)."""
    kept = np.asarray(kept)
    if kept.ndim != 1 or kept.size == 0 or not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(
            f"kept must be a non-empty 1-D integer array, got {kept.dtype} shape {kept.shape}"
        )
    if kept[0] < 0 or kept[-1] >= stats.n_channels or np.any(np.diff(kept) <= 0):
        raise ValueError(
            f"kept must be strictly increasing channel indices in [0, {stats.n_channels})"
        )
    return stats.columns(kept)


def refit(
    stats: ConsumerStats,
    kept: np.ndarray,
    *,
    ridge: float = 0.0,
    bias_compensation: bool = True,
) -> Refit:
    """W' = argmin ||B_S W' (+ 1 b^T) - Y||^2 + lambda ||W'||^2 over the kept columns S.

    lambda = ``ridge`` * mean(diag(G)) (G centered when ``bias_compensation``), as in the
    selection. The normal equations are solved once (Cholesky, or an eigen pseudo-inverse with the
    relative tolerance when singular: the minimum-norm solution). Row-form statistics with more
    kept columns than rows are solved in the dual, W' = B_S^T (B_S B_S^T + lambda I)^+ Y, so no
    s x s matrix is formed. With bias compensation ``bias_shift`` = ybar - W'^T mu_S, else zeros.
    """
    cols = kept_columns(stats, kept)
    centered = bias_compensation
    lam = stats.ridge_lambda(ridge, centered)
    tol = psd_tolerance(stats.gram_diag(centered))
    if stats.is_row_form and cols.size > stats.n_rows:
        weight = dual_ridge(stats, centered, cols, lam, tol)
    else:
        gram = stats.gram_matrix(centered, cols)
        gram[np.diag_indices_from(gram)] += lam
        weight = psd_solve(gram, stats.cross_matrix(centered, cols), tol)
    if bias_compensation:
        bias_shift = stats.mean_y - weight.T @ stats.mean_b[cols]
    else:
        bias_shift = np.zeros(stats.m)
    return Refit(weight=weight, bias_shift=bias_shift)


def dual_ridge(stats: ConsumerStats, centered: bool, cols: np.ndarray, lam: float, tol: float,
               anchor: np.ndarray | None = None) -> np.ndarray:
    """argmin ||B_S D - R||^2 + lam ||D||^2 (s, m), R = Y - B_S ``anchor`` (Y when None), solved in
    the dual for row-form statistics with more kept columns s than rows N:
    D = B_S^T (B_S B_S^T + lam I)^+ R, through the statistics' kernel (:meth:`ConsumerStats.dual`;
    the minimum-norm solution where singular, with the relative tolerance ``tol``)."""
    rows, targets, kernel = stats.dual(centered, cols)
    residual = targets if anchor is None else targets - rows @ anchor
    return rows.T @ psd_solve(kernel + lam * np.eye(len(kernel)), residual, tol)


def keep_weights(stats: ConsumerStats, kept: np.ndarray) -> Refit:
    """No refit: the original weight rows of the kept blocks, zero bias shift."""
    weight = stats.weight[kept_columns(stats, kept)]
    return Refit(weight=weight, bias_shift=np.zeros(stats.m))


def residual_energy(stats: ConsumerStats, kept: np.ndarray, fit: Refit) -> float:
    """||B_S W' + 1 bias_shift^T - Y||_F^2 from the statistics (clamped at 0 against rounding).

    Works for any statistics of the same consumer, e.g. held-out ones for a fit on calibration
    data: with G, C uncentered, it is tr(W'^T G_SS W') - 2 tr(W'^T C_S) + ||Y||^2
    + 2 b^T (W'^T sum_S(B) - sum(Y)) + N ||b||^2.
    """
    cols = kept_columns(stats, kept)
    w, b = fit.weight, fit.bias_shift
    if w.shape != (cols.size, stats.m) or b.shape != (stats.m,):
        raise ValueError(
            f"fit has weight {w.shape} and bias_shift {b.shape}, expected "
            f"({cols.size}, {stats.m}) and ({stats.m},)"
        )
    if stats.is_row_form:
        diff = stats.rows[:, cols] @ w + b - stats.targets
        return float(np.sum(diff * diff))
    gram, cross = stats.kept_products(cols)
    fitted = float(np.sum(w * (gram @ w)))
    crossed = float(np.sum(w * cross))
    shift = 2.0 * float(b @ (w.T @ stats.b_sum[cols] - stats.y_sum)) + stats.n_rows * float(b @ b)
    return max(fitted - 2.0 * crossed + stats.y_sq + shift, 0.0)


def explained_fraction(residual: float, energy: float) -> float:
    """1 - residual / energy; when energy == 0: 1.0 if residual == 0 else 0.0."""
    if energy == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / energy


def explained(stats: ConsumerStats, kept: np.ndarray, fit: Refit) -> float:
    """Fraction of the target's (uncentered) energy ||Y||^2 reproduced by the fit.

    1 - residual_energy / y_sq; with y_sq == 0 it is 1.0 for a zero residual, else 0.0.
    Can be negative on held-out statistics when the fit is worse than predicting zero.
    """
    return explained_fraction(residual_energy(stats, kept, fit), stats.y_sq)
