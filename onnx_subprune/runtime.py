"""onnxruntime sessions: provider choice, capture of intermediate tensors, batched runs."""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
from onnx import helper

from .errors import SubpruneError
from .graph import is_huge, on_disk, sample_axis, shape_info, static_dim, subgraph_reads

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def choose_providers(device: str) -> tuple[list[str], str]:
    """Providers for ``device`` and a one-line note saying which is used.

    auto: CUDA only when a session really gets it (libraries load), otherwise CPU;
    cuda: an error when CUDA cannot be used.
    """
    if device not in DEVICES:
        raise SubpruneError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    if device == "cpu":
        return [CPU], "using onnxruntime CPUExecutionProvider"
    works, why = _cuda_works()
    if works:
        return [CUDA, CPU], "using onnxruntime CUDAExecutionProvider"
    if device == "cuda":
        raise SubpruneError(f"device cuda: CUDAExecutionProvider is not usable here ({why})")
    return [CPU], f"using onnxruntime CPUExecutionProvider (CUDA not usable: {why})"


@functools.lru_cache(maxsize=1)
def _cuda_works() -> tuple[bool, str]:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
    _preload_cuda_libraries(ort)
    probe = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
    )
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(probe.SerializeToString(), _options(), providers=[CUDA, CPU])
        ok = CUDA in session.get_providers()
    except Exception:
        ok = False
    finally:
        ort.set_default_logger_severity(4)
    return ok, "" if ok else "its libraries did not load"


def _preload_cuda_libraries(ort) -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages installed beside onnxruntime
    (``pip install onnxruntime-gpu[cuda,cudnn]``, or those a CUDA build of PyTorch pulled into the
    same environment), so the CUDA provider finds them without LD_LIBRARY_PATH; quietly nothing
    where they are missing (onnxruntime's helper prints its own warnings, which are not this
    tool's to show)."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            preload()
        except Exception:  # a library that fails to load is the probe's to report
            pass


def _options(spin: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = False  # memory back after each run: 5.4 instead of 7.8 GB peak (asym, ResNet-50, 512 images)
    if not spin:  # worker threads spin-waiting after a run take the cores from the NumPy statistics that follow
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # (asym chain64 capture 11.2 -> 6.5 s)
    return options


def session(model: onnx.ModelProto, providers: list[str], capture: tuple[str, ...] = (), spin: bool = False):
    """An inference session of ``model``: its outputs are the model's, or with ``capture`` only
    those tensors (onnxruntime then computes only the part of the graph they need). ``spin``:
    onnxruntime's default of worker threads that spin-wait between runs (latency as deployed);
    without it they sleep, leaving the cores to the work between runs."""
    import onnxruntime as ort

    if capture:
        model = with_outputs(model, capture)
    model = _dynamic_batch_dims(model)
    ort.set_default_logger_severity(4)
    try:
        if not is_huge(model):
            sess = ort.InferenceSession(model.SerializeToString(), _options(spin), providers=providers)
        else:
            with on_disk(model) as path:  # beyond protobuf's limit: from a file with external data
                sess = ort.InferenceSession(str(path), _options(spin), providers=providers)
    except Exception as exc:
        raise SubpruneError(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:300]}") from None
    _DECLARED[sess] = _Declared.of(model)
    return sess


Dims = list[int | str | None]
"""A declared shape: a static size, a symbolic name, or None (dynamic without a name)."""


@dataclass(frozen=True)
class _Declared:
    """A session's graph inputs and outputs as the model declares them (name -> dims; a name
    left out: declared without a shape, as the parts of a model that :mod:`frontier` runs).

    Calibration arrays hold samples on their first axis; :meth:`sample_axis` says where the
    model wants them (an RNN state [2, batch, 128] on axis 1, a scalar once for all), and
    outputs whose batch axis is not first are given back with samples first."""

    inputs: dict[str, Dims]
    outputs: dict[str, Dims]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Declared:
        def dims(values) -> dict[str, Dims]:
            return {value.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                                 for d in value.type.tensor_type.shape.dim]
                    for value in values if value.type.tensor_type.HasField("shape")}

        return cls(dims(model.graph.input), dims(model.graph.output))

    def sample_axis(self, name: str, value: np.ndarray) -> int:
        """Where input ``name`` takes the samples of ``value`` (n, ...): an axis, or -1 for a
        scalar fed once (``value`` repeats it per sample); 0 where the declaration does not say."""
        dims = self.inputs.get(name)
        if dims is None:
            return 0
        if not dims:
            return -1
        axis = sample_axis([d if isinstance(d, int) else None for d in dims], value.shape[1:])
        return 0 if axis is None else axis

    def fixed_batch(self, axes: dict[str, int]) -> int | None:
        sizes = [self.inputs[name][axis] for name, axis in axes.items()
                 if axis >= 0 and name in self.inputs and isinstance(self.inputs[name][axis], int)]
        return min(sizes) if sizes else None

    def batch_dims(self, axes: dict[str, int]) -> set[int | str]:
        """The declared dims of the inputs' sample axes (``axes`` from :meth:`sample_axis`)."""
        return {self.inputs[n][a] for n, a in axes.items() if a >= 0 and n in self.inputs} - {None}

    def samples_first(self, name: str, value: np.ndarray, batch: set[int | str]) -> np.ndarray:
        """Output ``name`` with its samples on the first axis: the axis declared with the same
        symbolic dim as an input's sample axis (``batch``: :meth:`batch_dims`), when that is not
        the first."""
        dims = self.outputs.get(name)
        if not dims or value.ndim != len(dims) or dims[0] in batch:
            return value
        moved = [axis for axis, dim in enumerate(dims) if isinstance(dim, str) and dim in batch]
        return np.moveaxis(value, moved[0], 0) if moved else value


