"""Typed reports of a pruning run; ``to_json()`` gives the JSON-ready dict the CLI writes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .errors import quote
from .types import Skipped
from .verify import SCALE_SPREAD, mixed_scale

LARGE_ERROR = 0.25
"""Relative output error from which the pruned model is flagged as far from the original."""

INACTIVE_SHARE = 0.25
"""Share of a group's channels inactive from which the calibration data is suspected."""

INACTIVE_MIN_GROUP = 8
"""Smallest group the inactive-channel warning looks at (one idle channel of two says little)."""

OVERFIT_GAP = 0.05
"""In-sample minus cross-validated explained variance of a group from which its refit is said to
overfit the calibration samples (and the in-sample output error to be optimistic)."""


def _plain(value: Any) -> Any:
    """JSON-ready copy: nested reports become dicts, NumPy scalars Python numbers."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Skipped):
        return vars(value)
    return value


class _Json:
    """``to_json()``: the fields in order, nested reports converted; None-valued fields named
    in ``_omit_none`` are left out."""

    _omit_none: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)
                if not (f.name in self._omit_none and getattr(self, f.name) is None)}


@dataclass
class GroupReport(_Json):
    """One pruned group: what was kept and how well the consumers' outputs are reproduced.

    ``explained`` / ``explained_holdout``: 1 - residual / ||Y||^2 on the calibration / held-out
    statistics (``fixed``) or cross-validated over folds of the calibration statistics
    (``cv-K``), as the run's ``samples["holdout_kind"]`` says; None with ``none``. ``producer``:
    the first producer; an input selection (``producers`` empty, the name ending in ":input")
    is named after its first consumer. ``rows`` /
    ``columns``: least-squares rows and (largest) columns. ``inactive``: channels that barely
    vary on the calibration data. Size fields: ``k`` kept of ``channels``
    (``fraction``), params and MACs of the tensors and layers whose size depends on the group;
    ``predicted_loss`` and ``curve`` where the sensitivity curves were measured.
    """

    _omit_none = ("curve",)

    group: str
    producer: str
    producers: list[str]
    consumers: list[str]
    channels: int
    kept: list[int]
    explained: float
    explained_holdout: float | None
    rows: int
    columns: int
    underdetermined: bool
    inactive: int
    seconds: float = 0.0
    k: int = 0
    fraction: float = 0.0
    params: int = 0
    macs: int = 0
    predicted_loss: float | None = None
    curve: dict | None = None

    def cost(self) -> float:
        """The group's share of the loss: its predicted output error where the sensitivity
        curves measured it, else its layer's unexplained residual sqrt(1 - F(S)/||Y||^2)."""
        if self.predicted_loss is not None:
            return float(self.predicted_loss)
        explained = self.explained_holdout if self.explained_holdout is not None else self.explained
        return float(np.sqrt(max(0.0, 1.0 - explained)))


@dataclass
class TargetReport(_Json):
    """A params/FLOPs target and how it was met (``achieved``: ratios of the written model,
    ``predicted``: the size model's params and MACs). ``allocation``: the allocation of the
    written model; ``compared``: allocation -> output error of the whole model pruned to it,
    when a measured allocation was checked against the uniform one (the lower error is
    written; None otherwise), measured on ``compared_on`` (samples, in words)."""

    params: float | None
    flops: float | None
    allocation: str
    min_keep: float
    round_to: int | None
    achieved: dict
    predicted: dict
    tolerated_loss: float | None
    uniform_fraction: float | None
    compared: dict | None = None
    compared_on: str | None = None


def verified_text(verified: dict) -> str:
    """The samples a pruned model was verified on (a report's ``verified_on``), in words: the
    calibration samples are said to be in-sample (the fit used them)."""
    text = f"{verified['samples']} {verified['set']} samples"
    return text + " (in-sample: the fit used them)" if verified["set"] == "calibration" else text


