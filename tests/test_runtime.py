"""Provider choice: CUDA only when a session really gets it, one informative line otherwise."""

from pathlib import Path

import numpy as np
import onnx
import pytest

import builders

from onnx_subprune import runtime
from onnx_subprune.errors import SubpruneError


def test_cpu_is_always_available():
    providers, note = runtime.choose_providers("cpu")
    assert providers == ["CPUExecutionProvider"] and "\n" not in note


def test_auto_uses_cuda_only_when_it_works():
    providers, note = runtime.choose_providers("auto")
    works, _ = runtime._cuda_works()
    assert (providers[0] == "CUDAExecutionProvider") == works
    assert providers[-1] == "CPUExecutionProvider" and "\n" not in note
    if not works:
        assert "CUDA not usable" in note


def test_cuda_fails_clearly_where_it_does_not_work():
    works, _ = runtime._cuda_works()
    if works:
        assert runtime.choose_providers("cuda")[0][0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(SubpruneError, match="device cuda: CUDAExecutionProvider is not usable"):
            runtime.choose_providers("cuda")


def test_prune_sessions_do_not_spin_but_latency_probes_keep_the_default():
    """Worker threads spin-waiting after a run would take the cores from the statistics that
    follow it; a latency probe measures onnxruntime as deployed (spinning, its default)."""
    spinning = "session.intra_op.allow_spinning"
    assert runtime._options().get_session_config_entry(spinning) == "0"
    with pytest.raises(Exception):  # not set: onnxruntime's default
        runtime._options(spin=True).get_session_config_entry(spinning)


def test_cuda_libraries_are_preloaded_quietly(capsys):
    """onnxruntime's preload of the nvidia-* pip packages prints its own warnings and may raise:
    neither reaches the user (the CUDA probe that follows says what is usable)."""
    calls = []

    def noisy():
        calls.append(1)
        print("Failed to load libcublas.so.13")
        raise RuntimeError("no such directory")

    runtime._preload_cuda_libraries(type("Ort", (), {"preload_dlls": staticmethod(noisy)}))
    runtime._preload_cuda_libraries(object())  # an onnxruntime without preload_dlls
    assert calls == [1]
    assert capsys.readouterr() == ("", "")


def test_unknown_device():
    with pytest.raises(SubpruneError, match="unknown device"):
        runtime.choose_providers("tpu")


def test_cli_device_cuda_is_one_line_exit_1(tmp_path):
    from click.testing import CliRunner

    from onnx_subprune.cli import main

    if runtime._cuda_works()[0]:
        pytest.skip("CUDA works on this machine")
    models = Path(__file__).resolve().parent.parent / "models"
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(main, ["prune", str(models / "lenet5.onnx"), "-o", str(out), "--calib",
                                       str(models / "digits_calib.npy"), "--device", "cuda", "--quiet"])
    assert result.exit_code == 1 and not out.exists()
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: device cuda")


def _gemm_chain(batch_dim) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm whose input declares ``batch_dim`` (int dim_value or str dim_param)."""
    text = builders.header("float[N,10] x", "float[N,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
    }"""
    model = builders.build(text, {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,)})
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        if isinstance(batch_dim, int):
            dim.dim_value = batch_dim
        else:
            dim.dim_param = batch_dim
    return model


@pytest.mark.parametrize("batch_dim", [-1, 0, "batch"])
def test_minus_one_zero_and_symbolic_batch_dims_are_dynamic(batch_dim):
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.pipeline import prune

    model = _gemm_chain(batch_dim)
    x = np.random.default_rng(0).normal(size=(40, 10)).astype(np.float32)
    assert runtime.fixed_batch(model, {"x": x}) is None
    assert runtime.batch_size_for(model, 32, {"x": x}) == 32
    result = prune(model, {"x": x}, PruneConfig(keep=0.5, device="cpu", holdout=0.2))
    assert result.report.samples == {"calibration": 32, "holdout": 8, "holdout_kind": "fixed"}
    assert result.report.groups[0].rows == 32


