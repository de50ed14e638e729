"""Fixtures shared by the test modules: the shipped LeNet-5 with calibration samples, and a
small calibration file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import MODELS
from onnx_subprune.data import check_inputs, load_arrays
from onnx_subprune.graph import load_model


@pytest.fixture(scope="session")
def lenet():
    """models/lenet5.onnx and its first 128 calibration samples (``{"input": (128, 1, 28, 28)}``)."""
    model = load_model(MODELS / "lenet5.onnx")
    feeds = check_inputs(load_arrays(MODELS / "digits_calib.npz"), model, "calib")
    return model, {k: v[:128] for k, v in feeds.items()}


@pytest.fixture(scope="session")
def calib64(tmp_path_factory) -> Path:
    """An .npz with the first 64 digits calibration images as ``input``."""
    path = tmp_path_factory.mktemp("calib") / "calib64.npz"
    np.savez(path, input=np.load(MODELS / "digits_calib.npz")["input"][:64])
    return path
