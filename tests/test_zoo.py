"""Every fetched zoo model (models/zoo.toml) analyzes and prunes to 0.75 of its params through
the CLI, on 16 in-domain calibration inputs (slow; `python tools/zoo.py fetch` fills the cache,
and the `bench` extra provides the input recipes). A model whose entry names an
``expected_error`` (the calibration format cannot feed it, nothing is prunable, or the groups
reach too little of it for the target) must fail with that one-line reason, not a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_subprune.cli import main

TOOLS = Path(__file__).resolve().parent.parent / "tools"
MANIFEST = TOOLS.parent / "models" / "zoo.toml"


def _names() -> list[str]:
    import re

    return re.findall(r'^name = "([^"]+)"', MANIFEST.read_text(), flags=re.M)


def _zoo():
    pytest.importorskip("skimage", reason="the zoo's input recipes need the bench extra")
    pytest.importorskip("PIL", reason="the zoo's input recipes need the bench extra")
    sys.path.insert(0, str(TOOLS))
    import zoo

    return zoo


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_zoo_model_analyzes_and_prunes(name, tmp_path):
    zoo = _zoo()
    entry = zoo.get_entry(name)
    path = zoo.cached_path(entry)
    if path is None:
        pytest.skip(f"zoo model {name} is not in the cache {zoo.cache_dir()}: python tools/zoo.py fetch")
    runner = CliRunner()
    result = runner.invoke(main, ["analyze", str(path)])
    assert result.exit_code == 0 and result.exception is None, result.output
    feeds = zoo.feeds(entry, 16, 0, "calib")
    calib = tmp_path / "calib.npz"
    np.savez(calib, **zoo.samples_first(entry, feeds))
    out = tmp_path / "pruned.onnx"
    result = runner.invoke(main, ["prune", str(path), "-o", str(out), "--calib", str(calib),
                                  "--target-params", "0.75", "--device", "cpu", "--quiet"])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if entry.get("expected_error") is not None:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert result.exit_code == 1 and len(errors) == 1 and not out.exists(), result.stderr
        assert entry["expected_error"] in errors[0], errors[0]
        return
    assert result.exit_code == 0, result.stderr
    assert out.exists()