def samples_first_as_run(model: onnx.ModelProto) -> bool:
    """Whether :func:`run` gives every graph output of ``model`` as onnxruntime computes it: none
    declares, past its first axis, a symbolic dim that an input declares (which could be the
    samples' axis, then moved first)."""
    declared = _Declared.of(_dynamic_batch_dims(model))
    symbols = {dim for dims in declared.inputs.values() for dim in dims if isinstance(dim, str)}
    return not any(isinstance(dim, str) and dim in symbols for dims in declared.outputs.values() for dim in dims[1:])


_DECLARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Session -> its :class:`_Declared` inputs and outputs (sessions made by :func:`session`)."""


def _placed(value: np.ndarray, axis: int) -> np.ndarray:
    """A batch (samples first) as the model takes it: the samples moved to ``axis``, or the one
    value of a scalar input (``axis`` -1)."""
    if axis < 0:
        return np.asarray(value[0])
    return np.ascontiguousarray(np.moveaxis(value, 0, axis)) if axis else value


def _dynamic_batch_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with graph input/output dims declared 0 or -1 made symbolic (onnxruntime takes
    a 0 literally), or ``model`` itself when it has none."""
    values = [*model.graph.input, *model.graph.output]
    if not any(_declared_dynamic(d) for v in values for d in v.type.tensor_type.shape.dim):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in [*copy.graph.input, *copy.graph.output]:
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if _declared_dynamic(dim):
                dim.dim_param = f"dynamic_{index}"
    return copy


