"""Slow, obviously-correct reference for the greedy selection, working on raw rows.

Every candidate is scored by solving ``numpy.linalg.lstsq`` on B_S from scratch, so it is O(n k)
least-squares solves: use it only to validate :func:`~onnx_subprune.select.greedy_select` (tests)
and to measure its speed-up (tools/bench_selector.py). It shares no code with the fast path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg


def lstsq_residual(
    rows: np.ndarray,
    targets: np.ndarray,
    cols: np.ndarray,
    *,
    lam: float = 0.0,
    intercept: bool = True,
    driver: str = "numpy",
) -> float:
    """min ||B[:, cols] W + 1 b^T - Y||^2 + lam ||W||^2 by a dense least-squares solve.

    ``rows`` B (N, d), ``targets`` Y (N, m). The intercept b is present only when ``intercept``
    and is not penalized; the ridge appends sqrt(lam) I rows to B_S and zero rows to Y.
    ``driver``: "numpy" (``numpy.linalg.lstsq``) or a ``scipy.linalg.lstsq`` LAPACK driver name
    ("gelsy", faster, for benchmarks).
    """
    n_rows = rows.shape[0]
    design = rows[:, cols]
    if lam > 0:
        design = np.vstack([design, np.sqrt(lam) * np.eye(len(cols))])
    target = np.vstack([targets, np.zeros((design.shape[0] - n_rows, targets.shape[1]))])
    if intercept:
        ones = np.zeros((design.shape[0], 1))
        ones[:n_rows] = 1.0
        design = np.hstack([design, ones])
    if design.shape[1] == 0:
        return float(np.sum(target * target))
    if driver == "numpy":
        coef = np.linalg.lstsq(design, target, rcond=None)[0]
    else:
        coef = scipy.linalg.lstsq(design, target, lapack_driver=driver, check_finite=False)[0]
    diff = design @ coef - target
    return float(np.sum(diff * diff))


def ridge_lambda(rows: np.ndarray, ridge: float, centered: bool) -> float:
    """ridge * mean column energy of B (N, d), columns centered when ``centered``."""
    x = rows - rows.mean(axis=0) if centered else rows
    return ridge * float(np.mean(np.sum(x * x, axis=0)))


def naive_greedy(
    problems: Sequence[tuple[np.ndarray, np.ndarray]],
    block: int,
    k: int,
    *,
    ridge: float = 0.0,
    bias_compensation: bool = True,
    driver: str = "numpy",
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy over consumers ``problems`` = [(B (N_i, d), Y (N_i, m_i)), ...] sharing n channels.

    Returns (order (k,), gains (k,)): gains are decreases of the summed least-squares residual
    (ridge-penalized, with an intercept when ``bias_compensation``); ties -> lowest index.
    ``driver``: see :func:`lstsq_residual`.
    """
    n = problems[0][0].shape[1] // block
    lams = [ridge_lambda(b, ridge, bias_compensation) for b, _ in problems]

    def residual(channels: list[int]) -> float:
        cols = (np.asarray(channels, dtype=np.int64)[:, None] * block + np.arange(block)).ravel()
        return sum(
            lstsq_residual(b, y, cols, lam=lam, intercept=bias_compensation, driver=driver)
            for (b, y), lam in zip(problems, lams)
        )

    order: list[int] = []
    gains: list[float] = []
    current = residual(order)
    for _ in range(k):
        candidates = [j for j in range(n) if j not in order]
        scores = [residual(order + [j]) for j in candidates]
        best = int(np.argmin(scores))
        order.append(candidates[best])
        gains.append(current - scores[best])
        current = scores[best]
    return np.asarray(order), np.asarray(gains)
