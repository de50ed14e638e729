"""Streaming statistics equal those of the full unfolded matrix; memory does not grow with samples."""

import tracemalloc

import onnx

import numpy as np
import pytest

import builders
from helpers import random_feeds
from onnx_subprune import calibrate, runtime
from onnx_subprune.analyze import analyze
from onnx_subprune.calibrate import _Accumulator, capture_stats, split_samples, unfold
from onnx_subprune.graph import read_constants
from onnx_subprune.ops import LAYERS


def _setup(model, samples):
    groups = analyze(model).groups
    consumers = [c for g in groups for c in g.consumers]
    values = read_constants(model, {c.weight for c in consumers})
    weights = {c.node: LAYERS[c.op].matrix(c, values[c.weight]) for c in consumers}
    names = tuple(c.input for c in consumers)
    session = runtime.session(model, ["CPUExecutionProvider"], names)
    feeds = random_feeds(model, samples)
    return groups, weights, session, feeds


@pytest.mark.parametrize("name", ["conv_bn_pool_conv", "conv_flatten_gemm", "matmul_gelu_matmul"])
def test_streaming_equals_full_unfolded_matrix(name):
    model = getattr(builders, name)()
    groups, weights, session, feeds = _setup(model, 40)
    split = split_samples(40, 0.25, seed=3)
    stats = capture_stats(groups, session, None, weights, feeds, split, batch_size=7)
    captured = runtime.run(session, feeds)
    for group, group_stats in zip(groups, stats):
        assert group_stats.folds is None
        for consumer, cal, hold in zip(group.consumers, group_stats.calibration, group_stats.holdout):
            for s, indices in ((cal, split.calibration), (hold, split.holdout)):
                _assert_stats_of(s, consumer, captured, weights, indices)


@pytest.mark.parametrize("name", ["conv_bn_pool_conv", "conv_flatten_gemm"])
def test_fold_statistics_in_one_pass(name):
    """With folds, each fold's statistics are those of its samples (batches of 7 straddle the
    folds) and the calibration statistics, of every sample, are their sum (rows in fold order)."""
    model = getattr(builders, name)()
    groups, weights, session, feeds = _setup(model, 30)
    split = split_samples(30, "auto", seed=3)
    stats = capture_stats(groups, session, None, weights, feeds, split, batch_size=7)
    captured = runtime.run(session, feeds)
    for group, group_stats in zip(groups, stats):
        assert group_stats.holdout is None and len(group_stats.folds) == 4
        for index, consumer in enumerate(group.consumers):
            _assert_stats_of(group_stats.calibration[index], consumer, captured, weights,
                             np.concatenate(split.folds))
            for fold, indices in zip(group_stats.folds, split.folds):
                _assert_stats_of(fold[index], consumer, captured, weights, indices)
                assert fold[index].is_row_form == group_stats.calibration[index].is_row_form


@pytest.mark.parametrize("samples", [40, 1])  # Gram form, and row form (64 rows, 90 columns)
def test_consumers_reading_one_input_the_same_way_share_its_statistics(samples, monkeypatch):
    """The class and box convs of shared_input_heads unfold their input once: their statistics
    (with 40 samples the sum of four folds') hold the very same Gram matrix (or rows) and column
    sums, and every statistic is bit for bit what each consumer captured alone gives; the 1x1
    conv reading the same input has its own."""
    model = builders.shared_input_heads()
    groups, weights, session, feeds = _setup(model, samples)
    split = split_samples(samples, 0.0 if samples == 1 else "auto", seed=3)  # 40: four folds, summed
    assert samples == 1 or split.folds

    def capture():
        (stats,) = capture_stats(groups, session, None, weights, feeds, split, batch_size=7)
        return dict(zip((c.node for c in groups[0].consumers), stats.calibration))

    shared = capture()
    monkeypatch.setattr(calibrate, "_shared_inputs", lambda consumers, _: {c.node: c.node for c in consumers})
    alone = capture()
    node_of = {c.weight: c.node for c in groups[0].consumers}
    cls, box, obj = (shared[node_of[weight]] for weight in ("wc", "wb", "wo"))
    b_of = (lambda s: s.rows) if cls.is_row_form else (lambda s: s.gram)
    assert cls.is_row_form == (samples == 1)
    assert b_of(cls) is b_of(box) and cls.b_sum is box.b_sum and b_of(obj) is not b_of(cls)
    for node, stats in shared.items():
        for field in ("gram", "cross", "rows", "targets", "b_sum", "y_sum", "weight"):
            a, b = getattr(stats, field), getattr(alone[node], field)
            assert (a is None and b is None) or np.array_equal(a, b), (node, field)
        assert (stats.n_rows, stats.y_sq) == (alone[node].n_rows, alone[node].y_sq)


