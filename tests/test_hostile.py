"""Hostile inputs (issue 10): every bad model file, calibration file, option, output path and
model pair given to the command line ends in exit 1 with exactly one ``Error:`` line on stderr
(after at most the provider note) or in click's usage error (exit 2), never in a traceback, and
leaves the working folder exactly as it was: inputs byte-identical, no output, no temporary file.

The table-driven cases come first (one family per table); property-based fuzz tests with
hypothesis then mutate, truncate and splice the bytes of shipped models and calibration files (and
change fields of parsed models) and assert the same contract. The default run is derandomized
(the same few hundred examples every time); ``SUBPRUNE_FUZZ_SCALE=20 pytest tests/test_hostile.py
-k fuzz`` draws twenty times as many new ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import helper, numpy_helper

import builders
from helpers import save_bytes as _bytes, save_npz as _npz, save_onnx as _save, ARCH, MODELS, invoke

LENET = MODELS / "lenet5.onnx"
MLP = MODELS / "mlp.onnx"
FAST = ("--device", "cpu", "--quiet")
NOTES = ("using onnxruntime ", "warning: ")  # the only stderr lines allowed before the error


# ---------------------------------------------------------------------------------------------
# the contract


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file contents, or the kind of a non-file (link, fifo, dir)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = "link -> " + os.readlink(path)
            elif path.is_file():
                found[rel] = path.read_bytes()
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = "special"
    return found


def assert_contract(result, code: int, contains: str | None = None) -> None:
    """Exit ``code``; for 1, one ``Error:`` line last on stderr (only notes before it), nothing on
    stdout; for 2, click's usage error; never an unhandled exception or a traceback."""
    unhandled = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not unhandled, f"unhandled {type(result.exception).__name__}: {result.exception}\n{result.stderr}"
    assert "Traceback" not in result.output
    assert result.exit_code == code, (result.exit_code, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, f"expected one Error line: {result.stderr!r}"
    assert result.stdout == ""
    if code == 1:
        assert lines[-1] == errors[0], result.stderr
        assert errors[0].startswith("Error: ")
        assert all(line.startswith(NOTES) for line in lines[:-1]), result.stderr
    if contains is not None:
        assert contains in errors[0], errors[0]


@pytest.fixture(scope="module", autouse=True)
def shipped_files_unchanged():
    """The shipped models and data that cases read in place are byte-identical afterwards."""
    files = [LENET, MLP, MODELS / "digits_calib.npz", ARCH / "densenet_block.onnx", ARCH / "mobilenetv2_const.onnx"]
    before = [path.read_bytes() for path in files]
    yield
    assert [path.read_bytes() for path in files] == before


# ---------------------------------------------------------------------------------------------
# inputs


def _calib(samples: int = 24) -> np.ndarray:
    with np.load(MODELS / "digits_calib.npz") as data:
        return data["input"][:samples]


def _lenet() -> onnx.ModelProto:
    return onnx.load(LENET)


def _with_initializer(model: onnx.ModelProto, name: str, change: Callable[[np.ndarray], np.ndarray]) -> onnx.ModelProto:
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init).copy()), name))
            return model
    raise KeyError(name)


def _set(index, value):
    def change(array):
        array[index] = value
        return array
    return change


def _gemm_text(inputs: str = "float[N,10] x", outputs: str = "float[N,3] y", body: str = "") -> str:
    return builders.header(inputs, outputs) + " {\n" + (body or """
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)""") + "\n}"


GEMM_WEIGHTS = {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,)}


def _gemm(**weights) -> onnx.ModelProto:
    return builders.build(_gemm_text(), {**GEMM_WEIGHTS, **weights})


def _gemm_x(samples: int = 24, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(samples, 10)).astype(dtype)


def _unchecked(text: str, weights: dict) -> onnx.ModelProto:
    """A parsed model with weights, not run through the checker (for models onnx rejects)."""
    model = onnx.parser.parse_model(text)
    model.ir_version = builders.IR_VERSION
    rng = np.random.default_rng(0)
    for name, shape in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    return model


def _renamed(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """``model`` with tensor ``old`` called ``new`` everywhere."""
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in [*model.graph.input, *model.graph.output, *model.graph.initializer]:
        if value.name == old:
            value.name = new
    return model


def _reads(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """``model`` whose nodes read tensor ``new`` where they read ``old``."""
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
    return model


def _external(folder: Path, location: str) -> Path:
    """LeNet with its weights in an external data file at ``location`` (relative to the model),
    which is then removed or pointed elsewhere."""
    model = _lenet()
    onnx.save(model, folder / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.bin", size_threshold=0)
    model = onnx.load(folder / "ext.onnx", load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    (folder / "ext.bin").unlink()
    return _save(folder / "ext.onnx", model)


def _fp16_input_model() -> onnx.ModelProto:
    text = _gemm_text("float16[N,10] x", "float16[N,3] y", """
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)""")
    model = onnx.parser.parse_model(text)
    model.ir_version = builders.IR_VERSION
    rng = np.random.default_rng(0)
    for name, shape in GEMM_WEIGHTS.items():
        model.graph.initializer.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float16), name))
    return model


# ---------------------------------------------------------------------------------------------
# the cases: each builds its inputs in a folder and returns the command line


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], list]  # folder -> arguments (paths inside the folder)
    contains: str | None = None
    code: int = 1


def prune_args(model, calib, *extra):
    return ["prune", model, "-o", "out.onnx", "--calib", calib, *extra]


def _cases(default_calib):
    """A maker of prune cases on the model ``model_factory(folder)``, with ``calib_factory``'s
    calibration data or ``default_calib(folder)``."""
    def case(model_factory, calib_factory=None, *extra):
        def make(d: Path):
            model = model_factory(d)
            calib = (calib_factory or default_calib)(d)
            return prune_args(model, calib, *extra)
        return make
    return case


_m = _cases(lambda d: _npz(d / "calib.npz", input=_calib()))  # LeNet's calibration data
_gemm_case = _cases(lambda d: _npz(d / "calib.npz", x=_gemm_x()))


