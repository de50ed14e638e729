"""Refit shrunk toward an anchor, its strength chosen from the data (METHOD.md sec. 9).

For one consumer and kept columns S (B, Y centered when bias compensation) and an anchor W0
(len(S) * block, m), with R = Y - B_S W0 the residual of the anchor itself:

    W'(lam) = argmin ||B_S W' - Y||^2 + lam ||W' - W0||^2 = W0 + D(lam),
    D(lam)  = argmin ||B_S D - R||^2 + lam ||D||^2 = V diag(rho / s) Z,

where B_S^T B_S = V diag(s) V^T (eigenvalues at or below the relative tolerance dropped),
Z = V^T B_S^T R and rho = s / (s + lam) in [0, 1] is how far each eigen-direction moves from W0.
lam = 0 is the least-squares refit nearest W0 (the plain refit when B_S has full column rank),
lam = inf keeps W0 (the intercept is still re-fitted with bias compensation). Everything comes
from the Gram statistics (or, in row form, an SVD of B_S); once decomposed, any lam is O(s m).

Anchors (:data:`ANCHORS`):

- ``original``: W_S, the original weight rows of the kept channels (lam = inf: no refit); the
  default of consumers with block 1 (Gemm/MatMul on features);
- ``channel-regression``: W_S + (M kron I_block) W_R, where M (:func:`map_regression`) regresses
  each removed channel's map on the kept channels' maps, one coefficient per pair of channels
  shared by every pixel (Gm: :meth:`~.stats.ConsumerStats.map_gram`), with its own ridge toward 0
  (toward ``original``) chosen by cross-validation. It rests on N * block pixel rows for
  len(S) * (n - len(S)) unknowns, where the full refit has N rows for len(S) * block * m: with few
  samples it is the better-determined guess. The default of consumers with block > 1 (Conv, and Gemm after a
  Flatten); with block 1 it would be the plain refit itself.

The anchor is not chosen by comparing GCV scores: the channel regression is fitted on the same
rows, so its in-sample residual would flatter it. lam is chosen per consumer by generalized
cross-validation (GCV) on the rows of the statistics:

    GCV(lam) = RSS(lam) / (1 - (dof(lam) + c) / N)^2,
    RSS(lam) = ||R||^2 - sum_i ||Z_i||^2 rho_i (2 - rho_i) / s_i,   dof(lam) = sum_i rho_i,

with c = 1 for the intercept under bias compensation, over lam in :data:`LAMBDA_GRID` times the
mean eigenvalue, and lam = inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .parallel import all_cores
from .linalg import psd_solve, psd_tolerance
from .refit import Refit, Strength, dual_ridge, kept_columns
from .stats import ConsumerStats

SHRINK = ("cv", "none", "refit", "auto")
"""Refit modes: ``none``: least squares with the ridge toward zero (:func:`~.refit.refit`);
``refit``: shrunk toward an anchor, strength chosen by GCV (:func:`shrink_refit`);
``auto``: that refit, a greedy whose ridge pulls toward the original weights, and groups with
fewer samples than channels ranked by weight norm (``select_group``); ``cv``: per consumer,
``none`` or ``refit``, whichever has the lower cross-validated residual where the statistics
come in folds (:func:`~onnx_subprune.select.cross_validated_choice`), else ``none``."""

SHRUNK = ("refit", "auto")
"""The modes whose refit is :func:`shrink_refit`."""

ANCHORS = ("original", "channel-regression")
"""What the refit is shrunk toward (see the module docstring)."""

LAMBDA_GRID = np.logspace(-6.0, 4.0, 41)
"""Candidate lam / mean eigenvalue of B_S^T B_S tried by GCV (besides inf)."""

MAP_FOLDS = 5
"""Folds of the channel regression's cross-validation on row-form statistics that were not
summed from cross-validation folds of their own (:func:`_map_folds`)."""


@dataclass(frozen=True, eq=False)
class Spectrum:
    """The shrunk least-squares problem toward one anchor, in eigen-coordinates.

    ``basis`` (s, p): eigenvectors V of B_S^T B_S with eigenvalue above the tolerance;
    ``values`` (p,): those eigenvalues s; ``proj`` (p, m): Z = V^T B_S^T R;
    ``residual_sq``: ||R||_F^2, the residual of the anchor; ``rows``: N;
    ``intercept``: the problem is centered (one more fitted parameter per output).
    """

    basis: np.ndarray
    values: np.ndarray
    proj: np.ndarray
    residual_sq: float
    rows: int
    intercept: bool

    def _rho(self, lam: np.ndarray) -> np.ndarray:
        """rho (len(lam), p) = s / (s + lam) for each lam (inf gives 0)."""
        return self.values / (self.values + np.asarray(lam, dtype=np.float64)[:, None])

    def correction(self, lam: float) -> np.ndarray:
        """D(lam) (s, m): W'(lam) - W0."""
        rho = self._rho(np.array([lam]))[0]
        return self.basis @ ((rho / self.values)[:, None] * self.proj)

    def rss(self, lam: np.ndarray) -> np.ndarray:
        """||B_S D(lam) - R||^2 (len(lam),) on the statistics' own rows, clamped at 0."""
        rho = self._rho(lam)
        gain = np.sum(self.proj * self.proj, axis=1) / self.values
        return np.maximum(self.residual_sq - (rho * (2.0 - rho)) @ gain, 0.0)

    def dof(self, lam: np.ndarray) -> np.ndarray:
        """Effective number of fitted parameters per output (len(lam),): sum of rho."""
        return self._rho(lam).sum(axis=1)

    def gcv(self, lam: np.ndarray) -> np.ndarray:
        """GCV score (len(lam),); inf where the fit has as many parameters as rows."""
        free = 1.0 - (self.dof(lam) + float(self.intercept)) / self.rows
        score = np.full(len(lam), np.inf)
        np.divide(self.rss(lam), free * free, out=score, where=free > 0)
        return score

    def lambdas(self) -> np.ndarray:
        """Candidate lam: inf, then :data:`LAMBDA_GRID` times the mean eigenvalue, descending
        (only inf when B_S has no eigenvalue above the tolerance)."""
        if self.values.size == 0:
            return np.array([np.inf])
        return np.concatenate([[np.inf], LAMBDA_GRID[::-1] * float(np.mean(self.values))])

    def best_lambda(self) -> float:
        """The candidate of :meth:`lambdas` minimizing GCV; ties go to the larger lam."""
        lams = self.lambdas()
        return float(lams[int(np.argmin(self.gcv(lams)))])


