"""Calibration augmentation: the copies, the split they join, and a prune that uses them."""

import numpy as np
import pytest
from click.testing import CliRunner

import builders
from helpers import random_feeds, run
from onnx_subprune.augment import augment, spatial_axes
from onnx_subprune.calibrate import expand_split, split_samples
from onnx_subprune.cli import main
from onnx_subprune.config import PruneConfig
from onnx_subprune.errors import ConfigError
from onnx_subprune.pipeline import prune


def test_shift_moves_by_one_pixel_and_repeats_the_border():
    x = np.arange(2 * 1 * 3 * 5, dtype=np.float32).reshape(2, 1, 3, 5)
    feeds, source = augment({"x": x}, ["shift"])
    out = feeds["x"]
    assert out.shape == (10, 1, 3, 5)
    np.testing.assert_array_equal(source, [0, 1] * 5)
    np.testing.assert_array_equal(out[:2], x)
    up, down, left, right = (out[2 + 2 * i: 4 + 2 * i] for i in range(4))
    np.testing.assert_array_equal(up[:, :, :-1], x[:, :, 1:])   # content moved up one row
    np.testing.assert_array_equal(up[:, :, -1], x[:, :, -1])     # last row repeated
    np.testing.assert_array_equal(down[:, :, 1:], x[:, :, :-1])
    np.testing.assert_array_equal(down[:, :, 0], x[:, :, 0])
    np.testing.assert_array_equal(left[..., :-1], x[..., 1:])
    np.testing.assert_array_equal(right[..., 1:], x[..., :-1])


def test_hflip_mirrors_the_width_axis_of_nhwc_and_repeats_other_inputs():
    x = np.random.default_rng(0).standard_normal((3, 5, 6, 3)).astype(np.float32)
    scale = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    feeds, source = augment({"image": x, "scale": scale}, ["hflip"])
    assert spatial_axes(x.shape) == (1, 2)
    np.testing.assert_array_equal(feeds["image"][3:], x[:, :, ::-1])
    np.testing.assert_array_equal(feeds["scale"], np.concatenate([scale, scale]))
    np.testing.assert_array_equal(source, [0, 1, 2, 0, 1, 2])


def test_augmentation_needs_an_image_input():
    with pytest.raises(ConfigError, match="augment needs a 4-D float image input"):
        augment({"ids": np.zeros((4, 16), dtype=np.int64)}, ["shift"])
    with pytest.raises(ConfigError, match="augment"):  # 3 x 3: the channel axis cannot be told
        augment({"x": np.zeros((2, 3, 5, 3), dtype=np.float32)}, ["shift"])
    with pytest.raises(ConfigError, match="'rotate' is unknown"):
        PruneConfig(augment=("rotate",))


@pytest.mark.parametrize("holdout", ["auto", 0.25])
def test_copies_join_their_originals_fold_and_held_out_samples_stay_originals(holdout):
    split = split_samples(12, holdout, 3)
    _, source = augment({"x": np.zeros((12, 1, 4, 4), dtype=np.float32)}, ["shift", "hflip"])
    wide = expand_split(split, source)
    assert wide.originals == 12 and wide.kind == split.kind
    np.testing.assert_array_equal(wide.holdout, split.holdout)
    np.testing.assert_array_equal(wide.plain_calibration, split.calibration)
    assert len(wide.calibration) == 6 * len(split.calibration)
    np.testing.assert_array_equal(np.sort(np.unique(source[wide.calibration])), split.calibration)
    for fold, wide_fold in zip(split.folds, wide.folds, strict=True):
        np.testing.assert_array_equal(np.unique(source[wide_fold]), fold)
        assert len(wide_fold) == 6 * len(fold)


def test_a_prune_with_augmentation_fits_the_copies_of_the_calibration_samples_only():
    """The same model as a prune of the calibration originals and their copies given by hand;
    the verification reads held-out originals only."""
    model = builders.conv_bn_pool_conv()
    feeds = random_feeds(model, 20, seed=1)
    config = dict(keep=0.5, device="cpu", seed=2)
    result = prune(model, feeds, PruneConfig(augment=("shift",), holdout=0.25, **config))
    split = split_samples(20, 0.25, 2)
    by_hand, _ = augment({k: v[split.calibration] for k, v in feeds.items()}, ["shift"])
    expected = prune(model, by_hand, PruneConfig(holdout=0.0, **config))
    held_out = {k: v[split.holdout] for k, v in feeds.items()}
    np.testing.assert_allclose(run(result.model, held_out)[0], run(expected.model, held_out)[0], rtol=1e-5, atol=1e-6)
    samples = result.report.samples
    assert samples == {"calibration": 15, "holdout": 5, "holdout_kind": "fixed", "augmented": 60}
    assert result.report.verified_on == {"samples": 5, "set": "held-out"}


def test_cli_augment_on_a_model_without_image_input_fails_in_one_line(tmp_path):
    model_path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    import onnx

    model = builders.gemm_gemm()
    onnx.save(model, model_path)
    np.savez(calib, **random_feeds(model, 16, seed=0))
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(tmp_path / "out.onnx"),
                                       "--calib", str(calib), "--augment", "shift", "--quiet"])
    assert result.exit_code != 0
    assert "augment" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()