def _declared_dynamic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A dim given as a value that :func:`graph.static_dim` reads as dynamic (0 or -1)."""
    return dim.HasField("dim_value") and static_dim(dim) is None


def with_outputs(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are exactly the tensors ``names`` (in that order), and
    without the nodes none of them needs."""
    info = shape_info(model).graph
    types = {value.name: value.type for value in [*info.value_info, *info.input, *info.output]}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    for name in dict.fromkeys(names):
        elem = types[name].tensor_type.elem_type if name in types else onnx.TensorProto.FLOAT
        copy.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    needed, kept = set(names), []
    for node in reversed(copy.graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(subgraph_reads([node]))
    del copy.graph.node[:]
    copy.graph.node.extend(reversed(kept))
    return copy


def fixed_batch(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> int | None:
    """The batch size the model's inputs fix on their sample axis for ``feeds`` (first axis =
    samples; None: dynamic). A dim that is symbolic, unset, 0 or -1 (as some exporters write a
    dynamic dim) is dynamic; a positive value is a fixed batch."""
    from .data import fixed_batches, model_inputs

    sizes = fixed_batches(model_inputs(model), feeds)
    return min(sizes)[0] if sizes else None


def batch_size_for(model: onnx.ModelProto, requested: int, feeds: dict[str, np.ndarray]) -> int:
    """``requested`` unless the model fixes its batch axis. A last batch smaller than a fixed
    batch is padded by :func:`run` (the padded rows are dropped from its results)."""
    return fixed_batch(model, feeds) or requested


def batches(feeds: dict[str, np.ndarray], indices: np.ndarray, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for consecutive chunks of ``indices`` (sample indices into every array): views
    where ``indices`` are consecutive (every calibration sample, as cross-validation takes
    them), copies otherwise."""
    indices = np.asarray(indices)
    consecutive = len(indices) > 0 and np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices)))
    for start in range(0, len(indices), size):
        chunk = indices[start : start + size]
        picked = slice(int(chunk[0]), int(chunk[-1]) + 1) if consecutive else chunk
        yield {name: array[picked] for name, array in feeds.items()}


def run(sess, feeds: dict[str, np.ndarray], names: list[str] | None = None,
        extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run a session and return the requested outputs (all when None) by name. ``extra``:
    inputs that are not per sample (weights fed as inputs), passed as they are.

    ``feeds`` hold samples on their first axis; each goes to the model on the axis it declares
    for them (see :class:`_Declared`), and outputs come back with samples first.
    When the model fixes its batch at B and the feeds hold n < B samples, the feeds are padded
    to B (by repeating the last sample) and every output is cut back to the rows of the n real
    samples (the first n/B of its first axis).
    """
    names = names or [out.name for out in sess.get_outputs()]
    extra = extra or {}
    samples = len(next(iter(feeds.values())))
    declared = _DECLARED.get(sess, _Declared({}, {}))
    axes = {name: declared.sample_axis(name, value) for name, value in feeds.items()}
    fixed = declared.fixed_batch(axes)
    padded = fixed is not None and samples < fixed
    if padded:
        feeds = {name: pad(value, fixed) for name, value in feeds.items()}
    outputs = _checked_run(sess, names, {name: _placed(value, axes[name]) for name, value in feeds.items()}, extra)
    batch = declared.batch_dims(axes)
    outputs = [declared.samples_first(name, value, batch) for name, value in zip(names, outputs)]
    if not padded:
        return dict(zip(names, outputs))
    return {name: real_rows(value, samples, fixed) for name, value in zip(names, outputs)}


def _checked_run(sess, names: list[str], feeds: dict[str, np.ndarray],
                 extra: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``sess.run`` on ``feeds`` and ``extra``, with onnxruntime's failures (bad dims, a kernel
    error) as one line naming the shapes of ``feeds``."""
    try:
        return sess.run(names, {**feeds, **extra})
    except Exception as exc:
        shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in feeds.items())
        raise SubpruneError(f"onnxruntime cannot run the model on inputs {shapes}: "
                            f"{' '.join(str(exc).split())[:300]}") from None


def pad(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with its last sample repeated up to ``size`` samples."""
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def real_rows(value: np.ndarray, samples: int, batch: int) -> np.ndarray:
    """The rows of ``samples`` real samples in an output of a padded batch of ``batch``."""
    if value.ndim == 0 or value.shape[0] % batch:
        raise SubpruneError(
            f"the model fixes its batch at {batch} and has an output of shape {list(value.shape)} "
            f"whose first axis is not a multiple of it; give a number of samples divisible by {batch}"
        )
    return value[: value.shape[0] // batch * samples]
