"""Calibration and evaluation data: load .npz/.npy files and check them against the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import SubpruneError
from .graph import static_dim


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of a .npz (by name) or .npy (under the name "", for a single-input model)."""
    path = Path(path)
    if not path.is_file():
        raise SubpruneError(f"data file not found: {path}")
    try:
        if path.suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise SubpruneError(f"cannot read data file {path}: {' '.join(str(exc).split())[:200]}") from None


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (initializers listed as inputs excluded)."""
    constants = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in constants]


def check_inputs(arrays: dict[str, np.ndarray], model: onnx.ModelProto, source: str,
                 extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Select and validate the model's inputs from ``arrays`` (names, ranks, dtypes, static dims,
    sample counts, finiteness). ``extra`` names arrays that may be present besides the inputs."""
    inputs = model_inputs(model)
    if "" in arrays:
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise SubpruneError(f"{source}: a .npy file feeds one input, the model has {len(inputs)} ({names}); use .npz")
        arrays = {inputs[0].name: arrays[""]}
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise SubpruneError(f"{source}: no array for model input {missing[0]!r} (has: {', '.join(arrays) or 'none'})")
    unknown = [n for n in arrays if n not in names and n not in extra]
    if unknown:
        raise SubpruneError(f"{source}: array {unknown[0]!r} is not a model input (inputs: {', '.join(names)})")
    feeds = {}
    for info in inputs:
        feeds[info.name] = _check_one(arrays[info.name], info, source)
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1:
        raise SubpruneError(f"{source}: inputs have different numbers of samples: {sorted(counts)}")
    if counts.pop() == 0:
        raise SubpruneError(f"{source}: no samples")
    return feeds


def _check_one(array: np.ndarray, info: onnx.ValueInfoProto, source: str) -> np.ndarray:
    tensor_type = info.type.tensor_type
    expected = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    dims = [static_dim(d) for d in tensor_type.shape.dim]
    if not dims:
        raise SubpruneError(f"{source}: model input {info.name!r} is a scalar; calibration data stacks "
                            f"samples on the first axis of every input, so this model cannot be calibrated")
    if array.ndim != len(dims):
        raise SubpruneError(
            f"{source}: input {info.name!r} has rank {array.ndim}, the model expects rank {len(dims)} "
            f"(shape {_shape_text(dims)}, first axis = samples)"
        )
    for axis, (got, want) in enumerate(zip(array.shape, dims)):
        if axis > 0 and want is not None and got != want:
            raise SubpruneError(
                f"{source}: input {info.name!r} has shape {list(array.shape)}, the model expects "
                f"{_shape_text(dims)} (axis {axis})"
            )
    floating = np.issubdtype(array.dtype, np.floating)
    if array.dtype != expected and not (floating and np.issubdtype(expected, np.floating)):
        raise SubpruneError(f"{source}: input {info.name!r} has dtype {array.dtype}, the model expects {expected}")
    if floating and not np.isfinite(array).all():
        raise SubpruneError(f"{source}: input {info.name!r} contains NaN or Inf")
    if array.dtype != expected:
        with np.errstate(over="ignore"):
            array = array.astype(expected)
        if not np.isfinite(array).all():
            raise SubpruneError(f"{source}: input {info.name!r} has values out of the range of {expected}")
    return array


def check_labels(labels: np.ndarray, samples: int, source: str) -> np.ndarray:
    """Integer class labels, one per sample: shape (samples,) (or (samples, 1))."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise SubpruneError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    if labels.shape not in ((samples,), (samples, 1)):
        raise SubpruneError(f"{source}: labels have shape {list(labels.shape)}, expected [{samples}] (one class index per sample)")
    return labels.reshape(-1)


def _shape_text(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
