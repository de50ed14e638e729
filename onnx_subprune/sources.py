"""Calibration sources: where the calibration arrays come from.

- an ``.npz``/``.npy`` file (:func:`data.load_arrays`);
- a folder, or a glob such as ``'photos/*.jpg'``, of images, preprocessed by an
  :class:`ImageRecipe` whose defaults follow the model's input (needs Pillow: the ``images`` extra);
- a Python script ``FILE.py[:FUNC]`` whose function (``load_data`` by default, Polygraphy's
  convention) returns an iterable of feed dicts ``{input name: array}``;
- in the Python API, any iterable of feed dicts (a generator, a list, an onnxruntime
  ``CalibrationDataReader``), or one dict of arrays.

Every source ends as one dict ``{input name: array}`` with the samples on the first axis, checked
by :func:`data.check_inputs` (names, ranks, dtypes, static dims, finite values), because the
pipeline needs random access to the samples: the holdout split draws samples at random, and the
statistics are captured in several passes (one per group with ``asym``). Feed dicts are therefore
read one at a time, each checked as it arrives, and stacked once; images are decoded one at a time
into one preallocated array.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx

from .data import _one_line, _shape_text, check_inputs, load_arrays, model_inputs
from .errors import ConfigError, SubpruneError, quote
from .graph import static_dim

Feed = Mapping[str, Any]
"""One feed dict: input name -> array-like with the samples of one batch on its first axis."""
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]

LAYOUTS = ("NCHW", "NHWC")
RESIZES = ("stretch", "crop", "pad")
CHANNEL_ORDERS = ("RGB", "BGR")
DEFAULT_FUNCTION = "load_data"
PAD_VALUE = 114
"""Gray level around a letterboxed (``resize="pad"``) image, the YOLO convention."""
GLOB_CHARS = "*?["
PILLOW_MISSING = "reading images needs Pillow, which is not installed: pip install 'onnx-subprune[images]'"


@dataclass(frozen=True)
class ImageRecipe:
    """How an image becomes one sample of the model's image input; None means the default.

    ``size``: (height, width), default the input's static H/W (required when they are symbolic).
    ``layout``: "NCHW" or "NHWC", default from where the input's 1- or 3-channel axis is.
    ``resize``: "stretch" (to the size, ignoring the aspect ratio; the default), "crop" (the
    shorter side to the size, then the center cut out) or "pad" (the longer side to the size,
    centered on gray :data:`PAD_VALUE`); bilinear resampling.
    ``scale``, ``mean``, ``std``: a float input gets ``(pixel * scale - mean) / std`` (defaults
    1/255, 0, 1; ``mean``/``std`` one value or one per channel, in the model's channel order).
    ``order``: "RGB" (default) or "BGR", for 3-channel inputs. An input with 1 channel gets the
    grayscale image. An integer input (e.g. uint8) gets the pixels as they are.
    """

    size: tuple[int, int] | None = None
    layout: str | None = None
    resize: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    order: str | None = None

    def given(self) -> list[str]:
        """The fields set (not None)."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


def parse_size(text: str) -> tuple[int, int]:
    """``"224x160"`` -> (224, 160) (height, width); ``"224"`` -> (224, 224)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected HxW or N (positive integers, e.g. 224x224), got {text!r}")
    return int(parts[0]), int(parts[-1])


def parse_floats(text: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` -> (0.485, 0.456, 0.406)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected one number or numbers separated by commas, got {text!r}") from None


_OPTION = {"size": "image_size", "order": "channel_order"}
"""Option names (as :class:`ConfigError` gives them) of the recipe fields named differently."""


@dataclass(frozen=True)
class CalibrationSource:
    """Calibration data as the command line names it: ``path`` (an .npz/.npy file, a folder or a
    glob of images) or ``script`` (``FILE.py[:FUNC]``), exactly one; ``images`` applies to image
    folders only; ``max_samples`` keeps the first N samples (images in name order)."""

    path: str | os.PathLike | None = None
    script: str | None = None
    images: ImageRecipe = ImageRecipe()
    max_samples: int | None = None

    def __str__(self) -> str:
        return os.fspath(self.path) if self.path is not None else str(self.script)


Calibration = str | os.PathLike | CalibrationSource | Mapping[str, Any] | Iterable[Feed]
"""Anything :func:`calibration_feeds` reads."""


def as_source(calib: Calibration) -> CalibrationSource | None:
    """``calib`` as a :class:`CalibrationSource` when it names files; None for feed dicts."""
    if isinstance(calib, CalibrationSource):
        return calib
    if isinstance(calib, (str, os.PathLike)):
        return CalibrationSource(path=calib)
    return None


def read_paths(calib: Calibration) -> list[str]:
    """The files ``calib`` reads (no output may be one of them): the data file, every image of
    the folder or glob, or the script."""
    source = as_source(calib)
    if source is None:
        return []
    if source.script is not None:
        return [_split_script(source.script)[0]]
    found = _image_paths(os.fspath(source.path))
    return [os.fspath(source.path)] if found is None else found


def calibration_feeds(model: onnx.ModelProto, calib: Calibration, log: Log | None = None,
                      progress: Progress | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The checked calibration arrays of ``model`` (input name -> array, first axis = samples)
    from any source, and the source's name for messages.

    All samples are held in memory at once: the pipeline splits them at random and reads them in
    several passes. Feed dicts are consumed one at a time and checked as they arrive; a bad one
    fails with a one-line :class:`SubpruneError` naming it.
    """
    source = as_source(calib)
    if source is None:
        return _stack(_feeds_of(calib), model, "calibration feeds", None), "calibration feeds"
    if (source.path is None) == (source.script is None):
        raise SubpruneError("give the calibration data as a file, a folder or glob of images, or a script: exactly one")
    if source.max_samples is not None and source.max_samples < 1:
        raise ConfigError("max_samples", f"must be at least 1, got {source.max_samples}")
    if source.script is not None:
        name = f"calibration script {source.script}"
        _refuse_recipe(source.images, name)
        return _stack(_script_feeds(source.script), model, name, source.max_samples), name
    path = os.fspath(source.path)
    images = _image_paths(path)
    name = f"calibration data {path}"
    if images is None:
        _refuse_recipe(source.images, name)
        feeds = check_inputs(load_arrays(path), model, name)
        if source.max_samples is not None:
            feeds = {key: value[:source.max_samples] for key, value in feeds.items()}
        return feeds, name
    return image_feeds(model, path, source.images, source.max_samples, log, progress), f"calibration images {path}"


def _refuse_recipe(recipe: ImageRecipe, name: str) -> None:
    given = recipe.given()
    if given:
        raise ConfigError(_OPTION.get(given[0], given[0]), f"applies to a folder or glob of images, not to {name}")


# ---------------------------------------------------------------------------------------------
# feed dicts (API iterables and scripts)


def _feeds_of(calib: Mapping[str, Any] | Iterable[Feed]) -> Iterator[Feed]:
    """The feed dicts of an API argument: one dict, an iterable of them, or an object with
    onnxruntime's ``CalibrationDataReader.get_next()`` (None at the end)."""
    if isinstance(calib, Mapping):
        return iter([calib])
    if hasattr(calib, "get_next") and not hasattr(calib, "__iter__"):
        return iter(calib.get_next, None)
    try:
        return iter(calib)
    except TypeError:
        raise SubpruneError(f"calibration feeds: expected a path, a dict of arrays or an iterable of "
                            f"them, got {type(calib).__name__}") from None


def _stack(feeds: Iterator[Feed], model: onnx.ModelProto, name: str, limit: int | None) -> dict[str, np.ndarray]:
    """Check each feed dict of ``feeds`` (first axis = its samples) against ``model`` and stack
    them on the first axis, reading no further than ``limit`` samples."""
    parts: list[dict[str, np.ndarray]] = []
    samples = 0
    try:
        for feed in feeds:
            where = f"{name}, feed {len(parts) + 1}"
            if not isinstance(feed, Mapping):
                raise SubpruneError(f"{where} is a {type(feed).__name__}, not a dict {{input name: array}}")
            batch = check_inputs({key: np.asarray(value) for key, value in feed.items()}, model, where)
            if parts:
                _check_like(batch, parts[0], where)
            parts.append(batch)
            samples += len(next(iter(batch.values())))
            if limit is not None and samples >= limit:
                break
    finally:
        getattr(feeds, "close", lambda: None)()  # a generator read only in part runs its cleanup now
    if not parts:
        raise SubpruneError(f"{name}: no feed dicts (the iterable is empty)")
    stacked = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    if limit is not None:
        stacked = {key: value[:limit] for key, value in stacked.items()}
    return stacked


def _check_like(batch: dict[str, np.ndarray], first: dict[str, np.ndarray], where: str) -> None:
    """Feed dicts are stacked: each input has the same shape (after the samples) in every one."""
    for key, value in batch.items():
        if value.shape[1:] != first[key].shape[1:]:
            raise SubpruneError(f"{where}: input {quote(key)} has shape {list(value.shape)}, the first feed "
                                f"{list(first[key].shape)}; feeds are stacked on the first axis, so the "
                                f"other dims must agree")


def _split_script(spec: str) -> tuple[str, str]:
    """``FILE.py[:FUNC]`` -> (file, function); a drive letter (``C:\\...``) is not a function."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail.isidentifier():
        return head, tail
    return spec, DEFAULT_FUNCTION


def _script_feeds(spec: str) -> Iterator[Feed]:
    """The feed dicts of the script's function; an exception raised by the script (when it is
    run, called or iterated) becomes one line naming the script and the line that raised."""
    path, function = _split_script(spec)
    name = f"calibration script {spec}"
    if not os.path.isfile(path):
        raise SubpruneError(f"{name}: {'it is not a file' if os.path.exists(path) else 'file not found'}")
    module_spec = importlib.util.spec_from_file_location("onnx_subprune_calibration_script", path)
    if module_spec is None or module_spec.loader is None:
        raise SubpruneError(f"{name}: cannot be loaded as Python (name it FILE.py)")
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # the script may import modules beside it
    sys.modules[module_spec.name] = module  # as an import would (dataclasses, pickle look it up)
    try:
        _in_script(lambda: module_spec.loader.exec_module(module), name, path)
        loader = getattr(module, function, None)
        if not callable(loader):
            raise SubpruneError(f"{name}: no function {quote(function)} (give FILE.py:FUNC)")
        result = _in_script(loader, name, path)
        if isinstance(result, Mapping):
            raise SubpruneError(f"{name}: {function}() returned one dict; return an iterable of feed dicts "
                                f"(a list or a generator)")
        iterator = _in_script(lambda: iter(result), name, path)
        while True:
            sentinel = object()
            feed = _in_script(lambda: next(iterator, sentinel), name, path)
            if feed is sentinel:
                return
            yield feed
    finally:
        sys.modules.pop(module_spec.name, None)
        if folder in sys.path:
            sys.path.remove(folder)


def _in_script(call: Callable[[], Any], name: str, path: str) -> Any:
    """``call()``; an exception from the user's code as one line (type, message, script line)."""
    try:
        return call()
    except SubpruneError:
        raise
    except (Exception, SystemExit) as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
        line = f" (line {frames[-1].lineno})" if frames else ""
        message = f": {_one_line(exc)}" if str(exc).strip() else ""
        raise SubpruneError(f"{name}{line}: {type(exc).__name__}{message}") from None