MODEL_CASES = {
    "missing": Case(_m(lambda d: d / "nope.onnx"), "model file not found"),
    "empty": Case(_m(lambda d: _bytes(d / "m.onnx", b"")), "the file is empty"),
    "truncated-half": Case(_m(lambda d: _bytes(d / "m.onnx", LENET.read_bytes()[: LENET.stat().st_size // 2])),
                           "cannot read ONNX model"),
    "truncated-header": Case(_m(lambda d: _bytes(d / "m.onnx", LENET.read_bytes()[:40])), "ONNX model"),
    "random-bytes": Case(_m(lambda d: _bytes(d / "m.onnx", np.random.default_rng(0).bytes(5000))),
                         "cannot read ONNX model"),
    "text-file": Case(_m(lambda d: _bytes(d / "m.onnx", b'{"not": "an onnx model"}\n')), "ONNX model"),
    "npz-given-as-model": Case(_m(lambda d: _bytes(d / "m.onnx", _npz(d / "m.npz", input=_calib(4)).read_bytes())),
                               "ONNX model"),
    "corrupt-protobuf-length": Case(_m(lambda d: _bytes(d / "m.onnx", b"\x08\x07\x3a\xff\xff\xff\xff\x0f\x00")),
                                    "cannot read ONNX model"),
    "protobuf-without-graph": Case(_m(lambda d: _bytes(d / "m.onnx", helper.make_model(
        helper.make_graph([], "g", [], [])).SerializeToString())), "the graph has no nodes"),
    "folder-as-model": Case(_m(lambda d: (d / "m.onnx").mkdir() or d / "m.onnx"), "it is a folder"),
    "undefined-tensor": Case(_gemm_case(lambda d: _save(d / "m.onnx", _reads(_gemm(), "b", "undefined"))),
                             "invalid ONNX model"),
    "future-ir-version": Case(_gemm_case(lambda d: _bytes(d / "m.onnx", _ir(_gemm(), 99))), "invalid ONNX model"),
    "unknown-opset-version": Case(_gemm_case(lambda d: _save(d / "m.onnx", _opset(_gemm(), 999))),
                                  "onnxruntime cannot load the model"),
    "nan-conv-weight": Case(_m(lambda d: _save(d / "m.onnx", _with_initializer(
        _lenet(), "conv1.weight", _set((0, 0, 0, 0), np.nan)))), "weight 'conv1.weight' contains NaN"),
    "inf-gemm-bias": Case(_gemm_case(lambda d: _save(d / "m.onnx", _with_initializer(
        _gemm(), "b1", _set(2, np.inf)))), "weight 'b1' of node"),
    "nan-constant-node": Case(_gemm_case(lambda d: _save(d / "m.onnx", builders.to_constant_nodes(
        _with_initializer(_gemm(), "w2", _set((1, 1), np.nan)), {"w2"}))), "weight 'w2' contains NaN"),
    "huge-weights-overflow": Case(_gemm_case(lambda d: _save(d / "m.onnx", _with_initializer(
        _gemm(), "w1", lambda w: np.full_like(w, 3e38)))), "NaN or Inf"),
    "conv-wrong-input-channels": Case(_m(lambda d: _save(d / "m.onnx", _with_initializer(
        _lenet(), "conv2.weight", lambda w: np.ones((16, 5, 5, 5), np.float32)))),
        "has weight 'conv2.weight' of shape [16, 5, 5, 5]"),
    "gemm-wrong-inner-dim": Case(_gemm_case(lambda d: _save(d / "m.onnx", _unchecked(
        _gemm_text(), {**GEMM_WEIGHTS, "w2": (3, 7)}))), "invalid ONNX model"),
    "unsupported-custom-op": Case(_gemm_case(lambda d: _save(d / "m.onnx", _custom_op())),
                                  "onnxruntime cannot load the model"),
    "nothing-prunable": Case(_gemm_case(lambda d: _save(d / "m.onnx", builders.build(
        _gemm_text(outputs="float[N,6] y", body="y = Gemm <transB = 1> (x, w1, b1)"),
        {"w1": (6, 10), "b1": (6,)}))), "nothing prunable"),
    "no-inputs": Case(_gemm_case(lambda d: _save(d / "m.onnx", _no_inputs())), "no inputs to feed"),
    "sequence-input": Case(_gemm_case(lambda d: _save(d / "m.onnx", _sequence_input())), "is not a tensor"),
    "scalar-input": Case(_gemm_case(lambda d: _save(d / "m.onnx", builders.build(
        _gemm_text("float[N,10] x, int64 sr"), GEMM_WEIGHTS)),
        lambda d: _npz(d / "c.npz", x=_gemm_x(), sr=np.array([16000, 8000]))), "one value for the whole batch"),
    "newline-in-weight-name": Case(_gemm_case(lambda d: _save(d / "m.onnx", _with_initializer(
        _renamed(_gemm(), "w1", "w1\nError: fake"), "w1\nError: fake", _set((0, 0), np.nan)))),
        "weight 'w1\\nError: fake' contains NaN"),
    "escape-sequence-in-node-name": Case(_gemm_case(lambda d: _save(d / "m.onnx", _named_nodes(
        _with_initializer(_gemm(), "b1", _set(0, -np.inf)), "\x1b[31mred\r"))), "node '\\x1b[31mred\\r'"),
    "external-data-missing": Case(_m(lambda d: _external(d, "ext.bin")), "external data"),
    "external-data-outside-folder": Case(_m(lambda d: _external(d, "../../../../etc/passwd")), "external data"),
}


def _ir(model: onnx.ModelProto, version: int) -> bytes:
    model.ir_version = version
    return model.SerializeToString()


def _opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    model.opset_import[0].version = version
    return model


def _custom_op() -> onnx.ModelProto:
    text = '<ir_version: 8, opset_import: ["" : 17, "com.hostile" : 1]>\ng (float[N,10] x) => (float[N,3] y)' + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        c = Gemm <transB = 1> (b, w2, b2)
        y = com.hostile.Frobnicate (c)
    }"""
    return _unchecked(text, GEMM_WEIGHTS)


def _no_inputs() -> onnx.ModelProto:
    text = builders.header("", "float[2,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
    }"""
    return builders.build(text, {**GEMM_WEIGHTS, "x": (2, 10)})


def _sequence_input() -> onnx.ModelProto:
    text = builders.header("seq(float[N,10]) s", "float[N,3] y") + """ {
        p = Constant <value = int64 {0}> ()
        x = SequenceAt (s, p)
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
    }"""
    return builders.build(text, GEMM_WEIGHTS)


def _named_nodes(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    for index, node in enumerate(model.graph.node):
        node.name = f"{name}{index}" if index else name
    return model


def _c(calib_factory, *extra, model=LENET):
    """A prune case on ``model`` (LeNet) with calibration data ``calib_factory(folder)``."""
    def make(d: Path):
        return prune_args(model, calib_factory(d), *extra)
    return make


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _two(d: Path, calib) -> list:
    return prune_args(_save(d / "two.onnx", builders.two_inputs()), calib(d))


def _with_nan(x: np.ndarray, value=np.nan) -> np.ndarray:
    x = x.copy()
    x[3, 0, 5, 5] = value
    return x


CALIB_CASES = {
    "missing": Case(_c(lambda d: d / "nope.npz"), "data file not found"),
    "empty-file": Case(_c(lambda d: _bytes(d / "c.npz", b"")), "the file is empty"),
    "text-file": Case(_c(lambda d: _bytes(d / "c.npy", b"hello world\n")), "neither a .npz nor a .npy"),
    "onnx-given-as-calib": Case(_c(lambda d: _bytes(d / "c.npz", LENET.read_bytes())), "neither a .npz nor a .npy"),
    "truncated-npz": Case(_c(lambda d: _bytes(d / "c.npz", (_npz(d / "full.npz", input=_calib())).read_bytes()[:5000])),
                          "cannot read data file"),
    "truncated-npy": Case(_c(lambda d: _bytes(d / "c.npy", _npy_bytes(_calib())[:3000])), "cannot read data file"),
    "npz-member-not-npy": Case(_c(lambda d: _zip(d / "c.npz", {"input.npy": b"hello"})), "cannot read data file"),
    "npz-member-other-file": Case(_c(lambda d: _zip(d / "c.npz", {"input.txt": b"hello"})), "is not a .npy array"),
    "npz-empty-archive": Case(_c(lambda d: _zip(d / "c.npz", {})), "holds no arrays"),
    "pickled-object-npy": Case(_c(lambda d: _bytes(d / "c.npy", _npy_bytes(np.array([1, "a"], dtype=object)))),
                               "pickled object array"),
    "pickled-object-npz": Case(_c(lambda d: _zip(d / "c.npz", {"input.npy": _npy_bytes(np.array([None], dtype=object))})),
                               "pickled object array"),
    "wrong-name": Case(_c(lambda d: _npz(d / "c.npz", x=_calib())), "no array for model input 'input'"),
    "extra-array": Case(_c(lambda d: _npz(d / "c.npz", input=_calib(), other=_calib())), "'other' is not a model input"),
    "newline-in-array-name": Case(_c(lambda d: _zip(d / "c.npz", {"input.npy": _npy_bytes(_calib()),
                                                                   "bad\nError: x.npy": _npy_bytes(_calib())})),
                                  "'bad\\nError: x' is not a model input"),
    "wrong-rank": Case(_c(lambda d: _npz(d / "c.npz", input=_calib()[:, 0])), "rank 3"),
    "scalar-array": Case(_c(lambda d: _npz(d / "c.npz", input=np.float32(1))), "rank 0"),
    "wrong-static-dim": Case(_c(lambda d: _npz(d / "c.npz", input=_calib()[:, :, :, :27])), "axis 3"),
    "int-dtype": Case(_c(lambda d: _npz(d / "c.npz", input=np.ones((8, 1, 28, 28), np.int64))), "dtype int64"),
    "complex-dtype": Case(_c(lambda d: _npz(d / "c.npz", input=_calib().astype(np.complex64))), "not a number type"),
    "string-dtype": Case(_c(lambda d: _npz(d / "c.npz", input=np.full((8, 1, 28, 28), "x"))), "not a number type"),
    "structured-dtype": Case(_c(lambda d: _npz(d / "c.npz", input=np.zeros((8, 1, 28, 28), [("a", "f4"), ("b", "i4")]))),
                             "not a number type"),
    "nan": Case(_c(lambda d: _npz(d / "c.npz", input=_with_nan(_calib()))), "NaN or Inf"),
    "inf": Case(_c(lambda d: _npz(d / "c.npz", input=_with_nan(_calib(), -np.inf))), "NaN or Inf"),
    "float64-beyond-float32": Case(_c(lambda d: _npz(d / "c.npz", input=_calib().astype(np.float64) * 1e300)),
                                   "out of the range of float32"),
    "huge-values-overflow-inside": Case(_c(lambda d: _npz(d / "c.npz", input=np.full((16, 1, 28, 28), 3e38, np.float32))),
                                        "NaN or Inf on the calibration data"),
    "no-samples": Case(_c(lambda d: _npz(d / "c.npz", input=_calib()[:0])), "no samples"),
    "too-few-for-holdout": Case(_c(lambda d: _npz(d / "c.npz", input=_calib(2)), "--holdout", "0.2"), "at least 3 samples"),
    "folder-as-calib": Case(_c(lambda d: (d / "c.npz").mkdir() or d / "c.npz"), "the folder holds no image files"),
    "npy-for-two-inputs": Case(lambda d: _two(d, lambda d: (np.save(d / "c.npy", np.ones((8, 4), np.float32)), d / "c.npy")[1]),
                               "use .npz"),
    "sample-counts-differ": Case(lambda d: _two(d, lambda d: _npz(d / "c.npz", a=np.ones((8, 4), np.float32),
                                                                  b=np.ones((9, 4), np.float32))),
                                 "different numbers of samples"),
}


def _o(*extra, model=LENET):
    return lambda d: prune_args(model, _npz(d / "calib.npz", input=_calib()), *extra)


OPTION_CASES = {
    "keep-0": Case(_o("--keep", "0"), "--keep"),
    "keep-1.5": Case(_o("--keep", "1.5"), "--keep"),
    "keep-nan": Case(_o("--keep", "nan"), "--keep"),
    "keep-inf": Case(_o("--keep", "inf"), "--keep"),
    "ridge-negative": Case(_o("--ridge", "-1"), "--ridge must be a finite number >= 0"),
    "ridge-nan": Case(_o("--ridge", "nan"), "--ridge must be a finite number >= 0"),
    "ridge-inf": Case(_o("--ridge", "inf"), "--ridge must be a finite number >= 0"),
    "seed-negative": Case(_o("--seed", "-1"), "--seed must be an integer >= 0"),
    "holdout-1": Case(_o("--holdout", "1"), "--holdout must be in [0, 0.5]"),
    "holdout-0.999": Case(_o("--holdout", "0.999"), "at least as many as those held out"),
    "holdout-negative": Case(_o("--holdout", "-0.1"), "--holdout"),
    "holdout-nan": Case(_o("--holdout", "nan"), "--holdout"),
    "holdout-word": Case(_o("--holdout", "half"), "neither 'auto' nor a number", code=2),
    "target-params-0": Case(_o("--target-params", "0"), "--target-params"),
    "target-params-2": Case(_o("--target-params", "2"), "--target-params"),
    "target-flops-nan": Case(_o("--target-flops", "nan"), "--target-flops"),
    "min-keep-0": Case(_o("--min-keep", "0"), "--min-keep"),
    "max-error-negative": Case(_o("--max-error", "-1"), "--max-error"),
    "max-error-nan": Case(_o("--max-error", "nan"), "--max-error"),
    "keep-with-target": Case(_o("--keep", "0.5", "--target-params", "0.5"), code=2),
    "allocation-without-target": Case(_o("--allocation", "uniform"), code=2),
    "batch-size-0": Case(_o("--batch-size", "0"), code=2),
    "round-to-0": Case(_o("--round-to", "0"), code=2),
    "unknown-method": Case(_o("--method", "magic"), code=2),
    "seed-not-integer": Case(_o("--seed", "1.5"), code=2),
    "sensitivity-min-keep-0": Case(lambda d: ["sensitivity", LENET, "--calib", _npz(d / "c.npz", input=_calib()),
                                              "--min-keep", "0"], "--min-keep"),
    "sensitivity-samples-0": Case(lambda d: ["sensitivity", LENET, "--calib", _npz(d / "c.npz", input=_calib()),
                                             "--samples", "0"], code=2),
}


def _copy_lenet(d: Path) -> Path:
    return Path(shutil.copy(LENET, d / "model.onnx"))


def _out(*, output=None, report=None, model=None):
    """A prune case with a copy of LeNet and calibration data in the folder; ``output`` and
    ``report`` are functions of the folder giving the paths."""
    def make(d: Path):
        source = model(d) if model else _copy_lenet(d)
        calib = _npz(d / "calib.npz", input=_calib())
        args = ["prune", source, "-o", output(d) if output else d / "out.onnx", "--calib", calib]
        return args + (["--report", report(d)] if report else [])
    return make


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


ROOT_SKIP = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")

OUTPUT_CASES = {
    "output-is-the-model": Case(_out(output=lambda d: d / "model.onnx"), "it is the model being read"),
    "report-is-the-model": Case(_out(report=lambda d: d / "model.onnx"), "it is the model being read"),
    "output-is-the-calibration-data": Case(_out(output=lambda d: d / "calib.npz"), "calibration data being read"),
    "report-is-the-output": Case(_out(report=lambda d: d / "out.onnx"), "it is also the output"),
    "output-is-a-folder": Case(_out(output=lambda d: (d / "sub").mkdir() or d / "sub"), "it is a folder"),
    "report-is-a-folder": Case(_out(report=lambda d: (d / "sub").mkdir() or d / "sub"), "it is a folder"),
    "output-folder-missing": Case(_out(output=lambda d: d / "missing" / "out.onnx"), "does not exist"),
    "report-folder-missing": Case(_out(report=lambda d: d / "missing" / "r.json"), "does not exist"),
    "output-under-a-file": Case(_out(output=lambda d: d / "calib.npz" / "out.onnx"), "is not a folder"),
    "output-is-a-fifo": Case(_out(output=lambda d: _fifo(d / "pipe")), "not a regular file (a pipe)"),
    "output-links-to-a-fifo": Case(_out(output=lambda d: _link(d / "link", _fifo(d / "pipe"))), "a pipe"),
    "output-dangling-link": Case(_out(output=lambda d: _link(d / "link", d / "nowhere" / "x")), "link to a missing file"),
    "output-links-to-the-model": Case(_out(output=lambda d: _link(d / "link.onnx", d / "model.onnx")),
                                      "it is the model being read"),
    "report-links-to-the-output": Case(_out(report=lambda d: _link(d / "r.json", _bytes(d / "out.onnx", b"old"))),
                                       "it is also the output"),
    "output-hard-link-to-the-model": Case(_out(output=lambda d: (os.link(d / "model.onnx", d / "hard.onnx"),
                                                                 d / "hard.onnx")[1]), "it is the model being read"),
    "output-empty-path": Case(_out(output=lambda d: ""), "the path is empty"),
    "output-is-external-data": Case(
        _out(model=lambda d: _save_external(d), output=lambda d: d / "weights.bin"), "external data of the model"),
    "plot-is-the-model": Case(lambda d: ["sensitivity", _copy_lenet(d), "--calib", _npz(d / "c.npz", input=_calib()),
                                         "--plot", d / "model.onnx"], "it is the model being read"),
    "plot-is-a-folder": Case(lambda d: ["sensitivity", LENET, "--calib", _npz(d / "c.npz", input=_calib()),
                                        "--plot", d], "it is a folder"),
    "output-folder-read-only": Case(_out(output=lambda d: _read_only(d / "ro") / "out.onnx"), "not writable"),
}


def _save_external(d: Path) -> Path:
    onnx.save(_lenet(), d / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return d / "model.onnx"


def _read_only(folder: Path) -> Path:
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _evaluate(pruned_factory, data=None, *extra, original=None):
    def make(d: Path):
        first = original(d) if original else _save(d / "original.onnx", _gemm())
        path = data(d) if data else _npz(d / "data.npz", x=_gemm_x(), label=np.arange(24) % 3)
        return ["evaluate", first, pruned_factory(d), "--data", path, *extra]
    return make


def _gemm_variant(text_inputs="float[N,10] x", text_outputs="float[N,3] y", body="", weights=None):
    return builders.build(_gemm_text(text_inputs, text_outputs, body), weights or GEMM_WEIGHTS)


EVALUATE_CASES = {
    "output-shape-differs": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm_variant(
        text_outputs="float[N,4] y", weights={**GEMM_WEIGHTS, "w2": (4, 6), "b2": (4,)}))),
        "output 'y' has shape [?, 3] in the original and [?, 4] in the pruned model"),
    "input-dtype-fp16": Case(_evaluate(lambda d: _save(d / "p.onnx", _fp16_input_model())),
                             "input 'x' is float32 in the original and float16 in the pruned model"),
    "input-name-differs": Case(_evaluate(lambda d: _save(d / "p.onnx", _renamed(_gemm(), "x", "z"))),
                               "input 'x' only in the original; input 'z' only in the pruned model"),
    "output-name-differs": Case(_evaluate(lambda d: _save(d / "p.onnx", _renamed(_gemm(), "y", "logits"))),
                                "output 'y' only in the original"),
    "extra-output": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm_variant(
        text_outputs="float[N,3] y, float[N,6] a"))), "output 'a' only in the pruned model"),
    "input-static-dim-differs": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm_variant(
        text_inputs="float[N,12] x", weights={**GEMM_WEIGHTS, "w1": (6, 12)}))), "input 'x' has shape"),
    "pruned-missing": Case(_evaluate(lambda d: d / "nope.onnx"), "model file not found"),
    "pruned-corrupt": Case(_evaluate(lambda d: _bytes(d / "p.onnx", LENET.read_bytes()[:1000])), "cannot read ONNX model"),
    "pruned-nan-weight": Case(_evaluate(lambda d: _save(d / "p.onnx", _with_initializer(
        _gemm(), "w2", _set((0, 0), np.nan)))), "contains NaN"),
    "data-missing": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm()), lambda d: d / "nope.npz"),
                         "data file not found"),
    "data-nan": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm()),
                               lambda d: _npz(d / "data.npz", x=np.full((4, 10), np.nan, np.float32))), "NaN or Inf"),
    "labels-key-missing": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm()), None, "--labels", "nope"),
                               "no array named 'nope'"),
    "labels-not-integers": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm()),
                                          lambda d: _npz(d / "data.npz", x=_gemm_x(), label=np.ones(24)),
                                          "--labels", "label"), "labels must be integers"),
    "labels-wrong-length": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm()),
                                          lambda d: _npz(d / "data.npz", x=_gemm_x(), label=np.arange(5)),
                                          "--labels", "label"), "labels have shape [5]"),
    "outputs-overflow": Case(_evaluate(lambda d: _save(d / "p.onnx", _gemm()),
                                       lambda d: _npz(d / "data.npz", x=np.full((4, 10), 3e38, np.float32))),
                             "NaN or Inf on the data"),
    "same-path-twice-with-bad-data": Case(_evaluate(lambda d: d / "original.onnx",
                                                    lambda d: _npz(d / "data.npz", y=_gemm_x())),
                                          "no array for model input 'x'"),
}

