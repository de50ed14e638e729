"""Models with external data: read, pruned, and written back with their weights beside them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from helpers import MODELS, invoke
from onnx_subprune.graph import split_external_data

CALIB = MODELS / "digits_calib.npz"
PRUNE = ("--calib", CALIB, "--keep", "0.5", "--device", "cpu", "--quiet")


def _external(folder, name="model.onnx", location="weights.bin"):
    """LeNet-5 saved with its weights in an external data file ``location``."""
    path = folder / name
    onnx.save(onnx.load(MODELS / "lenet5.onnx"), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=256)
    return path


def _weights(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def test_a_model_with_external_data_is_written_with_external_data(tmp_path):
    model = _external(tmp_path)
    result = invoke("prune", model, "-o", tmp_path / "out.onnx", *PRUNE)
    assert result.exit_code == 0, result.stderr
    inline = invoke("prune", MODELS / "lenet5.onnx", "-o", tmp_path / "inline.onnx", *PRUNE)
    assert inline.exit_code == 0, inline.stderr
    proto = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    assert {e.value for i in proto.graph.initializer for e in i.external_data if e.key == "location"} == {"out.onnx.data"}
    assert (tmp_path / "out.onnx").stat().st_size < 10_000 < (tmp_path / "out.onnx.data").stat().st_size
    got, want = _weights(tmp_path / "out.onnx"), _weights(tmp_path / "inline.onnx")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.load(CALIB)["input"][:4]})[0].shape == (4, 10)


def test_external_data_on_request(tmp_path):
    result = invoke("prune", MODELS / "lenet5.onnx", "-o", tmp_path / "out.onnx", "--external-data", *PRUNE)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]


def test_external_data_output_that_is_an_input_or_a_folder_is_refused(tmp_path):
    model = _external(tmp_path, location="out.onnx.data")  # -o out.onnx would overwrite the weights being read
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("prune", model, "-o", tmp_path / "out.onnx", *PRUNE)
    assert result.exit_code == 1 and "external data" in result.stderr and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    (tmp_path / "other.onnx.data").mkdir()
    result = invoke("prune", MODELS / "lenet5.onnx", "-o", tmp_path / "other.onnx", "--external-data", *PRUNE)
    assert result.exit_code == 1 and "folder" in result.stderr and not (tmp_path / "other.onnx").exists()


def test_split_keeps_small_tensors_inline_and_aligns_the_rest():
    model = onnx.load(MODELS / "lenet5.onnx")
    proto, data = split_external_data(model, "w.bin")
    parsed = onnx.ModelProto.FromString(proto)
    moved = [i for i in parsed.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    kept = [i for i in parsed.graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL]
    assert moved and kept and all(numpy_helper.to_array(i).nbytes < 1024 for i in kept)
    offsets = [int(next(e.value for e in i.external_data if e.key == "offset")) for i in moved]
    assert all(offset % 64 == 0 for offset in offsets) and len(data) >= sum(
        int(next(e.value for e in i.external_data if e.key == "length")) for i in moved)
    assert model.graph.initializer[0].data_location != onnx.TensorProto.EXTERNAL  # the input is not changed
