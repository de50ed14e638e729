"""Refit shrunk toward an anchor, strength and anchor chosen from the data (METHOD.md sec. 9).

For one consumer and kept columns S (B, Y centered when bias compensation) and an anchor W0
(len(S) * block, m), with R = Y - B_S W0 the residual of the anchor itself:

    W'(lam) = argmin ||B_S W' - Y||^2 + lam ||W' - W0||^2 = W0 + D(lam),
    D(lam)  = argmin ||B_S D - R||^2 + lam ||D||^2 = V diag(rho / s) Z,

where B_S^T B_S = V diag(s) V^T (eigenvalues at or below the relative tolerance dropped),
Z = V^T B_S^T R and rho = s / (s + lam) in [0, 1] is how far each eigen-direction moves from W0.
lam = 0 is the least-squares refit nearest W0 (the plain refit when B_S has full column rank),
lam = inf keeps W0 (the intercept is still re-fitted with bias compensation). Everything comes
from the Gram statistics (or, in row form, an SVD of B_S), and one eigen-decomposition serves
every anchor and lam.

Anchors (:data:`ANCHORS`):

- ``original``: W_S, the original weight rows of the kept channels (lam = inf: no refit);
- ``channel-regression`` (consumers with block > 1, i.e. Conv and Flatten consumers):
  W_S + (M kron I_block) W_R, where M = Gm_SS^+ Gm_SR regresses each removed channel's map on the
  kept channels' maps with one coefficient per pair of channels, shared by every pixel
  (Gm: :meth:`~.stats.ConsumerStats.map_gram`). It is estimated from N * block rows for
  len(S) * (n - len(S)) unknowns, where the full refit has N rows for len(S) * block * m: with
  few samples it is the better-determined guess.

Generalized cross-validation (GCV) on the rows of the statistics picks the anchor and lam:

    GCV(lam) = RSS(lam) / (1 - (dof(lam) + c) / N)^2,
    RSS(lam) = ||R||^2 - sum_i ||Z_i||^2 rho_i (2 - rho_i) / s_i,   dof(lam) = sum_i rho_i,

with c = 1 for the intercept under bias compensation, over lam in :data:`LAMBDA_GRID` times the
mean eigenvalue, and lam = inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linalg import psd_solve, psd_tolerance
from .refit import Refit, kept_columns
from .stats import ConsumerStats

SHRINK = ("none", "refit", "auto")
"""Refit modes: ``none``: least squares with the ridge toward zero (:func:`~.refit.refit`);
``refit``: shrunk toward an anchor chosen with its strength by GCV (:func:`shrink_refit`);
``auto``: that refit, and a greedy selection whose ridge pulls toward the original weights."""

ANCHORS = ("original", "channel-regression")
"""What the refit is shrunk toward (see the module docstring)."""

LAMBDA_GRID = np.logspace(-6.0, 4.0, 41)
"""Candidate lam / mean eigenvalue of B_S^T B_S tried by GCV (besides inf)."""


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


class KeptProblem:
    """The eigen-decomposition of B_S^T B_S for a consumer's kept columns, reused by every anchor.

    Row form: thin SVD of B_S (N, s); Gram form: eigh of G_SS. Centered when ``centered``.
    """

    def __init__(self, stats: ConsumerStats, cols: np.ndarray, centered: bool) -> None:
        self.rows, self.centered = stats.n_rows, centered
        tol = psd_tolerance(stats.gram_diag(centered))
        if stats.is_row_form:
            self.design, self.targets = stats.row_matrices(centered, cols)
            left, sigma, right_t = np.linalg.svd(self.design, full_matrices=False)
            keep = sigma * sigma > tol
            self.left, self.sigma = left[:, keep], sigma[keep]
            self.values, self.basis = self.sigma**2, right_t[keep].T
        else:
            self.design = None
            self.gram, self.cross = stats.gram_matrix(centered, cols), stats.cross_matrix(centered, cols)
            self.energy = stats.target_energy(centered)
            eigenvalues, vectors = np.linalg.eigh(self.gram)
            keep = eigenvalues > tol
            self.values, self.basis = eigenvalues[keep], vectors[:, keep]

    def toward(self, anchor: np.ndarray) -> Spectrum:
        """The :class:`Spectrum` of shrinking toward ``anchor`` (s, m)."""
        if self.design is not None:
            residual = self.targets - self.design @ anchor
            proj = self.sigma[:, None] * (self.left.T @ residual)
            residual_sq = float(np.sum(residual * residual))
        else:
            fitted = self.gram @ anchor
            residual_sq = self.energy - float(np.sum(anchor * (2.0 * self.cross - fitted)))
            proj = self.basis.T @ (self.cross - fitted)
        return Spectrum(basis=self.basis, values=self.values, proj=proj,
                        residual_sq=max(residual_sq, 0.0), rows=self.rows, intercept=self.centered)


def channel_regression_anchor(
    stats: ConsumerStats, kept: np.ndarray, *, bias_compensation: bool
) -> np.ndarray:
    """W_S + (M kron I_block) W_R (len(kept) * block, m), M = Gm_SS^+ Gm_SR (len(kept), n - len(kept))
    from the channel map Gram Gm (:meth:`~.stats.ConsumerStats.map_gram`, centered when
    ``bias_compensation``); W_S when every channel is kept."""
    n, r, m = stats.n_channels, stats.block, stats.m
    kept = np.asarray(kept, dtype=np.int64)
    removed = np.setdiff1d(np.arange(n), kept)
    weight = stats.weight.reshape(n, r, m)
    gram = stats.map_gram(bias_compensation)
    coef = psd_solve(gram[np.ix_(kept, kept)], gram[np.ix_(kept, removed)], psd_tolerance(np.diag(gram)))
    return (weight[kept] + np.einsum("kc,com->kom", coef, weight[removed])).reshape(kept.size * r, m)


def anchors(stats: ConsumerStats, kept: np.ndarray, *, bias_compensation: bool) -> dict[str, np.ndarray]:
    """Candidate anchors (len(kept) * block, m) by name: ``original`` always,
    ``channel-regression`` when block > 1 (with block 1 it is the plain refit itself)."""
    found = {"original": stats.weight[kept_columns(stats, kept)]}
    if stats.block > 1:
        found["channel-regression"] = channel_regression_anchor(
            stats, kept, bias_compensation=bias_compensation)
    return found


def shrink_refit(
    stats: ConsumerStats,
    kept: np.ndarray,
    *,
    lam: float | None = None,
    anchor: str | None = None,
    bias_compensation: bool = True,
) -> Refit:
    """W' = argmin ||B_S W' (+ 1 b^T) - Y||^2 + lam ||W' - W0||^2 over the kept columns S.

    ``anchor``: the name of W0 (one of :data:`ANCHORS`); ``lam``: absolute strength in
    [0, inf]. Either left None is chosen by GCV, jointly (ties go to ``original`` and the larger
    lam). With bias compensation ``bias_shift`` = ybar - W'^T mu_S (the intercept is not shrunk),
    else zeros. ``weight`` (len(kept) * block, m).
    """
    if lam is not None and not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    cols = kept_columns(stats, kept)
    candidates = anchors(stats, kept, bias_compensation=bias_compensation)
    if anchor is not None:
        if anchor not in candidates:
            raise ValueError(f"anchor {anchor!r} is not available here; expected one of {', '.join(candidates)}")
        candidates = {anchor: candidates[anchor]}
    problem = KeptProblem(stats, cols, bias_compensation)
    best_score, weight = np.inf, None
    for w0 in candidates.values():
        spec = problem.toward(w0)
        lams = spec.lambdas() if lam is None else np.array([lam])
        scores = spec.gcv(lams)
        i = int(np.argmin(scores))
        if weight is None or scores[i] < best_score:
            best_score, weight = scores[i], w0 + spec.correction(float(lams[i]))
    if bias_compensation:
        bias_shift = stats.mean_y - weight.T @ stats.mean_b[cols]
    else:
        bias_shift = np.zeros(stats.m)
    return Refit(weight=weight, bias_shift=bias_shift)
