"""seq / asym capture from cached frontier tensors (onnx_subprune/frontier.py) gives the statistics
that re-running the whole partly pruned model and the whole original for every group gives."""

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_subprune import pipeline, runtime
from onnx_subprune.calibrate import capture_names
from onnx_subprune.config import PruneConfig
from onnx_subprune.frontier import Cache
from onnx_subprune.rewrite import rewrite

import builders

ARCH = Path(__file__).resolve().parent.parent / "models" / "arch"
MODELS = ["resnet_mixed", "csp_split_concat", "densenet_block", "mobilenetv3_se", "bert_layer",
          "bert_encoder_const", "resnext_grouped", "nhwc_cnn"]


def _feeds(name: str, samples: int) -> dict[str, np.ndarray]:
    data = "bert_calib" if name.startswith("bert") else "nhwc_calib" if name == "nhwc_cnn" else "digits_calib_small"
    with np.load(ARCH / f"{data}.npz") as archive:
        return {"input": archive["input"][:samples]}


def _recaptured(run, groups, index, plans):
    """Group ``index``'s statistics as every group was captured before frontiers: a session of
    the whole model pruned by ``plans`` and, for asym, one of the whole original."""
    group = groups[index]
    names = tuple(c.input for c in group.consumers)
    pruned = rewrite(run.model, plans) if plans else run.model
    current = runtime.session(pruned, run.providers, names)
    mine, targets = pipeline._current_matrices(run.model, group, run.weights, plans) if plans else (run.weights, None)
    for node in targets or ():  # the consumers an earlier group shrank: their weights as the rewrite wrote them
        _assert_rewritten_weight(pruned, next(c for c in group.consumers if c.node == node), mine[node])
    if run.config.method == "asym" and plans:
        reference = runtime.session(run.model, run.providers, tuple(capture_names(group.consumers, run.products)[1]))
        return run.capture([group], current, reference, mine, targets)[0]
    return run.capture([group], current, None, mine)[0]


def _assert_rewritten_weight(pruned, consumer, matrix):
    """``matrix`` is the consumer's (d, m) weight as read from the rewritten model."""
    from dataclasses import replace

    from onnx_subprune.graph import proto_attrs, read_constants
    from onnx_subprune.ops import LAYERS

    node = next(n for n in pruned.graph.node if n.name == consumer.node)
    rule = LAYERS[consumer.op]
    value = read_constants(pruned, {node.input[1]})[node.input[1]]
    written = rule.matrix(replace(consumer, scale=rule.scale(proto_attrs(node))), value)
    np.testing.assert_array_equal(matrix, written, err_msg=consumer.node)


def _assert_same(got, want, label):
    for part in ("calibration", "holdout"):
        for a, b in zip(getattr(got, part) or (), getattr(want, part) or ()):
            assert a.n_rows == b.n_rows, label
            scale = max(float(np.abs(b.gram).max()), 1e-12) if b.gram is not None else 1.0
            for field in ("gram", "cross", "rows", "targets", "b_sum", "y_sum"):
                x, y = getattr(a, field), getattr(b, field)
                if y is not None:
                    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{label} {part} {field}")
            assert a.y_sq == pytest.approx(b.y_sq, rel=1e-5), label


def _compare(monkeypatch, name, method, samples=24, batch_size=5, cache_memory=2048, model=None, feeds=None,
             **extra):
    """Prune ``name`` (or ``model`` on its calibration inputs) with frontier capture while
    checking every step against recapture; the steps compared and the result."""
    steps = []
    frontier_step = pipeline._capture_step

    def checked(run, groups, index, plans, pruned_side, original_side):
        got = frontier_step(run, groups, index, plans, pruned_side, original_side)
        _assert_same(got, _recaptured(run, groups, index, plans), f"{name} {method} group {index}")
        steps.append(index)
        return got

    monkeypatch.setattr(pipeline, "_capture_step", checked)
    config = PruneConfig(method=method, keep=0.5, batch_size=batch_size, cache_memory=cache_memory, **extra)
    model = onnx.load(ARCH / f"{name}.onnx") if model is None else model
    result = pipeline.prune(model, _feeds(name, samples) if feeds is None else feeds, config)
    return steps, result


