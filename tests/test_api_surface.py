"""The package API (issue 11 items 5 and 6): ``onnx_subprune.prune/analyze/evaluate`` and
``__version__``, the report's provenance, ``evaluate`` ignoring extra arrays, and progress on
stderr (a bar with ETA on a terminal, one line per stage and group otherwise)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

import onnx_subprune
from onnx_subprune import cli
from helpers import MODELS, ROOT, invoke

LENET = MODELS / "lenet5.onnx"
TEST_NPZ = MODELS / "digits_test.npz"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_is_cheap_and_exports_the_api():
    code = ("import sys, onnx_subprune as o; print(o.__version__); "
            "print(all(callable(getattr(o, n)) for n in ('prune', 'analyze', 'evaluate', 'sensitivity'))); "
            "print('onnxruntime' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    assert out[1:] == ["True", "False", "False"]
    assert out[0] == onnx_subprune.__version__ and out[0][0].isdigit()


@pytest.mark.parametrize("given, expected", [(None, "4"), ("20", "20")])
def test_import_lets_openblas_threads_sleep_unless_told(given, expected):
    """Importing the package (before NumPy, as the command line does) sets OpenBLAS's spin-wait
    of idle threads to its least, keeping a value the environment already has."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if given is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = given
    code = "import os, onnx_subprune, numpy; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert out.stdout.strip() == expected


def test_version_matches_pyproject():
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as handle:
        assert onnx_subprune.__version__ == tomllib.load(handle)["project"]["version"]


def test_functions_stay_functions_after_the_submodules_load():
    from onnx_subprune.analyze import analyze as module_function  # noqa: F401  (loads the submodule)
    import onnx_subprune.sensitivity  # noqa: F401

    assert callable(onnx_subprune.analyze) and onnx_subprune.analyze.__module__ == "onnx_subprune"
    assert onnx_subprune.sensitivity.__module__ == "onnx_subprune"
    assert onnx_subprune.PruneConfig().keep == 0.5
    with pytest.raises(AttributeError):
        onnx_subprune.nothing_here  # noqa: B018


def test_api_prune_analyze_evaluate(tmp_path, calib64):
    analysis = onnx_subprune.analyze(LENET)
    assert len(analysis.groups) == 4
    result = onnx_subprune.prune(LENET, tmp_path / "p.onnx", calib64, keep=0.25, device="cpu",
                                 report=tmp_path / "r.json")
    assert result.report.params["after"] < result.report.params["before"]
    run = json.loads((tmp_path / "r.json").read_text())["run"]
    assert run["version"] == onnx_subprune.__version__ and run["command"] is None
    assert run["output"]["sha256"] == sha256(tmp_path / "p.onnx")
    evaluation = onnx_subprune.evaluate(LENET, tmp_path / "p.onnx", TEST_NPZ, labels="label", device="cpu")
    assert set(evaluation) >= {"outputs", "accuracy", "original", "pruned"}
    with pytest.raises(onnx_subprune.SubpruneError):
        onnx_subprune.prune(LENET, tmp_path / "q.onnx", calib64, keep=2.0)


def test_report_records_version_command_paths_and_hashes(tmp_path, calib64):
    args = ["prune", LENET, "-o", tmp_path / "p.onnx", "--calib", calib64, "--keep", "0.5",
            "--report", tmp_path / "r.json", "--device", "cpu", "--quiet"]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    run = json.loads((tmp_path / "r.json").read_text())["run"]
    assert run["command"] == ["onnx-subprune", *map(str, args)]
    assert run["version"] == onnx_subprune.__version__
    assert run["model"] == {"path": str(LENET), "sha256": sha256(LENET)}
    assert run["calibration"] == {"path": str(calib64), "sha256": sha256(calib64)}
    assert run["output"] == {"path": str(tmp_path / "p.onnx"), "sha256": sha256(tmp_path / "p.onnx")}


def test_evaluate_ignores_arrays_that_are_not_inputs(tmp_path, calib64):
    invoke("prune", LENET, "-o", tmp_path / "p.onnx", "--calib", calib64, "--device", "cpu", "--quiet")
    data = dict(np.load(TEST_NPZ))
    np.savez(tmp_path / "d.npz", extra=np.zeros(3), more=np.ones((2, 2)), **data)
    result = invoke("evaluate", LENET, tmp_path / "p.onnx", "--data", tmp_path / "d.npz", "--labels", "label",
                    "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "ignoring" in line]
    assert len(notes) == 1 and "'extra'" in notes[0] and "'more'" in notes[0]


class _Stderr:
    """A stand-in for sys.stderr that records what is written and says whether it is a terminal."""

    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def _drive(monkeypatch, tty: bool) -> str:
    stream = _Stderr(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(cli.click.utils, "_default_text_stderr", lambda: stream)
    with cli._Progress(True) as bar:
        bar("capture (calibration)", 1, 2)
        bar("sensitivity", 0, 4)
        bar("sensitivity", 4, 4)
        for group in range(3):
            bar("capture (calibration)", 1, 2)
            bar("capture (calibration)", 2, 2)
            bar("groups", group + 1, 3)
        cli._note("a note")
    return stream.text


def test_progress_lines_when_not_a_terminal(monkeypatch):
    lines = _drive(monkeypatch, tty=False).splitlines()
    assert lines[:2] == ["capture (calibration): 2 steps", "sensitivity: 4 steps"]
    assert [line.split(",")[0] for line in lines if line.startswith("groups")] == [
        "groups: 1/3 done", "groups: 2/3 done", "groups: 3/3 done"]
    assert lines[-1] == "a note"


def test_progress_bar_on_a_terminal_shows_eta_and_the_inner_stage(monkeypatch):
    text = _drive(monkeypatch, tty=True)
    frames = text.split("\r")
    assert any("groups [" in f and "| capture (calibration) 1/2" in f and "ETA" in f for f in frames)
    assert "a note\n" in text
    assert "\n" not in text.replace("a note\n", "")  # the bar is redrawn in place, never scrolled


def test_quiet_prints_no_progress(monkeypatch):
    stream = _Stderr(False)
    monkeypatch.setattr(sys, "stderr", stream)
    with cli._Progress(False) as bar:
        bar("groups", 1, 3)
    assert stream.text == ""