FAMILIES = {"model": MODEL_CASES, "calib": CALIB_CASES, "option": OPTION_CASES, "output": OUTPUT_CASES,
            "evaluate": EVALUATE_CASES}
ALL_CASES = [pytest.param(family, name, id=f"{family}-{name}",
                          marks=[ROOT_SKIP] if name == "output-folder-read-only" else [])
             for family, cases in FAMILIES.items() for name in cases]


def test_enough_cases():
    assert sum(len(cases) for cases in FAMILIES.values()) >= 60
    assert all(len(cases) >= 10 for cases in FAMILIES.values())


@pytest.mark.parametrize("family, name", ALL_CASES)
def test_hostile_case(family, name, tmp_path, monkeypatch):
    case = FAMILIES[family][name]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative outputs ("out.onnx") land in the watched folder
    args = [str(a) for a in case.make(work)]
    args += list(FAST) if args[0] in ("prune", "sensitivity") else ["--device", "cpu"]
    before = snapshot(work)
    try:
        result = invoke(*args)
    finally:
        for path in work.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
    assert_contract(result, case.code, case.contains)
    assert snapshot(work) == before


# ---------------------------------------------------------------------------------------------
# outputs: all or nothing, with the user's mode


def test_failed_report_write_leaves_no_model(tmp_path, monkeypatch):
    """The report cannot be written (its temporary file fails): the model is not left either."""
    from onnx_subprune import files

    calib = _npz(tmp_path / "calib.npz", input=_calib())
    real = files._write_temp

    def failing(label, shown, target, data, temps):
        real(label, shown, target, data, temps)
        if label == "report":  # the report's temporary file exists and is incomplete
            raise files.SubpruneError(f"cannot write report {shown}: No space left on device")

    monkeypatch.setattr(files, "_write_temp", failing)
    before = snapshot(tmp_path)
    result = invoke("prune", LENET, "-o", tmp_path / "out.onnx", "--calib", calib, "--report",
                    tmp_path / "r.json", *FAST)
    assert_contract(result, 1, "No space left on device")
    assert snapshot(tmp_path) == before


