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


SCALE_SPREAD = 100.0
"""Ratio of the largest to the smallest channel norm (axis 1 or the last) of an output from
which it is *mixed-scale*: its overall relative error is then dominated by the large channels (a
YOLO output's box coordinates in pixels next to its 0-1 class scores), and the channel-balanced
error is reported too."""


def balanced_error(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Root mean square over the channels j of ||c_j - r_j|| / ||r_j||, for a float output of
    rank 3 or more whose channel axis (axis 1, or the last axis: (samples, anchors, 4 + classes)
    heads) has channel norms ||r_j|| spanning at least :data:`SCALE_SPREAD` (channels that are
    zero in the reference left out, and not a softmax axis); the larger where both axes do;
    else None. Each channel counts alike, so small-scale channels that carry the decision
    (class scores) are not drowned by large-scale ones (box coordinates)."""
    if reference.ndim < 3 or reference.dtype.kind != "f":
        return None
    errors = [error for axis in sorted({1, reference.ndim - 1})
              if (error := _channel_balanced(reference, candidate, axis)) is not None]
    return max(errors) if errors else None


def _channel_balanced(reference: np.ndarray, candidate: np.ndarray, axis: int) -> float | None:
    """:func:`balanced_error` with the channels on ``axis``; None where the reference is a
    probability distribution over them (softmax: classes compete, and the rare ones' tiny
    probabilities are not scores of their own). Whether an axis qualifies depends on the
    reference alone, so the candidate is read only where it does; sums are float64, with no
    float64 copy of the arrays."""
    others = tuple(i for i in range(reference.ndim) if i != axis)
    if reference.min() >= 0 and np.allclose(reference.sum(axis=axis, dtype=np.float64), 1.0, atol=1e-3):
        return None
    norms = np.sqrt(_square_sum(reference, others))
    live = norms > 0
    if live.sum() < 2 or norms[live].max() < SCALE_SPREAD * norms[live].min():
        return None
    errors = np.sqrt(_square_sum(candidate - reference, others)[live]) / norms[live]
    return float(np.sqrt(np.mean(np.square(errors))))


def _square_sum(values: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Sum of squares over ``axes`` (all: None), accumulated in float64 without a float64 copy."""
    return np.sum(np.square(values), axis=axes, dtype=np.float64)


def output_error(entry: dict) -> float:
    """The error of one output's :func:`fidelity` entry: its relative error, or its
    channel-balanced error when that is larger (mixed-scale outputs)."""
    return max(entry["relative_error"], entry.get("balanced_error", 0.0))


def mixed_scale(outputs: dict[str, dict]) -> list[str]:
    """The outputs of a :func:`fidelity` result whose channel-balanced error exceeds their
    relative error (the one :func:`output_error` then gives)."""
    return [name for name, o in outputs.items() if o.get("balanced_error", 0.0) > o["relative_error"]]


def fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output: relative error ||c - r|| / ||r||, mean per-sample cosine similarity,
    top-1 agreement for classifier-shaped outputs (samples x classes), and for mixed-scale
    outputs the channel-balanced error (:func:`balanced_error`).

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
        cand = candidate[name]
        if ref.dtype not in (np.float32, np.float64):  # integers, and float16 whose squares overflow
            ref, cand = ref.astype(np.float64), cand.astype(np.float64)
        error = float(np.sqrt(_square_sum(cand - ref)) / max(np.sqrt(_square_sum(ref)), 1e-30))
        flat_r, flat_c = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
        norms = np.sqrt(_square_sum(flat_r, (1,)) * _square_sum(flat_c, (1,)))
        dots = np.sum(flat_r * flat_c, axis=1, dtype=np.float64)
        cosine = float(np.mean(dots / np.maximum(norms, 1e-30)))
        entry = {"relative_error": error, "cosine": cosine}
        balanced = balanced_error(ref, cand)
        if balanced is not None:
            entry["balanced_error"] = balanced
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
    """Median wall time of one run on ``feed`` in milliseconds (after 3 warm-up runs), with
    onnxruntime's default thread settings."""
    sess = session(model, providers, spin=True)
    for _ in range(3):
        run(sess, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(sess, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)
