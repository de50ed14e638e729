"""Compare two models on the same data: output fidelity, accuracy and latency."""

from __future__ import annotations

import time

import numpy as np
import onnx

from .runtime import batches, run, session


def predict(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: list[str],
            batch_size: int) -> dict[str, np.ndarray]:
    """All outputs of ``model`` on ``feeds``, run in batches and concatenated along axis 0."""
    sess = session(model, providers)
    samples = len(next(iter(feeds.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for feed in batches(feeds, np.arange(samples), batch_size):
        for name, value in run(sess, feed).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output: relative error ||c - r|| / ||r||, mean per-sample cosine similarity, and
    top-1 agreement for classifier-shaped outputs (samples x classes)."""
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
