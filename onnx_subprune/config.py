"""Options of a pruning run."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SubpruneError

GREEDY = ("asym", "seq", "layer")
BASELINES = ("weight-norm", "activation-norm", "random")
METHODS = GREEDY + BASELINES


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    keep: fraction of each group's channels kept (max(1, round(keep * n)), halves rounded up).
    method: asym | seq | layer (greedy selection, statistics captured as the variant says) or a
        baseline ranking (weight-norm | activation-norm | random; statistics as for asym).
    refit: re-fit consumer weights by least squares (else keep their original kept rows).
    bias_compensation: fit an intercept (consumer bias absorbs removed channels' means).
    ridge: ridge relative to the mean diagonal of the Gram matrix, for selection and refit.
    holdout: fraction of calibration samples kept out of the statistics, to report
        held-out explained variance.
    batch_size: samples per onnxruntime run.  seed: sample split and random baseline.
    device: auto | cpu | cuda.  verify_samples: samples used for the final output check.
    """

    keep: float = 0.5
    method: str = "asym"
    refit: bool = True
    bias_compensation: bool = True
    ridge: float = 1e-3
    holdout: float = 0.2
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    verify_samples: int = 512

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise SubpruneError(f"--keep must be in (0, 1], got {self.keep}")
        if self.method not in METHODS:
            raise SubpruneError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.ridge < 0:
            raise SubpruneError(f"--ridge must be >= 0, got {self.ridge}")
        if not 0 <= self.holdout < 1:
            raise SubpruneError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.batch_size < 1:
            raise SubpruneError(f"--batch-size must be >= 1, got {self.batch_size}")

    @property
    def schedule(self) -> str:
        """How statistics are captured: the method's own variant, asym for the baselines."""
        return self.method if self.method in GREEDY else "asym"

    def kept_count(self, channels: int) -> int:
        """Channels kept in a group of ``channels``."""
        return max(1, min(channels, int(self.keep * channels + 0.5)))
