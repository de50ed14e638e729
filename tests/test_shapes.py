"""Pinned input shapes (``--input-shape``), the warning for MACs counted with open dims, and the
written model's interface: the original's dim names, none made up (issue 11 items 3 and 6)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import builders
from helpers import invoke, save_npz, save_onnx
from onnx_subprune.config import PruneConfig
from onnx_subprune.errors import SubpruneError
from onnx_subprune.metrics import count_macs, count_macs_open
from onnx_subprune.pipeline import dry_run, prune
from onnx_subprune.shapes import keep_interface, parse_input_shape, pin_shapes

CPU = dict(device="cpu")


def symbolic_cnn(output: str = "float[N,4,?,?] y") -> onnx.ModelProto:
    """Conv -> Relu -> Conv on an input of symbolic height and width."""
    text = builders.header("float[N,3,H,W] x", output) + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        c = Relu (a)
        y = Conv <kernel_shape = [3, 3]> (c, w2, b2)
    }"""
    return builders.build(text, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (4, 8, 3, 3), "b2": (4,)})


def feeds(size: int = 12, samples: int = 40) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((samples, 3, size, size)).astype(np.float32)}


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in value.type.tensor_type.shape.dim]


def test_parse_input_shape():
    assert parse_input_shape("x:1x3x224x224") == ("x", (1, 3, 224, 224))
    assert parse_input_shape("a:b:2x5") == ("a:b", (2, 5))
    for text in ("x", "x:", ":1x2", "x:1x0", "x:1x-2", "x:1xa"):
        with pytest.raises(SubpruneError, match="NAME:DIMS"):
            parse_input_shape(text)


def test_pinning_fixes_symbolic_dims_and_macs():
    model = symbolic_cnn()
    assert len(count_macs_open(model)[1]) == 2  # both convs count H and W as 1
    pinned = pin_shapes(model, [("x", (1, 3, 12, 12))])
    assert dims(pinned.graph.input[0]) == ["N", 3, 12, 12]  # the batch stays dynamic
    macs, open_layers = count_macs_open(pinned)
    assert not open_layers and macs == 8 * 12 * 12 * 27 + 4 * 10 * 10 * 72
    assert pin_shapes(model, []) is model


@pytest.mark.parametrize("shape, message", [
    (("y", (1, 3, 8, 8)), "has no input 'y'"),
    (("x", (1, 3, 8)), "rank 3"),
    (("x", (1, 2, 8, 8)), "dim 1 is 2, the model fixes it at 3"),
])
def test_pinning_errors(shape, message):
    with pytest.raises(SubpruneError, match=message):
        pin_shapes(symbolic_cnn(), [shape])


def test_pinned_shape_is_checked_against_the_data():
    with pytest.raises(SubpruneError, match="pins 3x16x16"):
        prune(symbolic_cnn(), feeds(12), PruneConfig(input_shapes=(("x", (1, 3, 16, 16)),), **CPU))


def test_pinned_model_is_written_with_the_original_interface():
    model = symbolic_cnn("float[N,4,H2,W2] y")
    result = prune(model, feeds(12), PruneConfig(input_shapes=(("x", (1, 3, 12, 12)),), **CPU))
    assert dims(result.model.graph.input[0]) == ["N", 3, "H", "W"]
    assert dims(result.model.graph.output[0]) == ["N", 4, "H2", "W2"]
    assert result.report.macs["before"] == 8 * 12 * 12 * 27 + 4 * 10 * 10 * 72


def test_dry_run_macs_with_pinned_shapes_and_a_warning_without():
    model, notes = symbolic_cnn(), []
    open_macs = dry_run(model, None, PruneConfig(target_params=0.5, allocation="uniform", **CPU), log=notes.append)
    assert open_macs.macs["before"] == count_macs(model) and any("MACs count symbolic dims as 1" in n for n in notes)
    notes.clear()
    pinned = dry_run(model, None, PruneConfig(target_params=0.5, allocation="uniform",
                                              input_shapes=(("x", (1, 3, 32, 32)),), **CPU), log=notes.append)
    assert pinned.macs["before"] == 8 * 32 * 32 * 27 + 4 * 30 * 30 * 72 and not notes


@pytest.mark.parametrize("output", ["float[N,4,?,?] y", "float[N,4,H2,W2] y", "float y"])
def test_outputs_keep_the_original_dims(output):
    model = symbolic_cnn(output)
    pruned = prune(model, feeds(12), PruneConfig(**CPU)).model
    assert pruned.graph.output[0].type == model.graph.output[0].type
    assert pruned.graph.input[0].type == model.graph.input[0].type
    assert "unk__" not in str(pruned.graph.output)


def test_keep_interface_returns_the_model_when_nothing_differs():
    model = symbolic_cnn()
    assert keep_interface(model, model) is model


def test_cli_input_shape(tmp_path):
    path = save_onnx(tmp_path / "m.onnx", symbolic_cnn())
    result = invoke("analyze", path, "--json")
    assert result.exit_code == 0 and "MACs count symbolic dims as 1" in result.stderr
    result = invoke("analyze", path, "--input-shape", "x:1x3x20x20", "--json")
    assert result.exit_code == 0 and "warning" not in result.stderr
    for shape, message in (("q:1x3x2x2", "has no input 'q'"), ("x:3x20x20", "rank 3"), ("x:1x3x2", "rank 3"),
                           ("x:1x3x2xz", "NAME:DIMS")):
        result = invoke("analyze", path, "--input-shape", shape)
        assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    calib = save_npz(tmp_path / "c.npz", **feeds(20))
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--calib", calib, "--input-shape", "x:1x3x20x20",
                    "--device", "cpu", "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    result = invoke("sensitivity", path, "--calib", calib, "--input-shape", "x:1x3x24x24", "--device", "cpu", "--quiet")
    assert result.exit_code == 1 and "expects [?, 3, 24, 24]" in result.stderr
