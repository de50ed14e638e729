"""Targets read off the consumers' outputs in the original model (calibrate.Product) give the
statistics that computing Y = A W from the unfolded input gives."""

import numpy as np
import pytest

import builders
from helpers import random_feeds
from onnx_subprune import runtime
from onnx_subprune.analyze import analyze
from onnx_subprune.graph import prepare
from onnx_subprune.calibrate import (capture_names, capture_stats, consumer_products, consumer_weights, split_samples,
                                     unfold)
from onnx_subprune.patches import RowWindows, UnfoldedRows


def windowed_conv():
    """A 3x3 stride-1 Conv on 16x16 maps (statistics in the windowed form) reading a Conv."""
    text = builders.header("float[N,3,16,16] x", "float[N,5,16,16] y") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        r = Relu (a)
        y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, w2, b2)
    }"""
    return builders.build(text, {"w1": (6, 3, 3, 3), "b1": (6,), "w2": (5, 6, 3, 3), "b2": (5,)})


def gemm_with_a_bias_per_sample():
    """A fixed batch of 4 whose second Gemm adds a (4, m) C: not a bias of its m outputs."""
    text = builders.header("float[4,10] x", "float[4,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm (b, w2, c2)
    }"""
    return builders.build(text, {"w1": (12, 10), "b1": (12,), "w2": (12, 3), "c2": (4, 3)})


def test_products_name_each_consumers_output_and_the_bias_in_it():
    for model, expected in (
        (builders.conv_bn_pool_conv(), {"e": "b2", "y": "b3"}),
        (builders.gemm_gemm(), {"c": "b2", "y": "b3"}),
        (builders.matmul_gelu_matmul(), {"h": None}),  # MatMul: the bias is the Add after it
        (gemm_with_a_bias_per_sample(), {}),
    ):
        model = prepare(model)  # nodes named, as the pipeline gives them
        groups = analyze(model).groups
        products = consumer_products(model, groups, consumer_weights(model, groups))
        outputs = {node.name: node.output[0] for node in model.graph.node}
        constants = {init.name: init for init in model.graph.initializer}
        got = {outputs[node]: product for node, product in products.items()}
        assert set(got) == set(expected)
        for output, bias in expected.items():
            if bias is None:
                assert got[output].bias is None
            else:
                want = np.frombuffer(constants[bias].raw_data, np.float32)
                np.testing.assert_array_equal(got[output].bias, want)


@pytest.mark.parametrize("name, samples", [
    ("conv_bn_pool_conv", 40), ("conv_flatten_gemm", 40), ("gemm_gemm", 40), ("matmul_gelu_matmul", 40),
    ("shared_input_heads", 40), ("windowed_conv", 24), ("conv_flatten_gemm", 1), ("shared_input_heads", 1),
])
def test_targets_from_outputs_equal_targets_from_the_input(name, samples, monkeypatch):
    """In every storage form (unfolded rows, windows, kept rows with one sample), for a lead and
    its followers, and with folds and a holdout: the statistics equal those made from A."""
    model = prepare(windowed_conv() if name == "windowed_conv" else getattr(builders, name)())
    groups = analyze(model).groups
    weights = consumer_weights(model, groups)
    products = consumer_products(model, groups, weights)
    consumers = [c for g in groups for c in g.consumers]
    assert products.keys() == {c.node for c in consumers}
    b_names, a_names = capture_names(consumers, products)
    session = runtime.session(model, ["CPUExecutionProvider"], tuple(dict.fromkeys(b_names + a_names)))
    reference = runtime.session(model, ["CPUExecutionProvider"], tuple(a_names))  # A from the original, apart
    feeds = random_feeds(model, samples)
    read = {UnfoldedRows: 0, RowWindows: 0}
    for form in read:
        def counted(self, output, bias, form=form, original=form.product_rows):
            read[form] += 1
            return original(self, output, bias)
        monkeypatch.setattr(form, "product_rows", counted)
    for split in (split_samples(samples, "auto", seed=1), split_samples(samples, 0.25, seed=1)):
        read_off = capture_stats(groups, session, reference, weights, feeds, split, 7, products=products)
        computed = capture_stats(groups, session, session, weights, feeds, split, 7)  # Y = A W from A's rows
        captured = runtime.run(session, feeds)
        for group, got, want in zip(groups, read_off, computed):
            for part in ("calibration", "holdout"):
                for consumer, a, b in zip(group.consumers, getattr(got, part) or (), getattr(want, part) or ()):
                    assert a.is_row_form == b.is_row_form
                    for field in ("gram", "cross", "rows", "targets", "b_sum", "y_sum"):
                        x, y = getattr(a, field), getattr(b, field)
                        assert (x is None) == (y is None)
                        if y is not None:
                            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=f"{consumer.node} {field}")
                    assert a.y_sq == pytest.approx(b.y_sq, rel=1e-5)
                    indices = split.holdout if part == "holdout" else (  # rows in fold order
                        np.concatenate(split.folds) if split.folds else split.calibration)
                    _assert_near_exact(a, consumer, captured, weights, indices)
    assert read[RowWindows if name == "windowed_conv" else UnfoldedRows] > 0


def _assert_near_exact(s, consumer, captured, weights, indices):
    """``s`` are within 1e-6 (relative, Frobenius) of the float64 statistics of ``consumer`` on
    the samples ``indices`` of ``captured``: onnxruntime sums the outputs in an order of its own,
    so single entries that cancel may differ more."""
    rows = unfold(consumer, captured[consumer.input][indices]).astype(np.float64)
    targets = rows @ weights[consumer.node]
    expected = {"b_sum": rows.sum(0), "y_sum": targets.sum(0), "y_sq": np.sum(targets**2)}
    expected.update({"rows": rows, "targets": targets} if s.is_row_form else
                    {"gram": rows.T @ rows, "cross": rows.T @ targets})
    for field, want in expected.items():
        got = getattr(s, field)
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want), f"{consumer.node} {field}"