def test_failed_rename_restores_the_previous_outputs(tmp_path, monkeypatch):
    """The second rename fails: the first target gets its previous content back."""
    from onnx_subprune import files

    first, second = tmp_path / "a.onnx", tmp_path / "b.json"
    first.write_bytes(b"old model")
    second.write_bytes(b"old report")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if Path(dst) == second:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    outputs = files.Outputs({"output": first, "report": second})
    monkeypatch.setattr(files.os, "replace", flaky)
    with pytest.raises(files.SubpruneError, match="No space left"):
        outputs.write({"output": b"new model", "report": b"new report"})
    monkeypatch.undo()
    assert first.read_bytes() == b"old model" and second.read_bytes() == b"old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.json"]


def test_outputs_get_the_umask_mode_and_keep_an_existing_mode(tmp_path):
    from onnx_subprune.files import write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "new.bin", b"x")
        existing = tmp_path / "old.bin"
        existing.write_bytes(b"y")
        existing.chmod(0o604)
        write_atomic(existing, b"z")
    finally:
        os.umask(old)
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640
    assert existing.stat().st_mode & 0o777 == 0o604 and existing.read_bytes() == b"z"


def test_prune_writes_model_and_report_with_the_umask_mode(tmp_path):
    calib = _npz(tmp_path / "calib.npz", input=_calib(16))
    old = os.umask(0o022)
    try:
        result = invoke("prune", MLP, "-o", tmp_path / "out.onnx", "--calib", calib, "--report",
                        tmp_path / "r.json", "--holdout", "0", *FAST)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    for name in ("out.onnx", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "out.onnx", "r.json"]