def test_fixed_batch_pads_the_last_batch_and_drops_the_padded_rows():
    model = _gemm_chain(4)
    x = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    assert runtime.fixed_batch(model, {"x": x}) == 4 and runtime.batch_size_for(model, 32, {"x": x}) == 4
    sess = runtime.session(model, [runtime.CPU], ("b", "y"))
    padded = runtime.run(sess, {"x": np.concatenate([x, x[-1:]])})
    short = runtime.run(sess, {"x": x})
    assert short["y"].shape == (3, 3) and short["b"].shape == (3, 6)
    np.testing.assert_allclose(short["y"], padded["y"][:3], rtol=1e-6)


def _stateful(batch: str) -> onnx.ModelProto:
    """x [B,10] -> Gemm -> Relu -> Gemm -> y [B,3], with a recurrent-style state [2,B,4] that
    keeps its samples on axis 1 (as silero-vad's) and comes back doubled as stateN [2,B,4]."""
    text = builders.header(f"float[{batch},10] x, float[2,{batch},4] state",
                           f"float[{batch},3] y, float[2,{batch},4] stateN") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        y = Gemm <transB = 1> (b, w2, b2)
        stateN = Add (state, state)
    }"""
    return builders.build(text, {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,)})


@pytest.mark.parametrize("batch", ["N", "1"])
def test_an_input_with_its_samples_on_another_axis_is_fed_there(batch):
    """Calibration arrays stack samples first (state as (n, 2, 4)); the model gets them on the
    axis it declares for them (dynamic, or fixed at 1 as in the spox export), and an output
    with its batch on axis 1 comes back with samples first, also across unequal batches."""
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.data import check_inputs
    from onnx_subprune.pipeline import prune

    model = _stateful(batch)
    rng = np.random.default_rng(0)
    feeds = check_inputs({"x": rng.normal(size=(10, 10)).astype(np.float32),
                          "state": rng.normal(size=(10, 2, 4)).astype(np.float32)}, model, "calib")
    expected = 1 if batch == "1" else None
    assert runtime.fixed_batch(model, feeds) == expected
    sess = runtime.session(model, [runtime.CPU])
    n = expected or 3
    outputs = runtime.run(sess, {name: value[:n] for name, value in feeds.items()})
    # a symbolic batch axis comes back first; a static one stays where the model declares it
    state = feeds["state"][:n] if batch == "N" else np.moveaxis(feeds["state"][:n], 0, 1)
    np.testing.assert_allclose(outputs["stateN"], 2 * state)
    result = prune(model, feeds, PruneConfig(keep=0.5, device="cpu", batch_size=4))
    assert result.report.groups[0].rows == 10
    assert result.report.output_error < 1.0


def test_sample_axis_prefers_a_dynamic_axis_and_says_when_none_fits():
    from onnx_subprune.graph import sample_axis

    assert sample_axis([None, 3, 8], (3, 8)) == 0
    assert sample_axis([2, None, 128], (2, 128)) == 1
    assert sample_axis([2, 1, 128], (2, 128)) == 1
    assert sample_axis([None, None], (7,)) == 0
    assert sample_axis([1, 3, 8], (3, 9)) is None
    assert sample_axis([], ()) is None


def test_batches_are_views_of_consecutive_samples_and_copies_otherwise():
    from onnx_subprune.runtime import batches

    feeds = {"x": np.arange(40, dtype=np.float32).reshape(10, 4)}
    for indices, shared in ((np.arange(2, 9), True), (np.array([0, 3, 4, 7, 9]), False)):
        got = list(batches(feeds, indices, 3))
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in got]), feeds["x"][indices])
        assert [len(b["x"]) for b in got] == [min(3, len(indices) - s) for s in range(0, len(indices), 3)]
        assert all(np.shares_memory(b["x"], feeds["x"]) == shared for b in got)