def _assert_stats_of(s, consumer, captured, weights, indices):
    """``s`` are the statistics of ``consumer`` on the samples ``indices`` of ``captured``."""
    rows = unfold(consumer, captured[consumer.input][indices]).astype(np.float64)
    targets = rows @ weights[consumer.node]
    assert s.n_rows == len(rows)
    if s.is_row_form:
        np.testing.assert_allclose(s.rows, rows, rtol=1e-6, atol=1e-9)
    else:
        np.testing.assert_allclose(s.gram, rows.T @ rows, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s.cross, rows.T @ targets, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.y_sq, np.sum(targets**2), rtol=1e-6)
    np.testing.assert_allclose(s.b_sum, rows.sum(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.y_sum, targets.sum(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("samples", [2, 5, 30, 127])
def test_auto_split_folds_every_sample_once(samples):
    split = split_samples(samples, "auto", seed=7)
    assert split.kind == f"cv-{min(4, samples)}" and len(split.holdout) == 0
    np.testing.assert_array_equal(split.calibration, np.arange(samples))
    np.testing.assert_array_equal(np.sort(np.concatenate(split.folds)), np.arange(samples))
    sizes = [len(f) for f in split.folds]
    assert max(sizes) - min(sizes) <= 1 and all(np.all(np.diff(f) > 0) for f in split.folds)
    fold_of = split.fold_of()
    for fold, indices in enumerate(split.folds):
        np.testing.assert_array_equal(np.flatnonzero(fold_of == fold), indices)
    again = split_samples(samples, "auto", seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(split.folds, again.folds))


def test_auto_split_seeds_and_sizes():
    one, other = split_samples(40, "auto", seed=1), split_samples(40, "auto", seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(one.folds, other.folds))
    assert split_samples(1, "auto", 0).kind == "none"
    fixed = split_samples(128, "auto", seed=1)
    assert fixed.kind == "fixed" and not fixed.folds and len(fixed.holdout) == round(0.2 * 128)
    assert split_samples(128, 0.2, seed=1).holdout.tolist() == fixed.holdout.tolist()
    assert split_samples(64, 0, 0).kind == "none" and split_samples(64, 0.2, 0).kind == "fixed"


def test_row_form_when_fewer_rows_than_columns():
    model = builders.conv_flatten_gemm()  # Gemm after Flatten: 96 columns
    groups, weights, session, feeds = _setup(model, 20)
    stats = capture_stats(groups, session, None, weights, feeds, split_samples(20, 0, 0), 8)
    flatten_gemm = stats[0].calibration[0]
    assert flatten_gemm.is_row_form and flatten_gemm.rows.shape == (20, 96)
    assert not stats[1].calibration[0].is_row_form


def relative(got: np.ndarray, want: np.ndarray) -> float:
    """Frobenius norm of the error relative to that of ``want``."""
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_cross_statistics_use_the_reference_model():
    model = builders.conv_bn_pool_conv()
    groups, weights, session, feeds = _setup(model, 12)
    shifted = {k: v + 1.0 for k, v in feeds.items()}
    consumer = groups[0].consumers[0]
    acc = _Accumulator(weights[consumer.node], weights[consumer.node], consumer.block, 12)
    x_b = runtime.run(session, feeds)[consumer.input]
    x_a = runtime.run(session, shifted)[consumer.input]
    acc.add(consumer, x_b, x_a)
    rows, ref_rows = unfold(consumer, x_b).astype(float), unfold(consumer, x_a).astype(float)
    cross = acc.stats().cross  # float32 products (GRAM_BLOCK): within 1e-6 relative, as a whole
    assert relative(cross, rows.T @ (ref_rows @ weights[consumer.node])) < 1e-6
    assert relative(cross, rows.T @ (rows @ weights[consumer.node])) > 1e-2  # A, not B


def test_memory_does_not_grow_with_samples():
    model = builders.conv_bn_pool_conv()
    groups, weights, session, _ = _setup(model, 1)
    consumer = groups[0].consumers[0]
    x = runtime.run(session, random_feeds(model, 64))[consumer.input]

    def peak(batches: int) -> int:
        tracemalloc.start()
        acc = _Accumulator(weights[consumer.node], weights[consumer.node], consumer.block, 64 * batches)
        for _ in range(batches):
            acc.add(consumer, x, x)
        acc.stats()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    # small batches are gathered up to a bounded chunk; count batches in whole chunks
    rows = len(x) * unfold(consumer, x[:1]).shape[0]
    chunk = min(-(-calibrate.GATHER_ROWS // rows), -(-calibrate.GATHER_ENTRIES // x.size))
    small, large = peak(2 * chunk), peak(16 * chunk)
    assert large < 1.2 * small, (small, large)


@pytest.mark.parametrize("name", ["resnet_mixed", "mobilenetv2", "mobilenetv3_se", "csp_split_concat",
                                  "densenet_block", "resnext_grouped", "bert_encoder", "nhwc_cnn"])
def test_single_precision_gram_matches_double_on_the_architectures(name):
    """B^T B and B^T Y are summed in float32 over blocks of rows (BLAS speed) into float64 totals: on real
    activations every statistic stays within 1e-6 (relative, Frobenius) of the float64 one."""
    from test_architectures import ARCH, _feeds

    model = onnx.load(ARCH / f"{name}.onnx")
    groups, weights, session, _ = _setup(model, 1)
    feeds = _feeds(name, 64)
    stats = capture_stats(groups, session, None, weights, feeds, split_samples(64, 0.0, seed=0), batch_size=16)
    captured = runtime.run(session, feeds)
    for group, group_stats in zip(groups, stats):
        for consumer, s in zip(group.consumers, group_stats.calibration):
            rows = unfold(consumer, captured[consumer.input]).astype(np.float64)
            if s.is_row_form:
                continue
            targets = rows @ weights[consumer.node]
            assert relative(s.gram, rows.T @ rows) < 1e-6, consumer.node
            assert relative(s.cross, rows.T @ targets) < 1e-6, consumer.node
            assert abs(s.y_sq - np.sum(targets**2)) <= 1e-6 * np.sum(targets**2)