SIGNAL_SCRIPT = textwrap.dedent("""
    import signal, sys, threading
    from onnx_subprune import files
    # a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real = files._write_temp
    def write_then_signal(label, shown, target, data, temps):
        real(label, shown, target, data, temps)
        if label == "report":  # both temporary files exist now
            # to this thread: one sent to the process may reach an onnxruntime or BLAS thread
            signal.pthread_kill(threading.get_ident(), getattr(signal, sys.argv[1]))
    files._write_temp = write_then_signal
    from onnx_subprune.cli import main
    main(sys.argv[2:])
""")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_while_writing_leaves_nothing(tmp_path, name):
    calib = _npz(tmp_path / "calib.npz", input=_calib(16))
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, name, "prune", str(MLP), "-o",
                           str(tmp_path / "out.onnx"), "--calib", str(calib), "--report", str(tmp_path / "r.json"),
                           "--holdout", "0", *FAST], capture_output=True, text=True, timeout=300)
    assert snapshot(tmp_path) == before, proc.stderr
    assert "Traceback" not in proc.stderr
    if name == "SIGTERM":
        assert proc.returncode == -signal.SIGTERM
    else:
        assert proc.returncode != 0


def test_error_messages_are_one_line_whatever_the_names():
    from onnx_subprune.errors import ConfigError, SubpruneError, quote

    message = str(SubpruneError(f"tensor {quote('a' + chr(10) + 'Error: b' + chr(13) + chr(0x1b) + chr(0x2028))} bad"))
    assert message.splitlines() == [message]
    assert "\\n" in message and "\\x1b" in message and "\\u2028" in message
    assert str(ConfigError("keep", "x\ny")).splitlines() == ["keep x\\ny"]