def _squared_svd(design: np.ndarray, tol: float, kernel: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The singular triplets of ``design`` (N, s) whose squared singular value exceeds ``tol``:
    (sigma^2 (r,), left vectors (N, r), right vectors (s, r)), from the eigen-decomposition of
    the smaller of its two Gram matrices (the tolerance is on the squared scale anyway); several
    times faster than a thin SVD when N and s are in the thousands (ResNet-50's last stage).
    ``kernel``: design design^T (N, N) when already formed (N <= s)."""
    if design.shape[0] > design.shape[1]:  # the triplets of the transpose, sides swapped
        values, right, left = _squared_svd(design.T, tol)
        return values, left, right
    small, large = design.shape
    with all_cores(2.0 * small * small * large + 10.0 * small**3):
        values, left = np.linalg.eigh(design @ design.T if kernel is None else kernel)
    keep = values > tol
    values, left = values[keep], left[:, keep]
    return values, left, (design.T @ left) / np.sqrt(values)


def spectrum(stats: ConsumerStats, kept: np.ndarray, anchor: np.ndarray, *, bias_compensation: bool) -> Spectrum:
    """The :class:`Spectrum` of shrinking the ``kept`` channels' weights toward ``anchor``
    (len(kept) * block, m), centered when ``bias_compensation``. Row form: the SVD of B_S (N, s)
    (:func:`_squared_svd`); Gram form: eigh of G_SS."""
    cols = kept_columns(stats, kept)
    centered = bias_compensation
    tol = psd_tolerance(stats.gram_diag(centered))
    if stats.is_row_form:
        if stats.n_rows <= cols.size:  # the N x N kernel is the smaller Gram matrix, shared with the fits
            design, targets, kernel = stats.dual(centered, cols)
        else:
            (design, targets), kernel = stats.row_matrices(centered, cols), None
        residual = targets - design @ anchor
        values, left, basis = _squared_svd(design, tol, kernel)
        proj = np.sqrt(values)[:, None] * (left.T @ residual)
        residual_sq = float(np.sum(residual * residual))
    else:
        gram, cross = stats.gram_matrix(centered, cols), stats.cross_matrix(centered, cols)
        fitted = gram @ anchor
        residual_sq = stats.target_energy(centered) - float(np.sum(anchor * (2.0 * cross - fitted)))
        eigenvalues, vectors = np.linalg.eigh(gram)
        keep = eigenvalues > tol
        values, basis = eigenvalues[keep], vectors[:, keep]
        proj = basis.T @ (cross - fitted)
    return Spectrum(basis=basis, values=values, proj=proj, residual_sq=max(residual_sq, 0.0),
                    rows=stats.n_rows, intercept=centered)


def map_regression(stats: ConsumerStats, kept: np.ndarray, *, bias_compensation: bool,
                   lam: float | None = None) -> tuple[np.ndarray, float]:
    """(M, lam): M (len(kept), n - len(kept)) regresses each removed channel's map on the kept
    channels' maps over the N * block pixel rows of the channel map Gram Gm
    (:meth:`~.stats.ConsumerStats.map_gram`, centered when ``bias_compensation``), with a ridge
    ``lam`` toward 0 (toward the ``original`` anchor); None: chosen from the lam of
    :meth:`Spectrum.lambdas` as follows.

    Gram form (N >= d: many rows per coefficient) chooses it by GCV on the pixel rows. Row form
    (N < d) by cross-validation over the statistics' cross-validation folds, or where it has
    none over :data:`MAP_FOLDS` contiguous blocks of rows (:func:`_map_folds`): either way the
    folds split by sample, and the pixels of one sample, strongly correlated, never both fit
    and score a fold (with GCV, 8 images of 3 x 3 pixels for 64 kept channels were read as 72
    independent rows and the anchor came out 25x the original weights). Every fold's products
    come from one pass over the rows (:meth:`~.stats.ConsumerStats.map_products`).
    """
    removed = np.setdiff1d(np.arange(stats.n_channels), kept)
    gram = stats.map_gram(bias_compensation)
    tol = psd_tolerance(np.diag(gram))
    eigenvalues, vectors = np.linalg.eigh(gram[np.ix_(kept, kept)])
    keep = eigenvalues > tol
    spec = Spectrum(basis=vectors[:, keep], values=eigenvalues[keep],
                    proj=vectors[:, keep].T @ gram[np.ix_(kept, removed)],
                    residual_sq=float(np.diag(gram)[removed].sum()),
                    rows=stats.n_rows * stats.block, intercept=bias_compensation)
    if lam is None and (not stats.is_row_form or stats.n_rows < 2):
        lam = spec.best_lambda()
    elif lam is None:
        lams = spec.lambdas()
        mean = stats.mean_b if bias_compensation else None
        tests = (_part_map_gram(part, mean) for part in _map_folds(stats))
        errors = sum(_held_out_error(gram - test, test, kept, removed, lams, tol) for test in tests)
        lam = float(lams[int(np.argmin(errors))])
    return spec.correction(lam), lam


def _map_folds(stats: ConsumerStats) -> tuple[ConsumerStats, ...]:
    """The row sets the channel regression is cross-validated over: the statistics' own
    :meth:`~.stats.ConsumerStats.parts` (the cross-validation folds, split by sample) when
    there are several, else :data:`MAP_FOLDS` contiguous blocks of rows (in sample order)."""
    parts = stats.parts()
    if len(parts) > 1:
        return parts
    blocks = np.array_split(np.arange(stats.n_rows), min(MAP_FOLDS, stats.n_rows))
    return tuple(ConsumerStats.from_rows(stats.rows[block], stats.targets[block], stats.weight, stats.block)
                 for block in blocks)


def _part_map_gram(part: ConsumerStats, mean: np.ndarray | None) -> np.ndarray:
    """The channel map Gram matrix (n, n) of ``part``'s rows, centered on ``mean`` (d,) (the
    whole set's column means) when given: U - S M^T - M S^T + N_p M M^T, with U the part's
    uncentered products, S (n, block) its column sums and M (n, block) the mean, offset by
    offset."""
    test = part.map_products().copy()
    if mean is not None:
        sums, mu = part.b_sum.reshape(part.n_channels, part.block), mean.reshape(part.n_channels, part.block)
        mixed = sums @ mu.T
        test -= mixed + mixed.T
        test += part.n_rows * (mu @ mu.T)
    return test


def _held_out_error(
    train: np.ndarray, test: np.ndarray, kept: np.ndarray, removed: np.ndarray, lams: np.ndarray, tol: float
) -> np.ndarray:
    """||X_R - X_S M(lam)||^2 (len(lam),) on the pixels of channel map Gram ``test`` (n, n), M(lam)
    the ridge regression fitted on ``train`` (n, n): tr(T_RR) - 2 tr(M^T T_SR) + tr(M^T T_SS M)."""
    eigenvalues, vectors = np.linalg.eigh(train[np.ix_(kept, kept)])
    keep = eigenvalues > tol
    values, basis = eigenvalues[keep], vectors[:, keep]
    fitted = basis.T @ train[np.ix_(kept, removed)]
    weights = 1.0 / (values + lams[:, None])
    crossed = weights @ np.sum(fitted * (basis.T @ test[np.ix_(kept, removed)]), axis=1)
    quadratic = (basis.T @ test[np.ix_(kept, kept)] @ basis) * (fitted @ fitted.T)
    spread = np.einsum("li,ij,lj->l", weights, quadratic, weights)
    return float(np.diag(test)[removed].sum()) - 2.0 * crossed + spread


def channel_regression_anchor(
    stats: ConsumerStats, kept: np.ndarray, *, bias_compensation: bool, lam: float | None = None
) -> tuple[np.ndarray, float]:
    """(W_S + (M kron I_block) W_R (len(kept) * block, m), lam) with M from
    :func:`map_regression` at ``lam`` (None: chosen there); W_S when every channel is kept."""
    n, r, m = stats.n_channels, stats.block, stats.m
    kept = np.asarray(kept, dtype=np.int64)
    removed = np.setdiff1d(np.arange(n), kept)
    weight = stats.weight.reshape(n, r, m)
    coef, lam = map_regression(stats, kept, bias_compensation=bias_compensation, lam=lam)
    mapped = coef @ weight[removed].reshape(removed.size, r * m)  # one BLAS product; an einsum is ~10x slower
    return (weight[kept].reshape(kept.size, r * m) + mapped).reshape(kept.size * r, m), lam


def default_anchor(stats: ConsumerStats) -> str:
    """``channel-regression`` for consumers with block > 1, else ``original``."""
    return "channel-regression" if stats.block > 1 else "original"


def anchor_weight(stats: ConsumerStats, kept: np.ndarray, anchor: str, *, bias_compensation: bool) -> np.ndarray:
    """The anchor W0 (len(kept) * block, m) named ``anchor`` (one of :data:`ANCHORS`)."""
    return _anchor(stats, kept, anchor, bias_compensation, None)[0]


def _anchor(stats: ConsumerStats, kept: np.ndarray, anchor: str, bias_compensation: bool,
            map_lam: float | None) -> tuple[np.ndarray, float | None]:
    """(W0, the channel regression's lam or None): :func:`anchor_weight`, the channel regression
    at ``map_lam`` when given."""
    if anchor == "original":
        return stats.weight[kept_columns(stats, kept)], None
    if anchor == "channel-regression":
        return channel_regression_anchor(stats, kept, bias_compensation=bias_compensation, lam=map_lam)
    raise ValueError(f"unknown anchor {anchor!r}; expected one of {', '.join(ANCHORS)}")


def correction_at(stats: ConsumerStats, kept: np.ndarray, anchor: np.ndarray, lam: float, *,
                  bias_compensation: bool) -> np.ndarray:
    """D(lam) (len(kept) * block, m) = argmin ||B_S D - R||^2 + lam ||D||^2, R = Y - B_S W0, by
    one solve: the normal equations (Cholesky; the minimum-norm pseudo-inverse when singular),
    or in the dual, D = B_S^T (B_S B_S^T + lam I)^+ R, for row-form statistics with more kept
    columns than rows. The same D as :meth:`Spectrum.correction` without an eigendecomposition."""
    if np.isinf(lam):
        return np.zeros_like(anchor)
    cols, centered = kept_columns(stats, kept), bias_compensation
    tol = psd_tolerance(stats.gram_diag(centered))
    if stats.is_row_form and cols.size > stats.n_rows:
        return dual_ridge(stats, centered, cols, lam, tol, anchor)
    gram = stats.gram_matrix(centered, cols)
    rhs = stats.cross_matrix(centered, cols) - gram @ anchor
    gram[np.diag_indices_from(gram)] += lam
    return psd_solve(gram, rhs, tol)


def shrink_refit(
    stats: ConsumerStats,
    kept: np.ndarray,
    *,
    lam: float | None = None,
    anchor: str | None = None,
    bias_compensation: bool = True,
    strength: Strength | None = None,
) -> Refit:
    """W' = argmin ||B_S W' (+ 1 b^T) - Y||^2 + lam ||W' - W0||^2 over the kept columns S.

    ``anchor``: the name of W0 (one of :data:`ANCHORS`; None: :func:`default_anchor`);
    ``lam``: absolute strength in [0, inf] (None: chosen by GCV, ties to the larger lam).
    ``strength``: instead of both, the :class:`~.refit.Strength` of another fit (its anchor, and
    its lam and channel-regression lam scaled to these statistics' rows): how a
    cross-validation fold is refitted as the whole set was, by one solve per consumer. With
    bias compensation ``bias_shift`` = ybar - W'^T mu_S (the intercept is not shrunk), else
    zeros. ``weight`` (len(kept) * block, m); the returned ``strength`` is the one used.
    """
    if lam is not None and not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    cols = kept_columns(stats, kept)
    map_lam = None
    if strength is not None:
        scale = stats.n_rows / strength.rows
        anchor, lam = strength.anchor, strength.lam * scale
        map_lam = None if strength.map_lam is None else strength.map_lam * scale
    anchor = anchor or default_anchor(stats)
    w0, map_lam = _anchor(stats, kept, anchor, bias_compensation, map_lam)
    if lam is None:
        spec = spectrum(stats, kept, w0, bias_compensation=bias_compensation)
        lam = spec.best_lambda()
        weight = w0 + spec.correction(lam)
    else:
        weight = w0 + correction_at(stats, kept, w0, lam, bias_compensation=bias_compensation)
    if bias_compensation:
        bias_shift = stats.mean_y - weight.T @ stats.mean_b[cols]
    else:
        bias_shift = np.zeros(stats.m)
    return Refit(weight=weight, bias_shift=bias_shift,
                 strength=Strength(anchor=anchor, lam=lam, map_lam=map_lam, rows=stats.n_rows))
