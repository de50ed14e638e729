"""Structured pruning of ONNX models after export (greedy submodular channel selection with a
least-squares refit of the next layer).

File-level entry points, as the command line uses them::

    import onnx_subprune
    result = onnx_subprune.prune("model.onnx", "pruned.onnx", "calib.npz", keep=0.5)
    print(result.report.to_json()["params"])
    onnx_subprune.analyze("model.onnx").to_json()
    onnx_subprune.evaluate("model.onnx", "pruned.onnx", "test.npz", labels="label")

The functions are imported on first use, so ``import onnx_subprune`` stays cheap (onnx,
onnxruntime and SciPy are loaded only when one is called). Model-level functions live in
:mod:`onnx_subprune.pipeline` (``prune(model, feeds, config)``).
"""

from __future__ import annotations

import os
import sys
import types
from importlib import import_module
from typing import Any

# OpenBLAS's idle worker threads spin-wait for 2**28 cycles (about 0.1 s) after each call before
# they sleep, so between the statistics' matrix products they kept a core busy that onnxruntime
# and NumPy's single-threaded copies needed; 2**4 cycles lets them sleep at once (asym on the
# 66-group ddddocr_det, 2 cores: 39-43 -> 29-35 CPU seconds). Set before NumPy loads OpenBLAS, so it
# holds for the command line and for programs that import this package first (one that loaded
# NumPy before keeps OpenBLAS's default); a value already in the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__all__ = ["__version__", "analyze", "evaluate", "prune", "sensitivity", "PruneConfig", "SubpruneError"]

_LAZY = {"PruneConfig": "config", "SubpruneError": "errors"}
_FUNCTIONS = ("analyze", "evaluate", "prune", "sensitivity")


def _version() -> str:
    """The installed distribution's version, else the one pyproject.toml next to the package
    declares (a source checkout that was never installed), else "0+unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx-subprune")
    except PackageNotFoundError:
        pass
    from pathlib import Path

    try:
        import tomllib

        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except Exception:  # no pyproject.toml (a bare copy of the package), or Python < 3.11
        return "0+unknown"


__version__ = _version()


def prune(model: str, output: str, calib: Any, config: Any = None, *, report: str | None = None,
          plan: Any = None, progress: Any = None, log: Any = None, **options: Any) -> Any:
    """Prune the ONNX file ``model`` and write ``output`` (and the JSON ``report``), all or none.

    ``calib``: an .npz/.npy path, a folder or glob of images, or feed dicts (see
    :mod:`onnx_subprune.sources`). ``config``: a :class:`PruneConfig`, or its fields as keyword
    ``options`` (``keep=0.5``, ``target_params=0.25``, ``input_shapes=(("x", (1, 3, 224, 224)),)``,
    ``group_keep=(("/conv1/*", 0.25),)``, ...). ``plan``: a report path (or
    :class:`plans.Plan`) whose per-group counts are applied. Returns a :class:`pipeline.PruneResult`
    (``.model``, ``.report``); bad input raises :class:`SubpruneError` with a one-line message.
    """
    from .api import prune_file

    return prune_file(model, output, calib, _config(config, options), report, progress, log, plan=_plan(plan))


def analyze(model: str, include: Any = (), exclude: Any = (), input_shapes: Any = (),
            select_inputs: str = "auto") -> Any:
    """The channel groups of the ONNX file ``model``, the layers skipped with their reason, and
    params/MACs (:class:`report.AnalysisReport`; ``.to_json()`` for a dict); ``select_inputs``
    as for ``prune`` (:class:`config.PruneConfig`)."""
    from .api import analyze_file

    return analyze_file(model, tuple(include), tuple(exclude), tuple(input_shapes), select_inputs)


def evaluate(original: str, pruned: str, data: str, labels: str | None = None, device: str = "auto",
             batch_size: int = 64, log: Any = None) -> dict:
    """Compare the ONNX file ``pruned`` with ``original`` on the inputs of the .npz/.npy ``data``:
    per-output relative error and cosine, top-1 agreement, accuracy on the integer array
    ``labels``, params, MACs and latency (a dict)."""
    from .api import evaluate_files

    return evaluate_files(original, pruned, data, labels, device, batch_size, log)


def sensitivity(model: str, calib: Any, config: Any = None, *, plot: str | None = None, progress: Any = None,
                log: Any = None, **options: Any) -> Any:
    """Per-group sensitivity curves of the ONNX file ``model`` (output error with one group
    pruned, by kept fraction); ``plot``: also draw them into a PNG (needs matplotlib)."""
    from .api import sensitivity_file

    return sensitivity_file(model, calib, _config(config, options), plot, progress, log)


def _config(config: Any, options: dict) -> Any:
    from dataclasses import replace

    from .config import PruneConfig

    return replace(config or PruneConfig(), **options) if options else (config or PruneConfig())


def _plan(plan: Any) -> Any:
    from .plans import Plan, read_plan

    return plan if plan is None or isinstance(plan, Plan) else read_plan(plan)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module: importing its submodules ``analyze`` and ``sensitivity`` (which the
    import system binds as package attributes) leaves the functions of the same names in place;
    the submodules stay importable as ``onnx_subprune.analyze`` through ``sys.modules``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