# ---------------------------------------------------------------------------------------------
# inputs that are odd but valid


def test_nodes_sharing_one_name_are_pruned(tmp_path):
    """Every node called "same" (found by the fuzzer: the size model and the rewrite looked
    nodes up by name): the duplicates are renamed and the groups are pruned."""
    model = _lenet()
    for node in model.graph.node:
        node.name = "same"
    path = _save(tmp_path / "same.onnx", model)
    calib = _npz(tmp_path / "c.npz", input=_calib(16))
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--calib", calib, "--holdout", "0", "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    assert len(__import__("json").loads(result.stdout)["groups"]) == 4


def test_infinite_constant_outside_layers_is_accepted(tmp_path):
    """An infinite constant outside a layer's weights (a Clip bound, a -inf mask) is legitimate."""
    text = _gemm_text(body="""
        a = Gemm <transB = 1> (x, w1, b1)
        b = Clip (a, low, high)
        y = Gemm <transB = 1> (b, w2, b2)""")
    model = builders.build(text, {**GEMM_WEIGHTS, "low": np.array(0, np.float32), "high": np.array(np.inf, np.float32)})
    path = _save(tmp_path / "clip.onnx", model)
    calib = _npz(tmp_path / "c.npz", x=_gemm_x())
    result = invoke("prune", path, "-o", tmp_path / "p.onnx", "--calib", calib, *FAST)
    assert result.exit_code == 0, result.stderr


def test_api_refuses_an_output_equal_to_an_input(tmp_path):
    from onnx_subprune.api import prune_file
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.errors import SubpruneError

    model = _copy_lenet(tmp_path)
    calib = _npz(tmp_path / "c.npz", input=_calib())
    before = snapshot(tmp_path)
    with pytest.raises(SubpruneError, match="it is the model being read"):
        prune_file(model, tmp_path / "out.onnx", calib, PruneConfig(device="cpu"), report_path=model)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# exact integer sizes


def test_params_and_macs_are_exact_integers_on_huge_dims():
    from onnx_subprune.metrics import count_macs, count_params

    text = builders.header("float[N,3,S,S] x", "float[N,5] y") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        c = Relu (a)
        g = GlobalAveragePool (c)
        h = Flatten (g)
        y = Gemm <transB = 1> (h, w3, b3)
    }"""
    model = builders.build(text, {"w1": (8, 3, 3, 3), "b1": (8,), "w3": (5, 8), "b3": (5,)})
    side = 2**31 - 1
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = side
    macs = count_macs(model)
    assert type(macs) is int and macs == 8 * side * side * 27 + 5 * 8
    huge = onnx.TensorProto(name="big", data_type=onnx.TensorProto.FLOAT, dims=[2**40, 2**40])
    model.graph.initializer.append(huge)  # declared, not stored: only its dims are counted
    assert count_params(model) == 8 * 27 + 8 + 5 * 8 + 5 + 2**80


def test_size_model_is_exact_beyond_float64():
    """MACs above 2**53 (a huge declared input) are predicted exactly by the size model: the
    pipeline compares them with the counted ones and would otherwise report an internal error."""
    from onnx_subprune.analyze import analyze
    from onnx_subprune.budget import SizeModel
    from onnx_subprune.graph import prepare
    from onnx_subprune.metrics import count_macs, count_params

    text = builders.header("float[N,3,S,S] x", "float[N,5] y") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        c = Relu (a)
        e = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (c, w2, b2)
        f = Relu (e)
        g = GlobalAveragePool (f)
        h = Flatten (g)
        y = Gemm <transB = 1> (h, w3, b3)
    }"""
    model = builders.build(text, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (6, 8, 3, 3), "b2": (6,), "w3": (5, 6), "b3": (5,)})
    side = 2**25 + 1
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = side
    model = prepare(model)
    size = SizeModel(model, analyze(model).groups)
    assert size.totals([8, 6]) == (count_params(model), count_macs(model))
    macs = 3 * 27 * side**2 + 2 * 3 * 9 * side**2 + 5 * 2
    assert float(macs) != macs  # not representable in float64
    assert size.totals([3, 2])[1] == macs


