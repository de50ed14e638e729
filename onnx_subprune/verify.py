"""Compare two models on the same data: output fidelity, accuracy and latency."""

from __future__ import annotations

import time

import numpy as np
import onnx

from .errors import SubpruneError, quote
from .graph import static_dim
from .runtime import batches, run, session


def predict(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: list[str],
            batch_size: int) -> dict[str, np.ndarray]:
    """All outputs of ``model`` on ``feeds``, run in batches and concatenated along axis 0."""
    return predict_with(session(model, providers), feeds, batch_size)


def predict_with(sess, feeds: dict[str, np.ndarray], batch_size: int,
                 extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All outputs of session ``sess`` on ``feeds`` (first axis = samples) and the inputs
    ``extra`` that are not per sample, run in batches and concatenated along axis 0."""
    samples = len(next(iter(feeds.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for feed in batches(feeds, np.arange(samples), batch_size):
        for name, value in run(sess, feed, extra=extra).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output: relative error ||c - r|| / ||r||, mean per-sample cosine similarity, and
    top-1 agreement for classifier-shaped outputs (samples x classes).

    A one-line :class:`SubpruneError` when the models' outputs differ in name or shape, or one
    holds NaN or Inf (no error is defined then)."""
    if set(reference) != set(candidate):
        raise SubpruneError(f"the models have different outputs: {', '.join(map(quote, reference))} in the "
                            f"original, {', '.join(map(quote, candidate))} in the pruned model")
    for name, ref in reference.items():
        if ref.shape != candidate[name].shape:
            raise SubpruneError(f"output {quote(name)} has shape {list(ref.shape)} from the original and "
                                f"{list(candidate[name].shape)} from the pruned model on the same data")
        for label, value in (("original", ref), ("pruned model", candidate[name])):
            if value.dtype.kind in "fc" and not np.isfinite(value).all():
                raise SubpruneError(f"output {quote(name)} of the {label} is NaN or Inf on the data "
                                    f"(overflow, or non-finite weights)")
    result = {}
    for name, ref in reference.items():
        ref64, cand64 = ref.astype(np.float64), candidate[name].astype(np.float64)
        error = float(np.linalg.norm(cand64 - ref64) / max(np.linalg.norm(ref64), 1e-30))
        flat_r, flat_c = ref64.reshape(len(ref64), -1), cand64.reshape(len(cand64), -1)
        norms = np.linalg.norm(flat_r, axis=1) * np.linalg.norm(flat_c, axis=1)
        cosine = float(np.mean(np.sum(flat_r * flat_c, axis=1) / np.maximum(norms, 1e-30)))
        entry = {"relative_error": error, "cosine": cosine}
        if is_classifier(ref):
            entry["top1_agreement"] = float(np.mean(ref.argmax(1) == candidate[name].argmax(1)))
        result[name] = entry
    return result


def interface_differences(original: onnx.ModelProto, pruned: onnx.ModelProto) -> list[str]:
    """How the inputs and outputs (names, element types, declared shapes) of two models differ,
    one phrase each; empty when they match. A dynamic dim (symbolic, unset, 0 or -1) matches any."""
    from .data import model_inputs

    found = []
    for kind, first, second in (("input", model_inputs(original), model_inputs(pruned)),
                                ("output", list(original.graph.output), list(pruned.graph.output))):
        a, b = {v.name: v for v in first}, {v.name: v for v in second}
        found += [f"{kind} {quote(name)} only in the original" for name in a if name not in b]
        found += [f"{kind} {quote(name)} only in the pruned model" for name in b if name not in a]
        for name in (n for n in a if n in b):
            type_a, type_b = _type_text(a[name]), _type_text(b[name])
            if type_a != type_b:
                found.append(f"{kind} {quote(name)} is {type_a} in the original and {type_b} in the pruned model")
            elif not _shapes_match(a[name], b[name]):
                found.append(f"{kind} {quote(name)} has shape {_shape_text(a[name])} in the original and "
                             f"{_shape_text(b[name])} in the pruned model")
    return found


def _type_text(value: onnx.ValueInfoProto) -> str:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return kind or "untyped"
    elem = value.type.tensor_type.elem_type
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))
    except Exception:
        return onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    tensor = value.type.tensor_type
    if value.type.WhichOneof("value") != "tensor_type" or not tensor.HasField("shape"):
        return None
    return [static_dim(dim) for dim in tensor.shape.dim]


def _shapes_match(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> bool:
    dims_a, dims_b = _dims(a), _dims(b)
    if dims_a is None or dims_b is None:
        return True
    return len(dims_a) == len(dims_b) and all(x is None or y is None or x == y for x, y in zip(dims_a, dims_b))


def _shape_text(value: onnx.ValueInfoProto) -> str:
    dims = _dims(value)
    return "unknown" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def is_classifier(output: np.ndarray) -> bool:
    """Shaped like class scores: (samples, classes) with more than one class."""
    return output.ndim == 2 and output.shape[1] > 1


def accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of class scores (samples, classes) against integer labels (samples,)."""
    return float(np.mean(output.argmax(1) == labels.reshape(-1)))


def latency_ms(model: onnx.ModelProto, feed: dict[str, np.ndarray], providers: list[str],
               repeats: int = 30) -> float:
    """Median wall time of one run on ``feed`` in milliseconds (after 3 warm-up runs)."""
    sess = session(model, providers)
    for _ in range(3):
        run(sess, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(sess, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)
