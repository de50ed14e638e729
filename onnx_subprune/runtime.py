"""onnxruntime sessions: provider choice, capture of intermediate tensors, batched runs."""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import onnx
from onnx import helper

from .errors import SubpruneError

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
        raise SubpruneError(f"--device cuda: CUDAExecutionProvider is not usable here ({why})")
    return [CPU], f"using onnxruntime CPUExecutionProvider (CUDA not usable: {why})"


@functools.lru_cache(maxsize=1)
def _cuda_works() -> tuple[bool, str]:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
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
        ort.set_default_logger_severity(3)
    return ok, "" if ok else "its libraries did not load"


def _options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


def session(model: onnx.ModelProto, providers: list[str], capture: tuple[str, ...] = ()):
    """An inference session of ``model`` whose outputs are the model's plus ``capture`` tensors."""
    import onnxruntime as ort

    if capture:
        model = with_outputs(model, capture)
    ort.set_default_logger_severity(3)
    try:
        return ort.InferenceSession(model.SerializeToString(), _options(), providers=providers)
    except Exception as exc:
        raise SubpruneError(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:300]}") from None


def with_outputs(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names``."""
    copy = onnx.shape_inference.infer_shapes(model)
    present = {out.name for out in copy.graph.output}
    types = {info.name: info.type.tensor_type.elem_type for info in copy.graph.value_info}
    types.update({info.name: info.type.tensor_type.elem_type for info in copy.graph.input})
    for name in names:
        if name not in present:
            elem = types.get(name, onnx.TensorProto.FLOAT)
            copy.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            present.add(name)
    return copy


def batch_size_for(model: onnx.ModelProto, requested: int, samples: int) -> int:
    """``requested`` unless the model fixes its batch axis; a fixed batch must divide the data."""
    from .data import model_inputs

    fixed = {
        inp.type.tensor_type.shape.dim[0].dim_value
        for inp in model_inputs(model)
        if inp.type.tensor_type.shape.dim and inp.type.tensor_type.shape.dim[0].HasField("dim_value")
    }
    if not fixed:
        return requested
    size = fixed.pop()
    if samples % size:
        raise SubpruneError(f"the model has a fixed batch of {size}; {samples} samples is not a multiple of it")
    return size


def batches(feeds: dict[str, np.ndarray], indices: np.ndarray, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for consecutive chunks of ``indices`` (sample indices into every array)."""
    for start in range(0, len(indices), size):
        chunk = indices[start : start + size]
        yield {name: array[chunk] for name, array in feeds.items()}


def run(sess, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run a session and return the requested outputs (all when None) by name."""
    names = names or [out.name for out in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