@dataclass
class PruneReport(_Json):
    """Everything a pruning run reports (``onnx-subprune prune --report``).

    ``samples``: ``calibration`` (samples the statistics come from), ``holdout`` (kept out of
    them) and ``holdout_kind``: what ``explained_holdout`` is measured on (``fixed``: the
    held-out samples; ``cv-K``: K cross-validation folds of the calibration samples; ``none``).
    ``verified_on``: the samples the output error is measured on (``set``: ``held-out``, or
    ``calibration`` when none are held out: in-sample)."""

    method: str
    keep: float | None
    refit: bool
    bias_compensation: bool
    ridge: float
    seed: int
    provider: str
    samples: dict
    groups: list[GroupReport]
    skipped: list[Skipped]
    params: dict
    macs: dict
    target: TargetReport | None
    outputs: dict
    output_error: float
    verified_on: dict
    seconds: dict
    warnings: list[str] = field(default_factory=list)
    run: dict | None = None
    """Provenance (:func:`api.provenance`): tool version, command line, paths and sha256 of the
    model, the calibration file and the written model."""

    _omit_none = ("run",)

    def find_warnings(self) -> list[str]:
        """One line per problem a user must hear of: a large output error, a refit that
        overfits few samples (cross-validated explained variance well below the in-sample one),
        calibration data that leaves many of a group's channels inactive."""
        lines = []
        error, verified = self.output_error, self.verified_on
        if error >= LARGE_ERROR:
            mixed = mixed_scale(self.outputs)
            what = ("relative error" if not mixed else
                    f"channel-balanced relative error of {', '.join(map(quote, mixed))}, whose channels differ "
                    f"in scale by over {SCALE_SPREAD:g}x, so the small ones (scores) are weighed alike")
            lines.append(f"the pruned model's outputs differ from the original's by {error:.3f} ({what} "
                         f"on {verified_text(verified)}): it may be unusable; "
                         f"keep more, or check that the calibration data looks like deployment inputs")
        overfit = [g for g in self.groups if self.samples.get("holdout_kind", "").startswith("cv")
                   and g.explained_holdout is not None and g.explained - g.explained_holdout >= OVERFIT_GAP]
        if overfit:
            worst = max(overfit, key=lambda g: g.explained - g.explained_holdout)
            lines.append(f"the refit overfits the {self.samples['calibration']} calibration samples in {len(overfit)} "
                         f"of {len(self.groups)} groups ({worst.group}: explained {worst.explained:.3f} in-sample, "
                         f"{worst.explained_holdout:.3f} cross-validated), so the output error {error:.3f} measured "
                         f"in-sample is optimistic; give more samples, --shrink auto, or --holdout 0.2 to measure it")
        idle = [g for g in self.groups
                if g.channels >= INACTIVE_MIN_GROUP and g.inactive >= INACTIVE_SHARE * g.channels]
        if idle:
            worst = ", ".join(f"{g.group} {g.inactive}/{g.channels}" for g in idle[:3])
            lines.append(f"the calibration data leaves many channels inactive in {len(idle)} of "
                         f"{len(self.groups)} groups ({worst}{', ...' if len(idle) > 3 else ''}): if deployment "
                         f"inputs look different, those channels will be missed")
        return lines

    def too_large(self, limit: float) -> str:
        """Why a result over the error limit ``limit`` is refused, naming the costliest groups."""
        verified = self.verified_on
        costs = sorted(((g.cost(), g.group) for g in self.groups), reverse=True)[:3]
        named = ", ".join(f"{name} ({cost:.3f})" for cost, name in costs)
        return (f"the pruned model's relative output error {self.output_error:.4f} on "
                f"{verified_text(verified)} exceeds the limit {limit:g}; "
                f"the groups that cost the most: {named}; nothing was written")


@dataclass
class PlannedGroupReport(_Json):
    """One group of a dry run: the kept count ``k`` (and ``kept`` channels a plan fixed), the
    size of its layers after pruning, and the predicted loss where curves were measured."""

    _omit_none = ("kept", "predicted_loss")

    group: str
    producer: str
    producers: list[str]
    consumers: list[str]
    channels: int
    k: int
    fraction: float
    params: int
    macs: int
    predicted_loss: float | None = None
    kept: list[int] | None = None


@dataclass
class PlanReport(_Json):
    """What ``prune --dry-run`` reports: the allocation and the size model's predicted params
    and MACs, nothing pruned. Like every report it is also a plan (``prune --plan``)."""

    _omit_none = ("target", "run")

    method: str
    keep: float | None
    groups: list[PlannedGroupReport]
    skipped: list[Skipped]
    params: dict
    macs: dict
    target: TargetReport | None
    dry_run: bool = True
    run: dict | None = None


@dataclass
class GroupSummary(_Json):
    """One channel group as ``analyze`` lists it: producers, consumers, channels and the ops
    its channels pass through."""

    group: str
    producer: str
    producers: list[str]
    consumers: list[str]
    channels: int
    through: list[str]


@dataclass
class AnalysisReport(_Json):
    """What ``analyze`` finds in a model: groups, skipped producers with reasons, the share of
    float params the groups reach (``coverage``), the model's params and MACs, and how many
    input selections are possible but not listed (``selectable``)."""

    model: str
    groups: list[GroupSummary]
    skipped: list[Skipped]
    coverage: dict
    params: int
    macs: int
    selectable: int = 0


@dataclass
class SensitivityReport(_Json):
    """Per-group sensitivity curves (``groups``: each curve's JSON with its error at each of
    ``fractions``), the samples they were measured on, and the run's settings."""

    _omit_none = ("model", "plot")

    method: str
    refit: bool
    bias_compensation: bool
    provider: str
    fractions: list[float]
    samples: dict
    groups: list[dict]
    skipped: list[Skipped]
    seconds: float
    model: str | None = None
    plot: str | None = None