# ---------------------------------------------------------------------------------------------
# fuzzing: mutated, truncated and spliced bytes of shipped models and calibration files

FUZZ_MODELS = [MLP, LENET, ARCH / "densenet_block.onnx", ARCH / "mobilenetv2_const.onnx"]
FUZZ_SCALE = float(os.environ.get("SUBPRUNE_FUZZ_SCALE", "1"))
"""Multiplies every fuzz test's number of examples; the default run (1) is derandomized, so it
tries the same examples every time; any other value draws new ones (a longer fuzzing session)."""
FUZZ_SETTINGS = dict(deadline=None, derandomize=FUZZ_SCALE == 1, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                            HealthCheck.data_too_large])


def examples(count: int) -> int:
    return max(1, round(count * FUZZ_SCALE))


def _structure_positions(data: bytes, model: onnx.ModelProto) -> np.ndarray:
    """Byte offsets of ``data`` (a serialized model) outside the raw weight bytes: where a
    mutation changes the structure rather than a weight value."""
    mask = np.ones(len(data), bool)
    for init in model.graph.initializer:
        raw = init.raw_data
        if len(raw) > 16:
            start = data.find(raw)
            if start >= 0:
                mask[start + 8 : start + len(raw)] = False  # a few weight bytes stay in
    return np.flatnonzero(mask)


FUZZ_BYTES = {path.name: path.read_bytes() for path in FUZZ_MODELS}
FUZZ_STRUCTURE = {path.name: _structure_positions(FUZZ_BYTES[path.name], onnx.load(path)) for path in FUZZ_MODELS}


def _calib_sources() -> dict[str, bytes]:
    import io

    x = _calib(8)
    npz, npy = io.BytesIO(), io.BytesIO()
    np.savez(npz, input=x)
    np.save(npy, x)
    return {"calib.npz": npz.getvalue(), "calib.npy": npy.getvalue()}


CALIB_BYTES = _calib_sources()
CALIB_STRUCTURE = {name: np.concatenate([np.arange(0, min(len(data), 160)),
                                         np.arange(max(len(data) - 200, 0), len(data))])
                   for name, data in CALIB_BYTES.items()}  # npy header, zip headers and directory
SOURCES = {name: (data, FUZZ_STRUCTURE.get(name, CALIB_STRUCTURE.get(name)))
           for name, data in {**FUZZ_BYTES, **CALIB_BYTES}.items()}


@st.composite
def mutated(draw, names: tuple[str, ...]):
    """The bytes of one of the files ``names`` (keys of :data:`SOURCES`), mutated: bytes
    overwritten, flipped, zeroed or inserted, ranges deleted, truncated, or spliced with another
    of them (or with random bytes). Half the positions fall outside the raw weight bytes."""
    source = draw(st.sampled_from(names))
    data = bytearray(SOURCES[source][0])
    places = SOURCES[source][1]

    def position():
        if places is not None and len(places) and draw(st.booleans()):
            return min(int(places[draw(st.integers(0, len(places) - 1))]), len(data) - 1)
        return draw(st.integers(0, len(data) - 1))

    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "splice", "zero"]))
        if not data:
            break
        at = position()
        if kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "zero":
            data[at : at + 8] = bytes(len(data[at : at + 8]))
        else:
            other = SOURCES[draw(st.sampled_from(names))][0]
            cut = draw(st.integers(0, len(other)))
            data[at:] = other[cut:] if draw(st.booleans()) else draw(st.binary(max_size=64))
    return source, bytes(data)


def _fuzz_contract(result, work: Path, before: dict, outputs: set[str]) -> None:
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr[-2000:])
    if result.exit_code == 1:
        assert_contract(result, 1)
        assert snapshot(work) == before
    else:
        unhandled = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not unhandled and "Traceback" not in result.output
        after = snapshot(work)
        assert {k: v for k, v in after.items() if k not in outputs} == before
        assert set(after) - set(before) <= outputs