# ---------------------------------------------------------------------------------------------
# images


def _image_paths(path: str) -> list[str] | None:
    """The files of folder ``path`` or matching glob ``path`` (sorted by name), or None when
    ``path`` names a data file (or nothing)."""
    if os.path.isdir(path):
        return [os.path.join(path, entry) for entry in sorted(os.listdir(path))
                if os.path.isfile(os.path.join(path, entry))]
    if not os.path.exists(path) and any(char in path for char in GLOB_CHARS):
        return [found for found in sorted(glob.glob(path, recursive=True)) if os.path.isfile(found)]
    return None


def _pillow():
    """PIL.Image, or the one-line error naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise SubpruneError(PILLOW_MISSING) from None
    Image.init()
    return Image


def image_feeds(model: onnx.ModelProto, path: str, recipe: ImageRecipe = ImageRecipe(),
                max_samples: int | None = None, log: Log | None = None,
                progress: Progress | None = None) -> dict[str, np.ndarray]:
    """The single input of ``model`` fed with the images of folder or glob ``path`` (name order,
    at most ``max_samples``): shape (images, C, H, W) or (images, H, W, C), checked.

    Files whose extension no Pillow reader claims are skipped with one note; an image that
    cannot be decoded is a one-line error naming it.
    """
    name = f"calibration images {path}"
    Image = _pillow()
    inputs = model_inputs(model)
    if len(inputs) != 1:
        raise SubpruneError(f"{name}: images feed one input, the model has {len(inputs)} "
                            f"({', '.join(i.name for i in inputs)}); use --calib-script or an .npz")
    info = inputs[0]
    for field, allowed in (("resize", RESIZES), ("order", CHANNEL_ORDERS)):
        if getattr(recipe, field) not in (None, *allowed):
            raise ConfigError(_OPTION.get(field, field), f"must be one of {', '.join(allowed)}, got {getattr(recipe, field)!r}")
    layout, channels, size = _geometry(info, recipe, name)
    files = _image_paths(path) or []
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    images = [f for f in files if os.path.splitext(f)[1].lower() in readable]
    chosen = set(images)
    skipped = [os.path.basename(f) for f in files if f not in chosen]
    if not images:
        what = "the folder holds" if os.path.isdir(path) else "the pattern matches"
        other = f" ({len(skipped)} other files)" if skipped else ""
        raise SubpruneError(f"{name}: {what} no image files{other}")
    if skipped and log:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        files_are = "file that is not an image" if len(skipped) == 1 else "files that are not images"
        log(f"note: skipped {len(skipped)} {files_are} (by extension): "
            f"{', '.join(map(quote, skipped[:3]))}{more}")
    images = images[:max_samples]
    pixels = _pixel_map(info, recipe, channels)
    shape = (len(images), channels, *size) if layout == "NCHW" else (len(images), *size, channels)
    batch = np.empty(shape, dtype=pixels.dtype)
    for index, file in enumerate(images):
        hwc = _read_image(Image, file, channels, size, recipe)
        batch[index] = pixels(hwc).transpose(2, 0, 1) if layout == "NCHW" else pixels(hwc)
        if progress:
            progress("reading images", index + 1, len(images))
    return check_inputs({info.name: batch}, model, name)


def _geometry(info: onnx.ValueInfoProto, recipe: ImageRecipe, name: str) -> tuple[str, int, tuple[int, int]]:
    """(layout, channels, (height, width)) of image input ``info`` under ``recipe``."""
    dims = [static_dim(d) for d in info.type.tensor_type.shape.dim]
    shown = _shape_text(dims)
    if len(dims) != 4:
        raise SubpruneError(f"{name}: input {quote(info.name)} has shape {shown}; images feed a 4-D input "
                            f"(NCHW or NHWC)")
    layout = recipe.layout
    if layout not in (None, *LAYOUTS):
        raise ConfigError("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout is None:
        first, last = dims[1] in (1, 3), dims[3] in (1, 3)
        if first == last:
            raise ConfigError("layout", f"is required: the channel axis of input {quote(info.name)} {shown} "
                                        f"cannot be told from its dims (give NCHW or NHWC)")
        layout = "NCHW" if first else "NHWC"
    channels = dims[1] if layout == "NCHW" else dims[3]
    channels = 3 if channels is None else channels
    if channels not in (1, 3):
        raise SubpruneError(f"{name}: input {quote(info.name)} {shown} has {channels} channels in {layout}; "
                            f"images give 1 (grayscale) or 3 (RGB/BGR)")
    static = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    if recipe.size is None:
        if None in static:
            raise ConfigError("image_size", f"is required: input {quote(info.name)} {shown} has a symbolic "
                                            f"height or width (give HxW, e.g. 224x224)")
        return layout, channels, static
    height, width = recipe.size
    if height < 1 or width < 1:
        raise ConfigError("image_size", f"must be positive, got {height}x{width}")
    for want, got, axis in zip(static, recipe.size, ("height", "width")):
        if want is not None and want != got:
            raise ConfigError("image_size", f"{height}x{width} differs from the {axis} {want} input "
                                            f"{quote(info.name)} {shown} fixes")
    return layout, channels, (height, width)


class _Pixels:
    """Maps an (H, W, C) uint8 image to the model's values: ``(x * scale - mean) / std`` in the
    input's float type, or the pixels as they are for an integer input."""

    def __init__(self, dtype: np.dtype, scale: float, mean: np.ndarray, std: np.ndarray):
        self.dtype, self.scale, self.mean, self.std = dtype, scale, mean, std

    def __call__(self, hwc: np.ndarray) -> np.ndarray:
        if not np.issubdtype(self.dtype, np.floating):
            return hwc.astype(self.dtype)
        return ((hwc.astype(np.float32) * np.float32(self.scale) - self.mean) / self.std).astype(self.dtype)


