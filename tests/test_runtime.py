"""Provider choice: CUDA only when a session really gets it, one informative line otherwise."""

from pathlib import Path

import pytest

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
        with pytest.raises(SubpruneError, match="--device cuda: CUDAExecutionProvider is not usable"):
            runtime.choose_providers("cuda")


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
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: --device cuda")