@pytest.mark.parametrize("name", MODELS)
def test_asym_frontier_equals_per_group_recapture(monkeypatch, name):
    steps, result = _compare(monkeypatch, name, "asym")
    assert len(steps) == len(result.report.groups)


@pytest.mark.parametrize("name", ["resnet_mixed", "densenet_block", "bert_encoder"])
def test_seq_frontier_equals_per_group_recapture(monkeypatch, name):
    steps, result = _compare(monkeypatch, name, "seq")
    assert len(steps) == len(result.report.groups)


def test_asym_frontier_through_squeeze_and_unsqueeze(monkeypatch):
    """PP-OCRv5's neck and CTC head: groups cross Unsqueeze/Squeeze round trips and a Squeeze
    of the height axis."""
    model = builders.ctc_head()
    feeds = {"x": np.random.default_rng(0).standard_normal((24, 3, 2, 16)).astype(np.float32)}
    steps, result = _compare(monkeypatch, "ctc_head", "asym", model=model, feeds=feeds)
    assert len(steps) == len(result.report.groups) == 3


def test_cached_tensors_spill_to_a_file_that_is_removed(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    seen = []
    original_close = Cache.close

    def close(self):
        seen.append((self.spilled, list(tmp_path.iterdir())))
        original_close(self)

    monkeypatch.setattr(Cache, "close", close)
    _compare(monkeypatch, "resnet_mixed", "asym", cache_memory=0)
    assert seen and seen[-1][0] and seen[-1][1], "nothing went to disk with a zero budget"
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch_model_pads_the_frontier(monkeypatch):
    model = onnx.load(ARCH / "resnet_mixed.onnx")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    steps, result = _compare(monkeypatch, "resnet_mixed", "asym", samples=23, batch_size=32, model=model, holdout=0.2)
    assert len(steps) == len(result.report.groups) and result.report.samples["calibration"] % 4


def test_cache_keeps_arrays_in_memory_up_to_the_budget_then_on_disk():
    with Cache(budget=100) as cache:
        small, large = np.arange(10, dtype=np.float32), np.ones((20, 3), np.float32)
        cache.put("a", 0, small)
        cache.put("b", 0, large)
        assert not isinstance(cache.get("a", 0), np.memmap) and isinstance(cache.get("b", 0), np.memmap)
        np.testing.assert_array_equal(cache.get("b", 0), large)
        folder = cache._folder.name
        cache.drop("b")
        assert not list(Path(folder).iterdir())
        assert cache.in_memory == small.nbytes
    assert not Path(folder).exists()


@pytest.mark.parametrize("method", ["seq", "asym"])
def test_frontier_with_input_selections_equals_per_group_recapture(monkeypatch, method):
    """An input selection changes only its consumers' outputs: later groups see them refitted."""
    model = builders.unprunable_inputs()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((24, 8, 6, 6)).astype(np.float32),
             "t": rng.standard_normal((24, 5, 16)).astype(np.float32)}
    steps, result = _compare(monkeypatch, "unprunable_inputs", method, model=model, feeds=feeds, select_inputs="always")
    assert len(steps) == len(result.report.groups) == 3


@pytest.mark.parametrize("name", ["bert_layer", "bert_encoder"])
def test_asym_frontier_with_input_selections_among_groups_equals_per_group_recapture(monkeypatch, name):
    """The LayerNorms' readers (too narrow for the default, see MIN_OUTPUTS_LAST_AXIS) selected
    between the attention and FFN groups."""
    monkeypatch.setattr(importlib.import_module("onnx_subprune.analyze"), "MIN_OUTPUTS_LAST_AXIS", 1)
    steps, result = _compare(monkeypatch, name, "asym", select_inputs="always")
    assert any(g.producers == [] for g in result.report.groups)
    assert len(steps) == len(result.report.groups)
