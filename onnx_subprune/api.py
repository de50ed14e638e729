"""File-level entry points used by the CLI: load, check, run, write."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import runtime
from .analyze import analyze_selecting, coverage
from .calibrate import Progress
from .config import SELECT_INPUTS, PruneConfig
from .data import check_inputs, check_labels, check_split, load_arrays, model_inputs
from .errors import SubpruneError, quote
from .files import Outputs, write_atomic
from .graph import (
    external_data_path, load_model, model_bytes, needs_external_data, pin_input_dims, prepare, read_model,
    split_external_data,
)
from .metrics import count_macs_open, count_params
from .pipeline import Log, PruneResult, dry_run, prune, sensitivity
from .plans import Plan
from .shapes import InputShapes, open_dims_note, pin_shapes
from .sources import Calibration, calibration_feeds, read_paths
from .report import AnalysisReport, GroupSummary, PlanReport, SensitivityReport
from .verify import accuracy, fidelity, interface_differences, is_classifier, latency_ms, predict


def analyze_file(model_path: str | Path, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 input_shapes: InputShapes = (), select_inputs: str = "auto", log: Log | None = None) -> AnalysisReport:
    """The channel groups and skipped producers of a model file, and the share of its float
    params the groups reach; MACs with ``input_shapes`` pinned (a warning through ``log`` when
    symbolic dims are left open). Input selections are listed as ``prune`` uses them without
    a target (``select_inputs`` "always", or "auto" and no channel group); ``selectable``
    counts those left out."""
    if select_inputs not in SELECT_INPUTS:
        raise SubpruneError(f"select_inputs {select_inputs!r} is unknown (choose from {', '.join(SELECT_INPUTS)})")
    model = prepare(pin_shapes(load_model(model_path), input_shapes))
    result, found = analyze_selecting(model, include, exclude, select_inputs)
    groups = [
        GroupSummary(group=g.name, producer=g.lead, producers=[p.node for p in g.producers],
                     consumers=[c.node for c in g.consumers], channels=g.channels,
                     through=[p.op for p in g.passthrough])
        for g in result.groups
    ]
    return AnalysisReport(model=str(model_path), groups=groups, skipped=list(result.skipped),
                          coverage=coverage(model, result), params=count_params(model),
                          macs=_macs(model, log), selectable=len(found.groups) - len(result.groups))


def _macs(model, log: Log | None) -> int:
    """MACs of ``model`` for one sample; a warning through ``log`` for dims left open."""
    macs, open_layers = count_macs_open(model)
    if open_layers and log:
        log(open_dims_note(open_layers))
    return macs


def prune_file(model_path: str | Path, output: str | Path, calib: Calibration, config: PruneConfig,
               report_path: str | Path | None = None, progress: Progress | None = None,
               log: Log | None = None, plan: Plan | None = None,
               command: Sequence[str] | None = None, external_data: bool = False) -> PruneResult:
    """Prune ``model_path`` with calibration data ``calib`` and write ``output`` (and the report).

    ``plan``: apply its per-group counts (see :mod:`onnx_subprune.plans`). The report's ``run``
    records the tool version, ``command`` (the command line), and the paths and sha256 of the
    model, the calibration data and the written model.

    ``calib``: an .npz/.npy path, a folder or glob of images, a :class:`sources.CalibrationSource`
    (images with a preprocessing recipe, a script), or feed dicts (see :mod:`onnx_subprune.sources`).

    The weights go to an external data file beside ``output`` (``external_data_path``) when
    ``external_data`` asks for it, when the input model had external data, or when the model is
    beyond protobuf's 2 GiB (:func:`graph.needs_external_data`).

    Every input and output path is checked before work starts; the outputs are written at the
    end, all or none (see :class:`files.Outputs`).
    """
    outputs = Outputs({"output": output, "report": report_path}, {"model": model_path, "calibration data": read_paths(calib),
                                                                  "plan": plan.path if plan else None})
    model, external = read_model(model_path)
    outputs.refuse_inputs({"external data of the model": external})
    data_path = external_data_path(output) if needs_external_data(model, external, external_data) else None
    if data_path is not None:
        outputs.add("external data", data_path)
    feeds = _calibration(pin_shapes(model, config.input_shapes), calib, config, progress, log)
    result = prune(model, feeds, config, progress, log, plan=plan)
    if data_path is None:
        contents = {"output": model_bytes(result.model)}
    else:
        contents = dict(zip(("output", "external data"), split_external_data(result.model, data_path.name)))
    result.report.run = provenance(command, model_path, calib, (output, contents["output"]), plan)
    if report_path is not None:
        contents["report"] = json_bytes(result.report.to_json())
    outputs.write(contents)
    return result


def sensitivity_file(model_path: str | Path, calib: Calibration, config: PruneConfig,
                     plot_path: str | Path | None = None, progress: Progress | None = None,
                     log: Log | None = None) -> SensitivityReport:
    """Per-group sensitivity curves of ``model_path`` on ``calib``; with ``plot_path``, also a PNG
    (needs matplotlib). Everything is checked before the work starts."""
    outputs = Outputs({"plot": plot_path}, {"model": model_path, "calibration data": read_paths(calib)})
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SubpruneError("plotting needs matplotlib, which is not installed: "
                                "pip install 'onnx-subprune[plot]'") from None
    model, external = read_model(model_path)
    outputs.refuse_inputs({"external data of the model": external})
    feeds = _calibration(pin_shapes(model, config.input_shapes), calib, config, progress, log)
    report, curves = sensitivity(model, feeds, config, progress, log)
    report.model = str(model_path)
    if plot_path is not None:
        from .sensitivity import curves_png

        outputs.write({"plot": curves_png(curves, f"sensitivity of {Path(model_path).name}")})
        report.plot = str(plot_path)
    return report


def dry_run_file(model_path: str | Path, calib: Calibration | None, config: PruneConfig,
                 report_path: str | Path | None = None, progress: Progress | None = None,
                 log: Log | None = None, plan: Plan | None = None,
                 command: Sequence[str] | None = None) -> PlanReport:
    """What :func:`prune_file` would keep, written nowhere but the report (``report_path``): the
    allocation and the size model's predicted params and MACs. ``calib`` is needed only when
    the allocation measures sensitivity curves (and sizes symbolic input dims for MACs)."""
    paths = read_paths(calib) if calib is not None else None
    outputs = Outputs({"report": report_path}, {"model": model_path, "calibration data": paths, "plan": plan.path if plan else None})
    model, external = read_model(model_path)
    outputs.refuse_inputs({"external data of the model": external})
    feeds = None
    if calib is not None:
        feeds = _calibration(pin_shapes(model, config.input_shapes), calib, config, progress, log)
    report = dry_run(model, feeds, config, progress, log, plan=plan)
    report.run = provenance(command, model_path, calib, None, plan)
    if report_path is not None:
        outputs.write({"report": json_bytes(report.to_json())})
    return report


def provenance(command: Sequence[str] | None, model_path: str | Path, calib: Calibration | None,
               output: tuple[str | Path, bytes] | None, plan: Plan | None = None) -> dict:
    """What a report records of its run: the tool version, the command line, and the path and
    sha256 of the model, the calibration data (one file: its hash; several files, such as a
    folder of images: the hash of their "name hash" lines) and the written model."""
    from . import __version__

    def entry(path, digest: str | None) -> dict:
        return {"path": os.fspath(path), "sha256": digest}

    run = {"version": __version__, "command": None if command is None else list(command),
           "model": entry(model_path, _sha256_files([model_path]))}
    if calib is not None:
        paths = read_paths(calib)
        run["calibration"] = entry(_calibration_name(calib), _sha256_files(paths) if paths else None)
    if plan is not None:
        run["plan"] = plan.source
    if output is not None:
        run["output"] = entry(output[0], hashlib.sha256(output[1]).hexdigest())
    return run


def _calibration_name(calib: Calibration) -> str:
    """How the report names a calibration source: its path, glob or script, else "feed dicts"."""
    if isinstance(calib, (str, os.PathLike)):
        return os.fspath(calib)
    named = getattr(calib, "path", None) or getattr(calib, "script", None)
    return os.fspath(named) if named is not None else "feed dicts"


def _sha256_files(paths: Sequence[str | Path]) -> str:
    """sha256 of one file, or of the "name sha256" lines of several (in the order given)."""
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests.append(digest.hexdigest())
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(f"{os.fspath(p)} {d}\n" for p, d in zip(paths, digests)).encode()).hexdigest()


def _calibration(model, calib: Calibration, config: PruneConfig, progress: Progress | None,
                 log: Log | None) -> dict[str, np.ndarray]:
    """The model's inputs from any calibration source (all samples in memory: the pipeline splits
    them and reads them several times), checked against the model and the holdout."""
    feeds, source = calibration_feeds(model, calib, log, progress)
    check_split(len(next(iter(feeds.values()))), config.holdout, source)
    return feeds


def evaluate_files(original_path: str | Path, pruned_path: str | Path, data_path: str | Path,
                   labels: str | None = None, device: str = "auto", batch_size: int = 64,
                   log: Log | None = None) -> dict:
    """Fidelity, accuracy (with ``labels``), size and latency of a pruned model vs the original.

    The models must have the same inputs and outputs (names, element types, declared shapes).
    Arrays of the data file that are neither a model input nor ``labels`` are ignored, named
    once through ``log``; MACs are counted at the size of the data's samples."""
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
    names = {value.name for value in model_inputs(original)}
    ignored = [name for name in arrays if name not in names and name != labels and name != ""]
    extra = (labels, *ignored) if labels else tuple(ignored)
    feeds = check_inputs(arrays, original, source, extra)
    check_inputs(arrays, pruned, source, extra)
    if ignored and log:  # once the data is known to fit
        log(f"note: {source}: ignoring arrays that are not model inputs: {', '.join(map(quote, ignored))}")
    samples = len(next(iter(feeds.values())))
    truth = check_labels(arrays[labels], samples, source) if labels is not None else None
    batch = runtime.batch_size_for(original, batch_size, feeds)
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
            "macs": _macs(pin_input_dims(model, feeds), log if label == "original" else None),
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
