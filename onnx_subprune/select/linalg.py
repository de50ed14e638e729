"""Small dense linear-algebra helpers shared by the greedy selection and the refit.

Every rank decision uses one relative tolerance, :data:`RTOL`, applied to the largest diagonal
entry of the (possibly centered) Gram matrix of a consumer: eigenvalues or Cholesky pivots at or
below ``RTOL * max(diag(G))`` are treated as zero. Nothing here ever forms a bare inverse.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .parallel import all_cores

RTOL = 1e-10
"""Relative tolerance of every rank decision (see the module docstring)."""


def psd_tolerance(diag: np.ndarray) -> float:
    """Absolute eigenvalue threshold for a PSD matrix with diagonal ``diag`` (d,).

    Returns ``RTOL * max(diag)``, floored at the smallest positive float so that an all-zero
    matrix still has a strictly positive threshold.
    """
    scale = float(np.max(diag, initial=0.0))
    return max(RTOL * scale, float(np.finfo(np.float64).tiny))


def psd_solve(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Minimum-norm solution X (s, m) of ``a X = b`` for symmetric PSD ``a`` (s, s), ``b`` (s, m).

    Uses a Cholesky factorization when every pivot exceeds ``tol``; otherwise (singular or badly
    conditioned ``a``) falls back to an eigen-decomposition pseudo-inverse that drops eigenvalues
    at or below ``tol``.
    """
    s = a.shape[0]
    with all_cores(s**3 / 3.0 + 2.0 * s * s * (b.shape[1] if b.ndim == 2 else 1)):
        try:
            factor = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
            if np.min(np.diag(factor[0])) ** 2 > tol:
                return scipy.linalg.cho_solve(factor, b, check_finite=False)
        except np.linalg.LinAlgError:
            pass
        w, e = scipy.linalg.eigh(a, check_finite=False)
        return e @ (pinv_values(w, tol)[:, None] * (e.T @ b))


def pinv_values(w: np.ndarray, tol: float) -> np.ndarray:
    """Reciprocals of the eigenvalues ``w`` (any shape), 0 where ``w <= tol``."""
    inv = np.zeros_like(w)
    np.divide(1.0, w, out=inv, where=w > tol)
    return inv


def compress_columns(x: np.ndarray) -> np.ndarray:
    """Return x' (p, min(p, q)) with ``x' x'^T == x x^T`` for x (p, q).

    The greedy gains depend on the cross statistics only through ``C C^T`` (or ``Y Y^T`` for rows),
    so targets wider than they are tall are replaced by this square factor (via QR of ``x^T``).
    """
    p, q = x.shape
    if q <= p:
        return x
    r = scipy.linalg.qr(x.T, mode="r", check_finite=False)[0]
    return np.ascontiguousarray(r[:p].T)


def project_off(basis: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x - P x`` for x (p, q), P the orthogonal projector on the column space of ``basis``
    (p, f): what least squares on ``basis`` leaves of each column of x. The space comes from a
    column-pivoted QR (rank: |R_ii| above lstsq's default cut, max(p, f) * eps * |R_00|), several
    times faster than an SVD-based lstsq with q right-hand sides."""
    if basis.size == 0:
        return x.copy()
    q_factor, r_factor, _ = scipy.linalg.qr(basis, mode="economic", pivoting=True, check_finite=False)
    diag = np.abs(np.diag(r_factor))
    rank = int(np.sum(diag > max(basis.shape) * np.finfo(basis.dtype).eps * diag[0])) if diag.size else 0
    q_factor = q_factor[:, :rank]
    return x - q_factor @ (q_factor.T @ x)


def subtract_product(target: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
    """``target -= left @ right`` in place, without a temporary of ``target``'s size.

    target (p, q) float64 or float32, C-contiguous; left (p, s); right (s, q), both rounded to
    ``target``'s precision. BLAS gemm updates ``target^T`` (F-contiguous, the same memory) as
    ``target^T - right^T left^T``; any other layout takes the plain numpy path.
    """
    gemm = {np.dtype(np.float64): scipy.linalg.blas.dgemm,
            np.dtype(np.float32): scipy.linalg.blas.sgemm}.get(target.dtype)
    if gemm is None or not target.flags.c_contiguous or target.size == 0:
        target -= left @ right
        return
    out = gemm(-1.0, np.asarray(right, target.dtype).T, np.asarray(left, target.dtype).T,
               beta=1.0, c=target.T, overwrite_c=True)
    if not np.shares_memory(out, target):  # BLAS had to copy: put the result back
        target[...] = out.T
