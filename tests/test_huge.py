"""Models beyond protobuf's 2 GiB (graph.PROTO_LIMIT): onnx's checker and onnxruntime read them
from a temporary file with external data, shape inference never serializes the weights, and the
pruned model is written with external data. The fast tests lower the limit so that LeNet-5 takes
those paths; the slow one prunes a real 2 GiB model."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import ARCH, MODELS, invoke
from onnx_subprune import graph, runtime
from onnx_subprune.errors import SubpruneError

CALIB = MODELS / "digits_calib.npz"
PRUNE = ("--calib", CALIB, "--keep", "0.5", "--device", "cpu", "--quiet")
SMALL_MODELS = [MODELS / "lenet5.onnx", MODELS / "resnet_small.onnx", *sorted(ARCH.glob("*.onnx"))]


@pytest.fixture
def huge(monkeypatch, tmp_path):
    """Every model counts as beyond protobuf's limit (the limit lowered to 10 kB); temporary
    folders go to ``tmp_path / "tmp"``, which the test can check is left empty."""
    monkeypatch.setattr(graph, "PROTO_LIMIT", 10_000)
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _same_weights(first: Path, second: Path) -> bool:
    """The models in the two files have the same initializers (names and values)."""
    a, b = ({i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer} for path in (first, second))
    return a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("path", SMALL_MODELS, ids=lambda p: p.stem)
def test_proto_bytes_bounds_the_serialized_size(path):
    model = onnx.load(path)
    extra = graph.proto_bytes(model) - len(model.SerializeToString())
    assert 0 <= extra <= 12 * len(model.graph.initializer)


def test_proto_bytes_counts_typed_data():
    values = helper.make_tensor("w", TensorProto.INT64, [300], list(range(-150, 150)))  # int64_data, not raw
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "g", [], [helper.make_tensor_value_info("y", TensorProto.INT64, [300])],
        initializer=[values]))
    assert len(model.SerializeToString()) <= graph.proto_bytes(model) <= len(model.SerializeToString()) + 12


@pytest.mark.parametrize("path", SMALL_MODELS, ids=lambda p: p.stem)
def test_infer_shapes_matches_onnx_and_leaves_the_model_alone(path):
    model = onnx.load(path)
    before = model.SerializeToString()
    assert graph.infer_shapes(model) == onnx.shape_inference.infer_shapes(model)
    assert graph.infer_shapes(model, values=True) == onnx.shape_inference.infer_shapes(model, data_prop=True)
    assert model.SerializeToString() == before


def test_on_disk_writes_external_data_and_removes_the_folder(huge):
    model = onnx.load(MODELS / "lenet5.onnx")
    with graph.on_disk(model) as path:
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
        assert path.stat().st_size < 10_000
        written = onnx.load(path)
        assert written.graph.node == model.graph.node
        assert _same_weights(path, MODELS / "lenet5.onnx")
    with pytest.raises(RuntimeError), graph.on_disk(model):
        raise RuntimeError("removed on errors too")
    assert not any(huge.iterdir())


def test_a_session_of_a_huge_model_loads_from_a_file(huge, monkeypatch):
    model = onnx.load(MODELS / "lenet5.onnx")
    feeds = {"input": np.load(CALIB)["input"][:4]}
    sources = _spy(monkeypatch, ort, "InferenceSession")
    got = runtime.run(runtime.session(model, ["CPUExecutionProvider"]), feeds)
    monkeypatch.setattr(graph, "PROTO_LIMIT", 2**31 - 1)
    want = runtime.run(runtime.session(model, ["CPUExecutionProvider"]), feeds)
    assert [type(source) for source in sources] == [str, bytes]
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    assert not any(huge.iterdir())


def test_the_checker_reads_a_huge_model_from_a_file(huge, monkeypatch):
    model = onnx.load(MODELS / "lenet5.onnx")
    sources = _spy(monkeypatch, onnx.checker, "check_model")
    graph.check_onnx(model)
    assert len(sources) == 1 and isinstance(sources[0], os.PathLike)
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(onnx.checker.ValidationError, match="NoSuchOp"):
        graph.check_onnx(model)
    path = huge.parent / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(SubpruneError, match="invalid ONNX model .*NoSuchOp"):
        graph.load_model(path)
    assert not any(huge.iterdir())


def test_a_huge_model_is_pruned_and_written_with_external_data(huge, monkeypatch, tmp_path):
    sessions = _spy(monkeypatch, ort, "InferenceSession")
    result = invoke("prune", MODELS / "lenet5.onnx", "-o", tmp_path / "out.onnx", *PRUNE)
    assert result.exit_code == 0, result.stderr
    assert any(isinstance(source, str) for source in sessions)  # parts under the limit load from bytes
    assert all(isinstance(source, str) or len(source) <= graph.PROTO_LIMIT for source in sessions)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data", "tmp"]
    assert not any(huge.iterdir())
    monkeypatch.setattr(graph, "PROTO_LIMIT", 2**31 - 1)
    inline = invoke("prune", MODELS / "lenet5.onnx", "-o", tmp_path / "inline.onnx", *PRUNE)
    assert inline.exit_code == 0, inline.stderr
    assert _same_weights(tmp_path / "out.onnx", tmp_path / "inline.onnx")


def _spy(monkeypatch, owner, name: str) -> list:
    """Record the first argument of every call of ``owner.name`` (which still runs)."""
    calls, real = [], getattr(owner, name)

    def spied(source, *args, **kwargs):
        calls.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(owner, name, spied)
    return calls


WIDE, HIDDEN = 131072, 2048
"""The slow test's input features and hidden channels: two [WIDE, HIDDEN] float32 weights of
1 GiB each, so the model is just over protobuf's limit."""


