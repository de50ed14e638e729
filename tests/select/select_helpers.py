"""Random problems and statistics builders shared by the tests of onnx_subprune.select."""

from __future__ import annotations

import numpy as np

from onnx_subprune.select import ConsumerStats

FORMS = ("gram", "rows")


def random_problem(
    rng: np.random.Generator,
    n: int,
    block: int,
    rows: int,
    m: int,
    *,
    mixing: float = 0.0,
    offset: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B (rows, n*block), Y (rows, m), W (n*block, m)).

    B has nonzero column means (``offset``) and, with ``mixing`` > 0, correlated columns;
    Y = B W_true + noise + a constant, so both bias modes matter.
    """
    d = n * block
    b = rng.standard_normal((rows, d))
    if mixing:
        b = b @ (np.eye(d) + mixing * rng.standard_normal((d, d)) / np.sqrt(d))
    b += offset * rng.standard_normal(d)
    w = rng.standard_normal((d, m))
    y = b @ (w * rng.uniform(0.0, 1.0, size=(d, 1))) + rng.standard_normal((rows, m)) + 0.5
    return b, y, w


def make_stats(form: str, b: np.ndarray, y: np.ndarray, w: np.ndarray, block: int) -> ConsumerStats:
    """Statistics of (B, Y) with weight W in ``form`` ("gram" or "rows")."""
    if form == "rows":
        return ConsumerStats.from_rows(b, y, w, block)
    return ConsumerStats.from_gram(
        b.T @ b,
        b.T @ y,
        y_sq=float(np.sum(y * y)),
        b_sum=b.sum(axis=0),
        y_sum=y.sum(axis=0),
        n_rows=b.shape[0],
        weight=w,
        block=block,
    )


def columns(channels, block: int) -> np.ndarray:
    """Column indices of ``channels``, ``block`` columns each (written apart from the package)."""
    return np.array([j * block + i for j in channels for i in range(block)], dtype=int)
