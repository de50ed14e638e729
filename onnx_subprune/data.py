"""Calibration and evaluation data: load .npz/.npy files and check them against the model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import SubpruneError, quote
from .graph import sample_axis, static_dim


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip file with members, an empty one


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of a .npz (by name) or .npy (under the name "", for a single-input model).

    The format is read from the file's first bytes, not its name. Pickled (object) arrays are
    never loaded; every failure is a one-line :class:`SubpruneError`.
    """
    path = Path(path)
    shown = os.fspath(path)
    if not path.exists():
        raise SubpruneError(f"data file not found: {shown}")
    prefix = f"cannot read data file {shown}"
    if path.is_dir():
        raise SubpruneError(f"{prefix}: it is a folder")
    if not path.is_file():
        raise SubpruneError(f"{prefix}: it is not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(NPY_MAGIC))
    except OSError as exc:
        raise SubpruneError(f"{prefix}: {exc.strerror or exc}") from None
    if not head:
        raise SubpruneError(f"{prefix}: the file is empty")
    if head.startswith(NPY_MAGIC):
        return {"": _read(lambda: np.load(path, allow_pickle=False), prefix)}
    if head[:4] not in ZIP_MAGICS:
        raise SubpruneError(f"{prefix}: it is neither a .npz nor a .npy file (it starts with {head!r}); "
                            f"write calibration data with numpy.savez or numpy.save")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise SubpruneError(f"{prefix}: not a valid .npz archive: {_one_line(exc)}") from None
    with archive:
        arrays = {}
        for name in archive.files:
            value = _read(lambda: archive[name], f"{prefix}: member {quote(name)}")
            if not isinstance(value, np.ndarray):
                raise SubpruneError(f"{prefix}: member {quote(name)} is not a .npy array")
            arrays[name] = value
    if not arrays:
        raise SubpruneError(f"{prefix}: the archive holds no arrays")
    return arrays


def _read(load, prefix: str) -> np.ndarray:
    """``load()``, with numpy's failures on a corrupt or pickled array as one line."""
    try:
        return load()
    except MemoryError:
        raise SubpruneError(f"{prefix}: the array is too large to load") from None
    except Exception as exc:
        text = _one_line(exc)
        if "allow_pickle" in text or "pickle" in text:
            text = "it holds Python objects (a pickled object array), which are never loaded; save numeric arrays"
        else:
            text = f"not a valid .npy array ({text})"
        raise SubpruneError(f"{prefix}: {text}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (initializers listed as inputs excluded)."""
    constants = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in constants]


def check_inputs(arrays: dict[str, np.ndarray], model: onnx.ModelProto, source: str,
                 extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Select and validate the model's inputs from ``arrays`` (names, ranks, dtypes, static dims,
    sample counts, finiteness). ``extra`` names arrays that may be present besides the inputs."""
    inputs = model_inputs(model)
    if not inputs:
        raise SubpruneError(f"{source}: the model has no inputs to feed (every graph input is a constant)")
    for info in inputs:
        if info.type.WhichOneof("value") != "tensor_type":
            raise SubpruneError(f"{source}: model input {quote(info.name)} is not a tensor "
                                f"({info.type.WhichOneof('value') or 'no type'}); only tensor inputs can be fed")
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
    feeds = share_scalars(feeds, source)
    samples = len(next(iter(feeds.values())))
    if samples == 0:
        raise SubpruneError(f"{source}: no samples")
    _check_fixed_batch(inputs, feeds, samples, source)
    return feeds


def share_scalars(feeds: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """``feeds`` with every 0-d array (a model input that is one value for the whole batch, such
    as an audio model's sample rate) broadcast to the samples of the others, (n,) without a copy:
    every array then has samples on its first axis, and the runs feed the value back as a
    scalar (:func:`runtime.run`). Refuses inputs with different numbers of samples."""
    counts = {len(a) for a in feeds.values() if np.ndim(a) > 0}
    if not counts:
        raise SubpruneError(f"{source}: every input is a scalar, so there are no samples to calibrate on "
                            f"(stack samples on the first axis of the per-sample inputs)")
    if len(counts) != 1:
        raise SubpruneError(f"{source}: inputs have different numbers of samples: {sorted(counts)}")
    samples = counts.pop()
    return {name: np.broadcast_to(a, (samples,)) if np.ndim(a) == 0 else a for name, a in feeds.items()}


MAX_PADDED_BATCH_BYTES = 1 << 30
"""Largest batch that samples are padded to when a model fixes its batch above their number."""


def _check_fixed_batch(inputs: list[onnx.ValueInfoProto], feeds: dict[str, np.ndarray], samples: int,
                       source: str) -> None:
    """A model that fixes its batch at B gets every run padded to B samples: refuse a B whose
    padded batch would not fit in memory."""
    fixed = fixed_batches(inputs, feeds)
    if not fixed:
        return
    batch, name = min(fixed)
    need = batch * sum(array[:1].nbytes for array in feeds.values())
    if batch > samples and need > MAX_PADDED_BATCH_BYTES:
        raise SubpruneError(f"{source}: the model fixes its batch at {batch:,} samples (sample axis of input "
                            f"{quote(name)}); padding {samples} samples to it would need {need / 2**30:,.1f} GiB")


def fixed_batches(inputs: list[onnx.ValueInfoProto], feeds: dict[str, np.ndarray]) -> list[tuple[int, str]]:
    """(size, input name) of every input that fixes the size of its sample axis
    (:func:`graph.sample_axis` for the arrays of ``feeds``, the first axis where they do not
    fit); scalars and inputs without an array are left out."""
    fixed = []
    for info in inputs:
        dims = [static_dim(d) for d in info.type.tensor_type.shape.dim]
        if not dims or info.name not in feeds:
            continue
        axis = sample_axis(dims, feeds[info.name].shape[1:])
        size = dims[0 if axis is None else axis]
        if size is not None:
            fixed.append((size, info.name))
    return fixed


def _check_one(array: np.ndarray, info: onnx.ValueInfoProto, source: str) -> np.ndarray:
    tensor_type = info.type.tensor_type
    try:
        expected = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    except Exception:
        raise SubpruneError(f"{source}: model input {quote(info.name)} has element type "
                            f"{tensor_type.elem_type}, which has no NumPy equivalent") from None
    if array.dtype.kind not in "biuf":
        raise SubpruneError(f"{source}: array {quote(info.name)} has dtype {array.dtype}, not a number type "
                            f"(the model expects {expected})")
    dims = [static_dim(d) for d in tensor_type.shape.dim]
    if not dims:
        array = _shared_scalar(array, info.name, source)
    elif array.ndim != len(dims):
        raise SubpruneError(
            f"{source}: input {info.name!r} has rank {array.ndim}, the model expects rank {len(dims)} "
            f"(shape {_shape_text(dims)}, first axis = samples)"
        )
    elif sample_axis(dims, array.shape[1:]) is None:
        wrong = [axis for axis, (got, want) in enumerate(zip(array.shape, dims)) if axis and want not in (None, got)]
        raise SubpruneError(
            f"{source}: input {info.name!r} has shape {list(array.shape)}, the model expects "
            f"{_shape_text(dims)} (axis {wrong[0]}; first axis = samples, then the model's shape without its "
            f"batch axis)"
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


def _shared_scalar(array: np.ndarray, name: str, source: str) -> np.ndarray:
    """The one value of a scalar model input: given as a 0-d array, or once per sample when
    every sample has the same."""
    if array.ndim == 1 and len(array) and (array == array[0]).all():
        return array[0, ...]
    if array.ndim:
        raise SubpruneError(f"{source}: model input {name!r} is a scalar, one value for the whole batch; give it "
                            f"as a 0-d array (got shape {list(array.shape)}, which is not one repeated value)")
    return array


def check_split(samples: int, holdout: float, source: str) -> None:
    """The samples left for the statistics after ``holdout`` are at least as many as those held
    out, and at least :data:`MIN_STATISTICS_SAMPLES`: the statistics (Gram matrices, means) are
    estimated from them, and an error measured on more samples than the fit used says little."""
    kept, held = _split_sizes(samples, holdout)
    if held and (kept < held or kept < MIN_STATISTICS_SAMPLES):
        enough = next((n for n in range(samples + 1, 4 * samples + 2 * MIN_STATISTICS_SAMPLES + 4)
                       if _split_sizes(n, holdout)[0] >= max(_split_sizes(n, holdout)[1], MIN_STATISTICS_SAMPLES)), None)
        more = f"give at least {enough} samples or" if enough else "give"
        raise SubpruneError(
            f"{source}: holdout {holdout} holds out {held} of {samples} samples and leaves {kept} for the "
            f"statistics; they need at least as many samples as are held out, and at least "
            f"{MIN_STATISTICS_SAMPLES} (a mean and a variance): {more} a smaller holdout")


def _split_sizes(samples: int, holdout: float) -> tuple[int, int]:
    """(samples left for the statistics, samples held out), as :func:`calibrate.split_samples`
    draws them."""
    from .calibrate import split_samples

    split = split_samples(samples, holdout, 0)
    return len(split.calibration), len(split.holdout)


MIN_STATISTICS_SAMPLES = 2
"""Fewest samples the statistics are estimated from when some are held out (a mean and a
variance need two)."""


def check_finite(*tensors: dict[str, np.ndarray]) -> None:
    """A one-line error when a tensor computed inside the model on the calibration data (a
    consumer's input) holds NaN or Inf: the statistics would be meaningless."""
    seen = set()
    for name, value in ((n, v) for group in tensors for n, v in group.items()):
        if id(value) in seen:
            continue
        seen.add(id(value))
        if value.dtype.kind in "fc" and not _all_finite(value):
            raise SubpruneError(
                f"tensor {quote(name)} inside the model is NaN or Inf on the calibration data: the data or "
                f"the weights are too large for the model's float type (overflow)")


def _all_finite(value: np.ndarray) -> bool:
    """Whether every entry of a float array is finite. Its sum is finite when they all are (NaN
    and Inf carry into it), so the entries are only tested one by one when the sum is not,
    which finite entries give only by overflowing (a SIMD sum, without a boolean array)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(value.sum()):
            return True
    return bool(np.isfinite(value).all())


def check_labels(labels: np.ndarray, samples: int, source: str) -> np.ndarray:
    """Integer class labels, one per sample: shape (samples,) (or (samples, 1))."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise SubpruneError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    if labels.shape not in ((samples,), (samples, 1)):
        raise SubpruneError(f"{source}: labels have shape {list(labels.shape)}, expected [{samples}] (one class index per sample)")
    return labels.reshape(-1)


def _shape_text(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
