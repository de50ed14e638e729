"""Label-free sensitivity of the model's output to pruning each channel group alone.

For every group, statistics are captured once from the original model and the method's full
ranking is computed (for the greedy methods the greedy order, whose prefixes are the nested kept
sets, and its gains, which give the explained variance F(S_k)/||Y||^2 for every k at no extra
cost). The group alone is then pruned (with the run's refit) at a few counts and the relative
error of the model's final outputs is measured on held-out calibration samples; the pruned
model is the original with the group's consumers masked (:mod:`masked`: zero weights for the
removed channels, their weights inputs of one session per group), which computes the same
outputs without a rewritten model or a session per point. Between those
points the loss follows the greedy curve: the output error is taken proportional to
sqrt((F(S_n) - F(S_k))/||Y||^2), the layer's own relative residual left by the removed channels,
with a factor interpolated (in log space) between the measured points. That factor is how much the layer's error is amplified or
damped on its way to the outputs.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from .calibrate import GroupStats, Progress
from .choose import choose, current_positions, selection_threads
from .config import PruneConfig
from .files import write_atomic
from .masked import MaskedRunner
from .select import RANKERS, greedy_select, refit
from .select.stats import forget_caches
from .types import ChannelGroup, ConsumerUpdate, GroupPlan
from .verify import fidelity, output_error as one_output_error, predict

_TINY = 1e-12


@dataclass(frozen=True, eq=False)
class Curve:
    """Output error of the model with one group pruned, as a function of its kept count k.

    ``order``: the method's ranking; the kept set at k is ``order[:k]`` (nested in k).
    ``explained``: (n + 1,) F(S_k)/||Y||^2 on the calibration statistics for k = 0..n (greedy
    methods; None for the baselines). ``points``/``errors``: the measured counts and relative
    output errors (root mean square over the model's outputs).
    """

    group: str
    channels: int
    order: np.ndarray
    explained: np.ndarray | None
    points: tuple[int, ...]
    errors: tuple[float, ...]

    def kept(self, k: int) -> np.ndarray:
        """Sorted channels kept at ``k``."""
        return np.sort(self.order[:k])

    def _shape(self, k: int) -> float:
        if self.explained is None:
            return 1.0
        return math.sqrt(max(float(self.explained[-1] - self.explained[k]), 0.0))

    def loss(self, k: int) -> float:
        """Predicted relative output error with this group alone pruned to ``k`` channels."""
        if k >= self.channels or not self.points:
            return 0.0
        if k in self.points:
            return self.errors[self.points.index(k)]
        ratios = [math.log((e + _TINY) / (self._shape(p) + _TINY)) for p, e in zip(self.points, self.errors)]
        return self._shape(k) * math.exp(float(np.interp(k, self.points, ratios)))

    def to_json(self) -> dict:
        n = self.channels
        return {
            "producer": self.group,
            "channels": n,
            "points": [{"k": int(k), "fraction": k / n, "error": float(e),
                        "explained": None if self.explained is None else float(self.explained[k])}
                       for k, e in zip(self.points, self.errors)],
            "curve": {
                "k": list(range(1, n + 1)),
                "loss": [self.loss(k) for k in range(1, n + 1)],
                "explained": None if self.explained is None else [float(v) for v in self.explained[1:]],
            },
        }


def measure_points(channels: int, floor: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Counts at which a group's output error is measured: the floor and round(f * n) for each
    fraction (at least the floor), below n."""
    counts = {floor} | {max(floor, int(f * channels + 0.5)) for f in fractions}
    return tuple(sorted(k for k in counts if k < channels))


def ranking(group: ChannelGroup, stats: GroupStats, config: PruneConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Full ranking of a group's channels by ``config.method`` (statistics from the original
    model) and, for the greedy methods on a plain group, the explained fraction of the target
    energy for k = 0..n (None otherwise)."""
    n = group.channels
    if not RANKERS[config.method].greedy or current_positions(group, ()) is not None:
        order = choose(group, stats, n, config, refit=False).order
        return np.asarray(order, dtype=np.int64), None
    consumers = stats.calibration
    result = greedy_select(consumers, n, ridge=config.ridge, bias_compensation=config.bias_compensation)
    energy = sum(c.target_energy(config.bias_compensation) for c in consumers)
    explained = np.concatenate([[0.0], np.cumsum(result.gains)]) / max(energy, _TINY)
    return np.asarray(result.order, dtype=np.int64), np.clip(explained, 0.0, 1.0)


def group_plan(group: ChannelGroup, stats: GroupStats, order: np.ndarray, k: int,
               config: PruneConfig) -> GroupPlan:
    """The plan keeping the first ``k`` channels of ``order`` with the run's refit (or the
    original kept rows), the group alone pruned."""
    kept = np.sort(np.asarray(order[:k], dtype=np.int64))
    if current_positions(group, ()) is not None:
        chosen = choose(group, stats, k, config)
        kept, fits = chosen.kept, chosen.fits
    elif config.refit:
        fits = [refit(c, kept, ridge=config.ridge, bias_compensation=config.bias_compensation)
                for c in stats.calibration]
        forget_caches(stats.calibration)
    if not config.refit:
        updates = tuple(ConsumerUpdate(c.node) for c in group.consumers)
    else:
        updates = tuple(ConsumerUpdate(c.node, f.weight, f.bias_shift) for c, f in zip(group.consumers, fits))
    return GroupPlan(group, tuple(int(i) for i in kept), updates)


def output_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """Root mean square over outputs of their error (:func:`verify.output_error`: the relative
    error ||c - r|| / ||r||, channel-balanced where an output mixes scales)."""
    errors = [one_output_error(output) for output in fidelity(reference, candidate).values()]
    return float(np.sqrt(np.mean(np.square(errors))))


def measure_curves(model: onnx.ModelProto, groups: Sequence[ChannelGroup], stats: Sequence[GroupStats],
                   feeds: dict[str, np.ndarray], providers: list[str], batch_size: int,
                   floors: Sequence[int], config: PruneConfig,
                   progress: Progress | None = None) -> list[Curve]:
    """One :class:`Curve` per group; ``feeds`` are the samples the output error is measured on."""
    reference = predict(model, feeds, providers, batch_size)
    plan_points = [measure_points(g.channels, int(f), config.sensitivity_points) for g, f in zip(groups, floors)]
    total, done = sum(len(p) for p in plan_points), 0
    curves = []
    for group, group_stats, points in zip(groups, stats, plan_points):
        with selection_threads():
            order, explained = ranking(group, group_stats, config)
        runner = MaskedRunner(model, [group], providers)  # the other layers' weights stay constants
        plans = [group_plan(group, group_stats, order, k, config) for k in points]
        errors = [output_error(reference, outputs) for outputs in runner.outputs_each(feeds, batch_size, plans)]
        done += len(points)
        if progress:
            progress("sensitivity", done, total)
        curves.append(Curve(group.name, group.channels, order, explained, points, tuple(errors)))
    return curves


def plot_curves(curves: Sequence[Curve], path: str, title: str = "") -> None:
    """Write a PNG of every group's output error vs kept fraction (needs matplotlib)."""
    write_atomic(path, curves_png(curves, title), "plot")


def curves_png(curves: Sequence[Curve], title: str = "") -> bytes:
    """A PNG of every group's output error vs kept fraction (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for curve in curves:
        n = curve.channels
        ks = np.arange(1, n + 1)
        losses = np.array([curve.loss(int(k)) for k in ks])
        line, = axes.plot(ks[:-1] / n, np.maximum(losses[:-1], 1e-6), linewidth=1.2,
                          label=f"{curve.group} ({n})")
        axes.plot(np.array(curve.points) / n, np.maximum(curve.errors, 1e-6), "o",
                  color=line.get_color(), markersize=4)
    axes.set_yscale("log")
    axes.set_xlabel("kept fraction of the group's channels")
    axes.set_ylabel("relative output error (this group alone pruned)")
    axes.set_title(title or "sensitivity per channel group (dots: measured)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
