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
from .data import check_inputs, check_labels, check_split, load_arrays
from .errors import SubpruneError, quote
from .files import Outputs, write_atomic
from .graph import load_model, model_bytes, prepare, read_model
from .metrics import count_macs, count_params
from .pipeline import Log, PruneResult, prune, sensitivity
from .report import AnalysisReport, GroupSummary, SensitivityReport
from .verify import accuracy, fidelity, interface_differences, is_classifier, latency_ms, predict


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

    Every input and output path is checked before work starts; the outputs are written at the
    end, all or none (see :class:`files.Outputs`).
    """
    outputs = Outputs({"output": output, "report": report_path}, {"model": model_path, "calibration data": calib})
    model, external = read_model(model_path)
    outputs.refuse_inputs({"external data of the model": external})
    feeds = _calibration(model, calib, config)
    result = prune(model, feeds, config, progress, log)
    contents = {"output": model_bytes(result.model)}
    if report_path is not None:
        contents["report"] = json_bytes(result.report.to_json())
    outputs.write(contents)
    return result


def sensitivity_file(model_path: str | Path, calib: str | Path, config: PruneConfig,
                     plot_path: str | Path | None = None, progress: Progress | None = None,
                     log: Log | None = None) -> SensitivityReport:
    """Per-group sensitivity curves of ``model_path`` on ``calib``; with ``plot_path``, also a PNG
    (needs matplotlib). Everything is checked before the work starts."""
    outputs = Outputs({"plot": plot_path}, {"model": model_path, "calibration data": calib})
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SubpruneError("plotting needs matplotlib, which is not installed: "
                                "pip install 'onnx-subprune[plot]'") from None
    model, external = read_model(model_path)
    outputs.refuse_inputs({"external data of the model": external})
    feeds = _calibration(model, calib, config)
    report, curves = sensitivity(model, feeds, config, progress, log)
    report.model = str(model_path)
    if plot_path is not None:
        from .sensitivity import curves_png

        outputs.write({"plot": curves_png(curves, f"sensitivity of {Path(model_path).name}")})
        report.plot = str(plot_path)
    return report


def _calibration(model, calib: str | Path, config: PruneConfig) -> dict[str, np.ndarray]:
    """The model's inputs from the calibration file, checked against the model and the holdout."""
    source = f"calibration data {calib}"
    feeds = check_inputs(load_arrays(calib), model, source)
    check_split(len(next(iter(feeds.values()))), config.holdout, source)
    return feeds


def evaluate_files(original_path: str | Path, pruned_path: str | Path, data_path: str | Path,
                   labels: str | None = None, device: str = "auto", batch_size: int = 64,
                   log: Log | None = None) -> dict:
    """Fidelity, accuracy (with ``labels``), size and latency of a pruned model vs the original.

    The models must have the same inputs and outputs (names, element types, declared shapes)."""
    original, pruned = load_model(original_path), load_model(pruned_path)
    differences = interface_differences(original, pruned)
    if differences:
        more = f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise SubpruneError(f"{original_path} and {pruned_path} do not have the same inputs and outputs: "
                            + "; ".join(differences[:3]) + more)
    arrays = load_arrays(data_path)
    if labels is not None and labels not in arrays:
        raise SubpruneError(f"data file {data_path}: no array named {quote(labels)} for the labels "
                            f"(has: {', '.join(map(quote, arrays))})")
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
    report = {"outputs": fidelity(ref, cand), "provider": providers[0]}
    if truth is not None:
        first = next((name for name, value in ref.items() if is_classifier(value)), None)
        if first is None:
            raise SubpruneError(f"labels {quote(labels)} given but no output is shaped (samples, classes)")
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
    write_atomic(path, json_bytes(data))


def json_bytes(data: dict) -> bytes:
    """``data`` as indented JSON text (UTF-8, newline-terminated)."""
    return (to_json(data) + "\n").encode()


def to_json(data: dict) -> str:
    """Indented JSON of a report (NumPy scalars become Python numbers)."""
    return json.dumps(data, indent=2, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
