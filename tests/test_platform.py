"""Dependencies by platform: the CUDA build of onnxruntime where its wheels exist (Linux x86_64,
Windows AMD64), the CPU build elsewhere (macOS, Linux aarch64).

The default test evaluates pyproject.toml's environment markers with ``packaging`` against each
platform's marker environment (no network). pip's ``--platform`` does not change the marker
environment (markers are evaluated for the running interpreter), so the slow test resolves the
markers here and asks pip, with ``--dry-run --platform``, whether each platform's requirements
have wheels there (needs the package index).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

BASE = {"implementation_name": "cpython", "platform_python_implementation": "CPython",
        "python_version": "3.11", "python_full_version": "3.11.7", "implementation_version": "3.11.7",
        "platform_release": "", "platform_version": "", "extra": ""}
_TABLE = [
    # name, platform_system, platform_machine, sys_platform, pip --platform tag, onnxruntime build expected
    ("macOS arm64", "Darwin", "arm64", "darwin", "macosx_14_0_arm64", "onnxruntime"),
    ("Linux aarch64", "Linux", "aarch64", "linux", "manylinux_2_28_aarch64", "onnxruntime"),
    ("Linux x86_64", "Linux", "x86_64", "linux", "manylinux_2_28_x86_64", "onnxruntime-gpu"),
    ("Windows AMD64", "Windows", "AMD64", "win32", "win_amd64", "onnxruntime-gpu"),
    ("macOS x86_64", "Darwin", "x86_64", "darwin", "macosx_13_0_x86_64", "onnxruntime"),
    ("Windows ARM64", "Windows", "ARM64", "win32", "win_arm64", "onnxruntime"),
    ("FreeBSD amd64", "FreeBSD", "amd64", "freebsd14", None, "onnxruntime"),
]
PLATFORMS = {
    name: ({"platform_system": system, "platform_machine": machine, "sys_platform": sys_platform,
            "os_name": "nt" if system == "Windows" else "posix"}, tag, expected)
    for name, system, machine, sys_platform, tag, expected in _TABLE
}
"""name -> (marker environment, pip --platform tag, the onnxruntime distribution expected)."""
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}
CHECKED_WITH_PIP = ("macOS arm64", "Linux aarch64", "Linux x86_64")


def requirements(environment: dict[str, str]) -> list[Requirement]:
    """The package's dependencies that apply in ``environment`` (a PEP 508 marker environment)."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        listed = tomllib.load(handle)["project"]["dependencies"]
    env = {**BASE, **environment}
    return [req for req in map(Requirement, listed) if req.marker is None or req.marker.evaluate(env)]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_one_onnxruntime_build_per_platform(platform):
    environment, _, expected = PLATFORMS[platform]
    reqs = requirements(environment)
    assert [r.name for r in reqs if r.name in RUNTIMES] == [expected]
    assert {"onnx", "onnx-graphsurgeon", "numpy", "scipy", "click"} <= {r.name for r in reqs}


@pytest.mark.slow
@pytest.mark.parametrize("platform", CHECKED_WITH_PIP)
def test_pip_finds_wheels_for_the_platform(platform, tmp_path):
    """pip (dry run, binary wheels only) resolves each platform's requirements for that platform."""
    environment, tag, expected = PLATFORMS[platform]
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", "--platform", tag, "--python-version", "3.11",
               "--target", str(tmp_path / "target"), "--report", str(report),
               *(str(r).split(";")[0] for r in requirements(environment))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if done.returncode and ("Could not fetch" in done.stderr or "connection" in done.stderr.lower()):
        pytest.skip("no package index reachable")
    assert done.returncode == 0, done.stderr[-2000:]
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert expected in installed and not (RUNTIMES - {expected}) & installed
