"""Calibration sources (onnx_subprune/sources.py): image folders and globs with their
preprocessing, calibration scripts, iterables of feed dicts; every failure is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_subprune import sources
from onnx_subprune.api import prune_file
from onnx_subprune.config import PruneConfig
from onnx_subprune.errors import ConfigError, SubpruneError
from onnx_subprune.sources import CalibrationSource, ImageRecipe, calibration_feeds, image_feeds

from helpers import MODELS, block_import, invoke, save_bytes, save_onnx
from test_cli import FAST, assert_ok, assert_user_error

Image = pytest.importorskip("PIL.Image")

LENET = MODELS / "lenet5.onnx"
LENET_MEAN, LENET_STD = "0.305226", "0.324580"  # models/README.md: the digits' normalization


def identity_model(shape: list, elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """One input ``x`` of ``shape`` (strings are symbolic dims), returned as it is."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", elem, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0, ext: str = "png") -> list[Path]:
    """``count`` random RGB images of ``size`` (width, height) named img0.png, img1.png, ..."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        paths.append(folder / f"img{index}.{ext}")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """64 calibration digits of models/digits_calib.npz as 28x28 grayscale PNGs (the
    normalization undone), plus a text file."""
    folder = tmp_path_factory.mktemp("digits")
    normalized = np.load(MODELS / "digits_calib.npz")["input"][:64, 0]
    pixels = np.clip(np.round((normalized * float(LENET_STD) + float(LENET_MEAN)) * 255), 0, 255)
    for index, image in enumerate(pixels.astype(np.uint8)):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


# ---------------------------------------------------------------------------------------------
# images


def test_nchw_rgb_and_bgr_equal_a_hand_made_preprocessing(tmp_path):
    paths = write_images(tmp_path / "img", 3, (6, 4))
    model = identity_model(["N", 3, 4, 6])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    feeds = image_feeds(model, str(tmp_path / "img"), ImageRecipe(mean=mean, std=std, order="BGR"))
    hand = np.stack([np.asarray(Image.open(p).convert("RGB"))[..., ::-1] for p in paths]).astype(np.float32)
    hand = ((hand / 255 - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    assert feeds["x"].shape == (3, 3, 4, 6) and feeds["x"].dtype == np.float32
    np.testing.assert_allclose(feeds["x"], hand, rtol=1e-6, atol=1e-6)


def test_nhwc_grayscale_crop_equals_a_hand_made_preprocessing(tmp_path):
    paths = write_images(tmp_path / "img", 2, (12, 6))
    model = identity_model(["N", 4, 6, 1])
    feeds = image_feeds(model, str(tmp_path / "img"), ImageRecipe(resize="crop", scale=1.0, mean=(10.0,)))
    # shorter side 6 -> 4: the image becomes 8x4, the center 6 columns are kept
    hand = [np.asarray(Image.open(p).convert("L").resize((8, 4), Image.BILINEAR))[:, 1:7] for p in paths]
    hand = np.stack(hand)[..., None].astype(np.float32) - 10
    assert feeds["x"].shape == (2, 4, 6, 1)
    np.testing.assert_allclose(feeds["x"], hand)


def test_pad_letterboxes_on_gray_and_integer_inputs_get_raw_pixels(tmp_path):
    write_images(tmp_path / "img", 1, (8, 4))
    model = identity_model(["N", 8, 8, 3], TensorProto.UINT8)
    feeds = image_feeds(model, str(tmp_path / "img"), ImageRecipe(resize="pad"))
    assert feeds["x"].dtype == np.uint8 and feeds["x"].shape == (1, 8, 8, 3)
    assert (feeds["x"][0, :2] == sources.PAD_VALUE).all() and (feeds["x"][0, 6:] == sources.PAD_VALUE).all()
    with pytest.raises(ConfigError, match="scale does not apply"):
        image_feeds(model, str(tmp_path / "img"), ImageRecipe(scale=1.0))


def test_glob_takes_the_matching_files_in_name_order(tmp_path):
    write_images(tmp_path / "img", 3, (6, 4))
    write_images(tmp_path / "img", 2, (6, 4), seed=1, ext="jpg")
    model = identity_model(["N", 3, 4, 6])
    both = image_feeds(model, str(tmp_path / "img" / "*"))
    pngs = image_feeds(model, str(tmp_path / "img" / "*.png"), max_samples=2)
    assert len(both["x"]) == 5 and len(pngs["x"]) == 2
    np.testing.assert_array_equal(pngs["x"], both["x"][[1, 3]])  # img0.jpg img0.png img1.jpg img1.png ...


def test_layout_and_size_follow_the_model_or_are_asked_for(tmp_path):
    write_images(tmp_path / "img", 1, (6, 4))
    folder = str(tmp_path / "img")
    assert image_feeds(identity_model(["N", "C", "H", 3]), folder, ImageRecipe(size=(5, 7)))["x"].shape == (1, 5, 7, 3)
    with pytest.raises(ConfigError, match="image_size is required: .*symbolic"):
        image_feeds(identity_model(["N", 3, "H", "W"]), folder)
    with pytest.raises(ConfigError, match="layout is required"):
        image_feeds(identity_model(["N", 3, 8, 3]), folder)
    with pytest.raises(ConfigError, match="image_size 5x5 differs from the height 4"):
        image_feeds(identity_model(["N", 3, 4, 6]), folder, ImageRecipe(size=(5, 5)))
    with pytest.raises(ConfigError, match="mean has 2 values; give 1 or 3"):
        image_feeds(identity_model(["N", 3, 4, 6]), folder, ImageRecipe(mean=(0.1, 0.2)))
    with pytest.raises(SubpruneError, match="has 4 channels"):
        image_feeds(identity_model(["N", 4, 4, 6]), folder, ImageRecipe(layout="NCHW"))


@pytest.mark.parametrize("case", ["empty folder", "no match", "only text", "corrupt", "missing pillow",
                                  "symbolic size", "options on npz", "report onto an image"])
def test_image_failures_are_one_line(case, tmp_path, monkeypatch):
    model = save_onnx(tmp_path / "m.onnx", identity_model(["N", 3, 4, 6]))
    folder = tmp_path / "img"
    folder.mkdir()
    args, expected = ["--calib", folder], None
    if case == "empty folder":
        expected = "the folder holds no image files"
    elif case == "no match":
        args, expected = ["--calib", folder / "*.png"], "the pattern matches no image files"
    elif case == "only text":
        (folder / "a.txt").write_text("x")
        expected = "no image files (1 other files)"
    elif case == "corrupt":
        write_images(folder, 2, (6, 4))
        save_bytes(folder / "img1.png", b"\x89PNG\r\n\x1a\n truncated")
        expected = f"calibration image {folder / 'img1.png'}: cannot read it"
    elif case == "missing pillow":
        write_images(folder, 1, (6, 4))
        block_import(monkeypatch, "PIL")
        expected = "pip install 'onnx-subprune[images]'"
    elif case == "symbolic size":
        save_onnx(model, identity_model(["N", 3, "H", "W"]))
        write_images(folder, 1, (6, 4))
        expected = "--image-size is required"
    elif case == "options on npz":
        args, expected = ["--calib", MODELS / "digits_calib.npz", "--image-size", "4x6"], \
            "--image-size applies to a folder or glob of images"
    else:
        (image,) = write_images(folder, 1, (6, 4))
        args, expected = ["--calib", folder, "--report", image], "it is the calibration data being read"
    before = sorted(folder.iterdir())
    result = invoke("prune", model, "-o", tmp_path / "out.onnx", *args, *FAST)
    assert_user_error(result, expected)
    assert not (tmp_path / "out.onnx").exists() and sorted(folder.iterdir()) == before


def test_calib_and_calib_script_exactly_one(tmp_path):
    for args in ([], ["--calib", MODELS / "digits_calib.npz", "--calib-script", "x.py"]):
        result = invoke("prune", LENET, "-o", tmp_path / "out.onnx", *args, *FAST)
        assert result.exit_code == 2 and "exactly one of --calib and --calib-script" in result.stderr
    result = invoke("prune", LENET, "-o", tmp_path / "out.onnx", "--calib", "d", "--image-size", "4y6")
    assert result.exit_code == 2 and "expected HxW or N" in result.stderr


def test_prune_lenet_from_a_folder_of_digit_pngs(digits, tmp_path):
    output, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = invoke("prune", LENET, "-o", output, "--calib", digits, "--mean", LENET_MEAN, "--std", LENET_STD,
                    "--report", report, *FAST)
    assert_ok(result)
    assert "skipped 1 file that is not an image (by extension): 'notes.txt'" in result.stderr
    data = json.loads(report.read_text())
    assert data["samples"]["calibration"] + data["samples"]["holdout"] == 64
    assert data["output_error"] < 0.25  # normalized as in training: a sane calibration
    # the same images through the sensitivity command, as a glob
    result = invoke("sensitivity", LENET, "--calib", f"{digits}/00*.png", "--mean", LENET_MEAN, "--std",
                    LENET_STD, "--holdout", "0.25", "--samples", "8", *FAST)
    assert_ok(result)


# ---------------------------------------------------------------------------------------------
# scripts and feed dicts


SCRIPT = """
import numpy as np

