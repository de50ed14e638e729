"""im2col follows the Conv's pads, strides, dilations and kernel shape exactly."""

import numpy as np
import pytest
from onnx import numpy_helper

import builders
from helpers import run
from onnx_subprune.types import ConvGeometry
from onnx_subprune.unfold import unfold_conv, unfold_dense

CASES = [
    # kernel, strides, dilations, pads, input spatial
    ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (9, 9)),
    ((3, 3), (2, 2), (1, 1), (0, 0, 0, 0), (9, 8)),
    ((3, 3), (1, 1), (2, 2), (2, 2, 2, 2), (10, 10)),
    ((2, 5), (2, 1), (1, 2), (1, 0, 0, 3), (7, 11)),
    ((1, 1), (2, 2), (1, 1), (0, 0, 0, 0), (6, 6)),
    ((4,), (3,), (2,), (1, 2), (17,)),
]


def _conv_model(kernel, strides, dilations, pads, spatial, channels=4, outputs=5):
    dims = ",".join(str(s) for s in spatial)
    text = builders.header(f"float[N,{channels},{dims}] x", "float y") + f""" {{
        y = Conv <kernel_shape = {list(kernel)}, strides = {list(strides)}, dilations = {list(dilations)}, pads = {list(pads)}> (x, w)
    }}"""
    return builders.build(text, {"w": (outputs, channels, *kernel)})


@pytest.mark.parametrize("kernel,strides,dilations,pads,spatial", CASES)
def test_unfold_times_weight_is_the_convolution(kernel, strides, dilations, pads, spatial):
    model = _conv_model(kernel, strides, dilations, pads, spatial)
    weight = numpy_helper.to_array(model.graph.initializer[0])
    x = np.random.default_rng(0).standard_normal((3, 4, *spatial)).astype(np.float32)
    (expected,) = run(model, {"x": x})
    rows = unfold_conv(x, ConvGeometry(kernel, strides, dilations, pads))
    got = rows @ weight.reshape(weight.shape[0], -1).T
    want = np.moveaxis(expected, 1, -1).reshape(-1, weight.shape[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_unfold_dense_keeps_tokens_as_rows():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert unfold_dense(x).shape == (6, 4)
    np.testing.assert_array_equal(unfold_dense(x)[4], x[1, 1])