@pytest.fixture(scope="module")
def fuzz_calib(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_calib")
    np.savez(folder / "calib.npz", input=_calib(12))
    return folder / "calib.npz"


@settings(max_examples=examples(200), **FUZZ_SETTINGS)
@given(case=mutated(tuple(FUZZ_BYTES)))
def test_fuzz_models_analyze(tmp_path_factory, case):
    work = tmp_path_factory.mktemp("fuzz")
    model = _bytes(work / "m.onnx", case[1])
    before = snapshot(work)
    result = invoke("analyze", model, "--json")
    _fuzz_contract(result, work, before, set())


def _fuzz_prune(tmp_path_factory, fuzz_calib, data: bytes) -> None:
    """Prune the model ``data`` (bytes) at keep 0.5: the contract holds, only the outputs appear."""
    work = tmp_path_factory.mktemp("fuzz")
    model = _bytes(work / "m.onnx", data)
    calib = Path(shutil.copy(fuzz_calib, work / "calib.npz"))
    before = snapshot(work)
    result = invoke("prune", model, "-o", work / "out.onnx", "--calib", calib, "--report", work / "r.json",
                    "--holdout", "0", "--keep", "0.5", *FAST)
    _fuzz_contract(result, work, before, {"out.onnx", "r.json"})


@settings(max_examples=examples(60), **FUZZ_SETTINGS)
@given(case=mutated((MLP.name, LENET.name)))
def test_fuzz_models_prune(tmp_path_factory, fuzz_calib, case):
    _fuzz_prune(tmp_path_factory, fuzz_calib, case[1])


@settings(max_examples=examples(80), **FUZZ_SETTINGS)
@given(case=mutated(tuple(CALIB_BYTES)), name=st.sampled_from(["calib.npz", "calib.npy"]))
def test_fuzz_calibration_files(tmp_path_factory, case, name):
    work = tmp_path_factory.mktemp("fuzz")
    calib = _bytes(work / name, case[1])
    before = snapshot(work)
    result = invoke("prune", MLP, "-o", work / "out.onnx", "--calib", calib, "--holdout", "0", *FAST)
    _fuzz_contract(result, work, before, {"out.onnx"})


# Structure-aware: the model is parsed, a few fields are changed (dims, element types, names,
# attributes, op types, opsets, weight values and bytes), and the bytes are written back, so that
# the mutations get past the protobuf parser into the checker, the analysis and the pipeline.

OP_TYPES = ["Conv", "Gemm", "MatMul", "Relu", "Add", "Mul", "Flatten", "Reshape", "Concat", "Split", "Slice",
            "MaxPool", "BatchNormalization", "Identity", "Transpose", "Sigmoid", "Softmax", "Frobnicate"]
NAMES = ["input", "logits", "x", "", "a\nError: b", "\x1b[2J", "\u2028", "../x", "conv1.weight"]
INTS = st.one_of(st.integers(-3, 70), st.sampled_from([2**31 - 1, 2**31, 2**62, -(2**62), 0, -1]))


@st.composite
def field_mutated(draw, names: tuple[str, ...]):
    source = draw(st.sampled_from(names))
    model = onnx.load_from_string(SOURCES[source][0])
    graph = model.graph
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dim", "dtype", "raw", "value", "op", "input", "attr", "name", "drop",
                                     "io_dim", "io_type", "opset", "same_names"]))
        inits = list(graph.initializer)
        if kind in ("dim", "dtype", "raw", "value") and inits:
            init = inits[draw(st.integers(0, len(inits) - 1))]
            if kind == "dim" and init.dims:
                init.dims[draw(st.integers(0, len(init.dims) - 1))] = draw(INTS)
            elif kind == "dtype":
                init.data_type = draw(st.integers(0, 22))
            elif kind == "raw":
                init.raw_data = init.raw_data[: draw(st.integers(0, len(init.raw_data)))]
            elif kind == "value" and init.data_type == onnx.TensorProto.FLOAT and init.raw_data:
                values = np.frombuffer(init.raw_data, np.float32).copy()
                values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38, 1e-45, 0.0]))
                init.raw_data = values.tobytes()
        elif kind in ("op", "input", "attr", "name", "drop") and graph.node:
            node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
            if kind == "op":
                node.op_type = draw(st.sampled_from(OP_TYPES))
            elif kind == "input" and node.input:
                tensors = [n for other in graph.node for n in other.output] + [i.name for i in graph.initializer]
                node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(tensors + NAMES))
            elif kind == "attr":
                name = draw(st.sampled_from(["group", "axis", "transB", "transA", "kernel_shape", "pads", "strides",
                                             "perm", "alpha", "epsilon"]))
                value = draw(st.one_of(INTS, st.lists(INTS, max_size=5), st.floats(allow_nan=True)))
                keep = [a for a in node.attribute if a.name != name]
                del node.attribute[:]
                node.attribute.extend(keep + [helper.make_attribute(name, value)] if value != [] else keep)
            elif kind == "name":
                node.name = draw(st.sampled_from(NAMES))
            else:
                graph.node.remove(node)
        elif kind in ("io_dim", "io_type"):
            values = list(graph.input) + list(graph.output)
            value = values[draw(st.integers(0, len(values) - 1))]
            dims = value.type.tensor_type.shape.dim
            if kind == "io_type":
                value.type.tensor_type.elem_type = draw(st.integers(0, 22))
            elif dims:
                dim = dims[draw(st.integers(0, len(dims) - 1))]
                if draw(st.booleans()):
                    dim.dim_value = draw(INTS)
                else:
                    dim.dim_param = draw(st.sampled_from(["N", "S", "x\ny"]))
        elif kind == "opset":
            model.opset_import[0].version = draw(st.integers(1, 30))
        elif kind == "same_names":
            for node in graph.node:
                node.name = "same"
    return source, model.SerializeToString()


@settings(max_examples=examples(100), **FUZZ_SETTINGS)
@given(case=field_mutated((MLP.name, LENET.name, "densenet_block.onnx", "mobilenetv2_const.onnx")))
def test_fuzz_model_fields_prune(tmp_path_factory, fuzz_calib, case):
    _fuzz_prune(tmp_path_factory, fuzz_calib, case[1])


def test_text_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    """Found by the fuzzer: a byte flipped in a string field (here the producer name) reads back
    as bytes, and writing the pruned model failed with UnicodeDecodeError."""
    data = MLP.read_bytes()
    where = data.find(b"pytorch")
    model = _bytes(tmp_path / "m.onnx", data[:where] + b"\xf0" + data[where + 1:])
    before = snapshot(tmp_path)
    for args in (("analyze", model), ("prune", model, "-o", tmp_path / "out.onnx", "--calib", MODELS / "digits_calib.npz")):
        result = invoke(*args)
        assert_contract(result, 1, "producer_name is not valid UTF-8")
        assert snapshot(tmp_path) == before


def test_internal_tensors_are_checked_entry_by_entry_where_their_sum_overflows():
    """check_finite reads a tensor's sum first; finite entries whose float32 sum overflows pass,
    a NaN or Inf anywhere does not."""
    from onnx_subprune.data import check_finite
    from onnx_subprune.errors import SubpruneError

    large = np.full((4, 1000), 3e38, np.float32)  # finite, its sum is not
    check_finite({"large": large}, {"negative": -large})
    for bad in (np.nan, np.inf, -np.inf):
        value = large.copy()
        value[3, 999] = bad
        with pytest.raises(SubpruneError, match="NaN or Inf"):
            check_finite({"fine": large}, {"t": value})