def load_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        yield {"input": rng.standard_normal((8, 1, 28, 28)).astype(np.float32)}

def small():
    return [{"input": np.zeros((4, 1, 28, 28), np.float32) + i} for i in range(3)]

def failing():
    yield {"input": np.zeros((4, 1, 28, 28), np.float32)}
    raise RuntimeError("camera\\nunplugged")

def wrong_shape():
    yield {"input": np.zeros((4, 1, 28, 28), np.float32)}
    yield {"input": np.zeros((4, 1, 32, 32), np.float32)}
"""


@pytest.fixture()
def script(tmp_path) -> Path:
    path = tmp_path / "calib_data.py"
    path.write_text(SCRIPT)
    return path


def test_script_default_and_named_function(script):
    model = onnx.load(LENET)
    feeds, name = calibration_feeds(model, CalibrationSource(script=str(script)))
    assert feeds["input"].shape == (40, 1, 28, 28) and name == f"calibration script {script}"
    feeds, _ = calibration_feeds(model, CalibrationSource(script=f"{script}:small", max_samples=6))
    assert feeds["input"].shape == (6, 1, 28, 28) and feeds["input"][5].max() == 1


@pytest.mark.parametrize("function, expected", [
    ("failing", "(line 14): RuntimeError: camera unplugged"),
    ("wrong_shape", "feed 2: input 'input' has shape [4, 1, 32, 32], the model expects [?, 1, 28, 28]"),
    ("absent", "no function 'absent'"),
])
def test_script_failures_are_one_line(script, tmp_path, function, expected):
    result = invoke("prune", LENET, "-o", tmp_path / "out.onnx", "--calib-script", f"{script}:{function}", *FAST)
    assert_user_error(result, expected)
    assert f"calibration script {script}:{function}" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_script_that_fails_on_import_names_it(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import numpy\n\nraise ValueError('no dataset here')\n")
    result = invoke("prune", LENET, "-o", tmp_path / "out.onnx", "--calib-script", path, *FAST)
    assert_user_error(result, f"calibration script {path} (line 3): ValueError: no dataset here")


def test_api_reads_feed_dicts_once_and_prunes_as_from_the_npz(tmp_path):
    calib = np.load(MODELS / "digits_calib.npz")["input"][:96]
    read = []

    def batches():
        for start in range(0, len(calib), 32):
            read.append(start)
            yield {"input": calib[start:start + 32]}

    config = PruneConfig(keep=0.5, device="cpu")
    from_feeds = prune_file(LENET, tmp_path / "a.onnx", batches(), config)
    np.savez(tmp_path / "c.npz", input=calib)
    from_file = prune_file(LENET, tmp_path / "b.onnx", tmp_path / "c.npz", config)
    assert read == [0, 32, 64]
    assert [g.kept for g in from_feeds.report.groups] == [g.kept for g in from_file.report.groups]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with pytest.raises(SubpruneError, match="calibration feeds: no feed dicts"):
        calibration_feeds(onnx.load(LENET), iter([]))
    with pytest.raises(SubpruneError, match="feed 1 is a list"):
        calibration_feeds(onnx.load(LENET), [[calib]])