def _build_huge(folder: Path) -> Path:
    """``folder/huge.onnx`` and its weights ``folder/huge.bin``: x [N, WIDE] -> MatMul wa and
    MatMul wb (each [WIDE, HIDDEN]) -> Add -> Relu -> MatMul w2 [HIDDEN, 256] -> Add b2 -> Relu
    -> MatMul w3 [256, 10] -> y [N, 10] (groups: the HIDDEN channels wa and wb share, and 256).
    The large weights are written to the file in chunks, never held whole."""
    rng = np.random.default_rng(0)
    large = []
    with open(folder / "huge.bin", "wb") as handle:
        for name in ("wa", "wb"):
            large.append(_external(name, [WIDE, HIDDEN], "huge.bin", handle.tell()))
            for _ in range(0, WIDE, 8192):
                (rng.standard_normal((8192, HIDDEN), dtype=np.float32) / np.float32(np.sqrt(WIDE))).tofile(handle)
    small = {"w2": rng.standard_normal((HIDDEN, 256), dtype=np.float32) / np.float32(np.sqrt(HIDDEN)),
             "b2": np.zeros(256, np.float32), "w3": rng.standard_normal((256, 10), dtype=np.float32) / np.float32(16)}
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("MatMul", ["x", "wb"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["c"]), helper.make_node("Add", ["c", "b2"], ["d"]),
             helper.make_node("Relu", ["d"], ["e"]), helper.make_node("MatMul", ["e", "w3"], ["y"])]
    model = helper.make_model(
        helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDE])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                          initializer=large + [numpy_helper.from_array(v, k) for k, v in small.items()]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, folder / "huge.onnx")
    return folder / "huge.onnx"


def _external(name: str, dims: list[int], location: str, offset: int) -> TensorProto:
    """A float32 initializer whose data is in file ``location`` at ``offset``."""
    tensor = TensorProto(name=name, dims=dims, data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", offset), ("length", int(np.prod(dims)) * 4)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor


@pytest.mark.slow
def test_a_model_over_2_gib_is_pruned(tmp_path):
    """About 100 s and a peak RSS of 12 GiB (the prune's, measured in its process) on 2
    cores; the layer method, so that the memory is the model's, not cached activations'."""
    import resource  # Unix only

    model = _build_huge(tmp_path)
    assert (tmp_path / "huge.bin").stat().st_size + model.stat().st_size > graph.PROTO_LIMIT
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((64, WIDE), dtype=np.float32))
    output = tmp_path / "out.onnx"
    clock = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "onnx_subprune", "prune", model, "-o", output, "--calib",
                           tmp_path / "calib.npz", "--keep", "0.5", "--method", "layer", "--device", "cpu", "--quiet"],
                          capture_output=True, text=True)
    seconds, peak = time.perf_counter() - clock, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"pruned a {(tmp_path / 'huge.bin').stat().st_size / 2**30:.2f} GiB model in {seconds:.0f} s, "
          f"peak RSS {peak / 2**30:.1f} GiB")
    assert done.returncode == 0, done.stderr
    assert peak < 13 * 2**30
    proto = onnx.load(output, load_external_data=False)
    assert {e.value for i in proto.graph.initializer for e in i.external_data if e.key == "location"} == {"out.onnx.data"}
    assert {i.name: list(i.dims) for i in proto.graph.initializer if i.name in ("wa", "wb")} == {
        "wa": [WIDE, HIDDEN // 2], "wb": [WIDE, HIDDEN // 2]}
    assert output.stat().st_size < 1 << 20 and (tmp_path / "out.onnx.data").stat().st_size > 2**30
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.load(tmp_path / "calib.npz")["x"][:4]})
    assert y.shape == (4, 10) and np.isfinite(y).all()