def _pixel_map(info: onnx.ValueInfoProto, recipe: ImageRecipe, channels: int) -> _Pixels:
    """The pixel map of ``recipe`` for input ``info``, its values checked."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
    except Exception:
        raise SubpruneError(f"input {quote(info.name)} has element type {info.type.tensor_type.elem_type}, "
                            f"which images cannot feed") from None
    if dtype.kind not in "iuf":
        raise SubpruneError(f"input {quote(info.name)} takes {dtype}, which images cannot feed")
    if dtype.kind != "f":
        normalizing = [field for field in ("scale", "mean", "std") if getattr(recipe, field) is not None]
        if normalizing:
            raise ConfigError(normalizing[0], f"does not apply: input {quote(info.name)} takes {dtype}, "
                                              f"which gets the pixels as they are")
    scale = 1 / 255 if recipe.scale is None else recipe.scale
    if not (np.isfinite(scale) and scale > 0):
        raise ConfigError("scale", f"must be a positive number, got {scale}")
    per_channel = []
    for field, values in (("mean", recipe.mean or (0.0,)), ("std", recipe.std or (1.0,))):
        if len(values) not in (1, channels):
            raise ConfigError(field, f"has {len(values)} values; give 1 or {channels} (one per channel of "
                                     f"input {quote(info.name)})")
        array = np.asarray(values, dtype=np.float32)
        if not np.isfinite(array).all() or field == "std" and (array == 0).any():
            raise ConfigError(field, f"must be finite{' and nonzero' if field == 'std' else ''}, got "
                                     f"{', '.join(map(str, values))}")
        per_channel.append(array)
    return _Pixels(dtype, scale, *per_channel)


def _read_image(Image, file: str, channels: int, size: tuple[int, int], recipe: ImageRecipe) -> np.ndarray:
    """Image ``file`` decoded, converted to grayscale or RGB/BGR and resized: (H, W, C) uint8."""
    try:
        with Image.open(file) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")
    except Exception as exc:
        raise SubpruneError(f"calibration image {file}: cannot read it ({_one_line(exc)})") from None
    height, width = size
    resize = recipe.resize or "stretch"
    if resize == "stretch":
        image = image.resize((width, height), Image.BILINEAR)
    else:
        ratio = (max if resize == "crop" else min)(width / image.width, height / image.height)
        scaled = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        image = image.resize(scaled, Image.BILINEAR)
        left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
        if resize == "crop":
            image = image.crop((left, top, left + width, top + height))
        else:
            canvas = Image.new(image.mode, (width, height), PAD_VALUE if channels == 1 else (PAD_VALUE,) * 3)
            canvas.paste(image, (-left, -top))
            image = canvas
    hwc = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    return hwc[..., ::-1] if recipe.order == "BGR" and channels == 3 else hwc
