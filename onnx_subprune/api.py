"""File-level entry points used by the CLI: load, check, run, write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from . import runtime
from .analyze import analyze, coverage
from .calibrate import Progress
from .config import PruneConfig
from .data import check_inputs, check_labels, load_arrays
from .errors import SubpruneError
from .files import check_writable, write_atomic
from .graph import load_model, prepare, save_model
from .metrics import count_macs, count_params
from .pipeline import Log, PruneResult, prune, sensitivity
from .report import AnalysisReport, GroupSummary, SensitivityReport
from .verify import accuracy, fidelity, is_classifier, latency_ms, predict


def analyze_file(model_path: str | Path, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> AnalysisReport:
    """The channel groups and skipped producers of a model file, and the share of its float
    params the groups reach."""
    model = prepare(load_model(model_path))
    result = analyze(model, include, exclude)
    groups = [
        GroupSummary(group=g.name, producer=g.producers[0].node, producers=[p.node for p in g.producers],
                     consumers=[c.node for c in g.consumers], channels=g.channels,
                     through=[p.op for p in g.passthrough])
        for g in result.groups
    ]
    return AnalysisReport(model=str(model_path), groups=groups, skipped=list(result.skipped),
                          coverage=coverage(model, result), params=count_params(model),
                          macs=count_macs(model))


def prune_file(model_path: str | Path, output: str | Path, calib: str | Path, config: PruneConfig,
               report_path: str | Path | None = None, progress: Progress | None = None,
               log: Log | None = None) -> PruneResult:
    """Prune ``model_path`` with calibration data ``calib`` and write ``output`` (and the report).

    Every input is checked before work starts; files are written atomically at the end.
    """
    for path in (output, report_path):
        if path is not None:
            check_writable(path)
    model = load_model(model_path)
    feeds = check_inputs(load_arrays(calib), model, f"calibration data {calib}")
    result = prune(model, feeds, config, progress, log)
    save_model(result.model, output)
    if report_path is not None:
        write_json(result.report.to_json(), report_path)
    return result


def sensitivity_file(model_path: str | Path, calib: str | Path, config: PruneConfig,
                     plot_path: str | Path | None = None, progress: Progress | None = None,
                     log: Log | None = None) -> SensitivityReport:
    """Per-group sensitivity curves of ``model_path`` on ``calib``; with ``plot_path``, also a PNG
    (needs matplotlib). Everything is checked before the work starts."""
    if plot_path is not None:
        check_writable(plot_path)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SubpruneError("plotting needs matplotlib, which is not installed: "
                                "pip install 'onnx-subprune[plot]'") from None
    model = load_model(model_path)
    feeds = check_inputs(load_arrays(calib), model, f"calibration data {calib}")
    report, curves = sensitivity(model, feeds, config, progress, log)
    report.model = str(model_path)
    if plot_path is not None:
        from .sensitivity import plot_curves

        plot_curves(curves, str(plot_path), f"sensitivity of {Path(model_path).name}")
        report.plot = str(plot_path)
    return report


def evaluate_files(original_path: str | Path, pruned_path: str | Path, data_path: str | Path,
                   labels: str | None = None, device: str = "auto", batch_size: int = 64,
                   log: Log | None = None) -> dict:
    """Fidelity, accuracy (with ``labels``), size and latency of a pruned model vs the original."""
    original, pruned = load_model(original_path), load_model(pruned_path)
    arrays = load_arrays(data_path)
    if labels is not None and labels not in arrays:
        raise SubpruneError(f"data file {data_path}: no array named {labels!r} for the labels (has: {', '.join(arrays)})")
    source = f"data file {data_path}"
    extra = (labels,) if labels else ()
    feeds = check_inputs(arrays, original, source, extra)
    check_inputs(arrays, pruned, source, extra)
    samples = len(next(iter(feeds.values())))
    truth = check_labels(arrays[labels], samples, source) if labels is not None else None
    batch = runtime.batch_size_for(original, batch_size)
    providers, note = runtime.choose_providers(device)
    if log:
        log(note)
    ref, cand = predict(original, feeds, providers, batch), predict(pruned, feeds, providers, batch)
    if set(ref) != set(cand):
        raise SubpruneError(f"the models have different outputs: {sorted(ref)} vs {sorted(cand)}")
    report = {"outputs": fidelity(ref, cand), "provider": providers[0]}
    if truth is not None:
        first = next((name for name, value in ref.items() if is_classifier(value)), None)
        if first is None:
            raise SubpruneError(f"labels {labels!r} given but no output is shaped (samples, classes)")
        report["accuracy"] = {"original": accuracy(ref[first], truth),
                              "pruned": accuracy(cand[first], truth), "output": first}
    one = {name: value[:batch] for name, value in feeds.items()}
    for label, model in (("original", original), ("pruned", pruned)):
        report[label] = {
            "params": count_params(model),
            "macs": count_macs(model),
            "latency_ms": latency_ms(model, one, providers),
        }
    report["latency_batch"] = int(len(next(iter(one.values()))))
    report["latency_ratio"] = report["pruned"]["latency_ms"] / max(report["original"]["latency_ms"], 1e-9)
    return report


def write_json(data: dict, path: str | Path) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_atomic(path, (to_json(data) + "\n").encode())


def to_json(data: dict) -> str:
    """Indented JSON of a report (NumPy scalars become Python numbers)."""
    return json.dumps(data, indent=2, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
