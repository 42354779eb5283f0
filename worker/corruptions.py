"""Digits the way people send them: MNIST digits rendered as crops, scans, photos and bitmaps, as image bytes.

Each corruption turns one MNIST digit (uint8 28x28, light on dark) into the bytes of a PNG or JPEG a user could
upload; `NON_DIGITS` renders pictures with no digit at all (blank pages, noise). The evaluation suite
(`worker.realworld`) and the training augmentation (`augment="realistic"`) draw from the same functions with
different seeds and parameter ranges (`EVAL` and `TRAIN`), so the model is never tested on its own augmentations.
Pillow, numpy and scipy only: no TensorFlow.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

Rng = np.random.Generator
Ranges = dict[str, Any]


@dataclass(frozen=True)
class Corruption:
    """A named way a digit reaches inferq, with its parameter ranges for evaluation and for training."""

    name: str
    render: Callable[[np.ndarray, Rng, Ranges], bytes]
    eval: Ranges
    train: Ranges
    doc: str


# --- building blocks -----------------------------------------------------------------------------------------


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", quality: int = 90) -> bytes:
    """The bytes of `img` as PNG or JPEG (an array is uint8 grey, RGB or RGBA)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB" if img.mode in ("RGBA", "P") else img.mode).save(buf, "JPEG", quality=int(quality))
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _uniform(rng: Rng, span: tuple[float, float]) -> float:
    return float(rng.uniform(span[0], span[1]))


def _int(rng: Rng, span: tuple[int, int]) -> int:
    return int(rng.integers(span[0], span[1] + 1))


def _resize(alpha: np.ndarray, size: tuple[int, int], method: Image.Resampling) -> np.ndarray:
    """Resize a [0, 1] float map to (width, height)."""
    img = Image.fromarray(np.ascontiguousarray(alpha, np.float32))
    return np.clip(np.asarray(img.resize(size, method), np.float32), 0, 1)


def _bbox(alpha: np.ndarray, level: float = 0.1) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero((alpha > level).any(axis=1)), np.flatnonzero((alpha > level).any(axis=0))
    if len(rows) == 0:
        return slice(0, alpha.shape[0]), slice(0, alpha.shape[1])
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _square(alpha: np.ndarray, margin: int) -> np.ndarray:
    """The digit's bounding box padded to a square with `margin` pixels around."""
    crop = alpha[_bbox(alpha)]
    side = max(crop.shape) + 2 * margin
    out = np.zeros((side, side), np.float32)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    out[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return out


def _scaled(alpha: np.ndarray, side: int, method: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Scale a square-ish map so its longer side is `side` pixels."""
    h, w = alpha.shape
    k = side / max(h, w)
    return _resize(alpha, (max(1, round(w * k)), max(1, round(h * k))), method)


def _paint(alpha: np.ndarray, ink: Any, paper: Any) -> np.ndarray:
    """Ink (a grey level or RGB) laid on paper with coverage `alpha`: uint8 grey or RGB."""
    ink, paper = np.asarray(ink, np.float32), np.asarray(paper, np.float32)
    a = alpha[..., None] if ink.ndim or paper.ndim else alpha
    return np.clip(paper + (ink - paper) * a, 0, 255).astype(np.uint8)


def _polarity(alpha: np.ndarray, rng: Rng, r: Ranges) -> np.ndarray:
    """Dark ink on light paper (or, with probability r['light_on_dark'], light ink on dark)."""
    if rng.random() < r.get("light_on_dark", 0.0):
        return _paint(alpha, _int(rng, (200, 255)), _int(rng, (0, 50)))
    return _paint(alpha, _int(rng, (0, 60)), _int(rng, (200, 255)))


def _fmt(rng: Rng, r: Ranges) -> tuple[str, int]:
    jpeg = rng.random() < r.get("jpeg", 0.0)
    return ("JPEG", _int(rng, r.get("quality", (80, 95)))) if jpeg else ("PNG", 0)


def _alpha(digit: np.ndarray) -> np.ndarray:
    return np.asarray(digit, np.float32) / 255.0


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius + 0.5


# --- the corruptions ---------------------------------------------------------------------------------------------


def clean(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """The MNIST image itself, as a 28x28 PNG."""
    return encode(np.asarray(digit, np.uint8))


def inverted(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Dark ink on white paper, scanned at a random size."""
    side = _int(rng, r["side"])
    return encode(_polarity(_scaled(_alpha(digit), side), rng, {"light_on_dark": 0.0}), *_fmt(rng, r))


def edge_crop(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Cropped to the strokes (they touch every edge), sometimes a pixel into them, then scaled."""
    alpha = _alpha(digit)
    rows, cols = _bbox(alpha)
    cut = [_int(rng, (0, r["cut"])) for _ in range(4)]
    crop = alpha[
        rows.start + cut[0] : max(rows.stop - cut[1], rows.start + cut[0] + 4),
        cols.start + cut[2] : max(cols.stop - cut[3], cols.start + cut[2] + 4),
    ]
    side = _int(rng, r["side"])
    return encode(_polarity(_scaled(crop, side), rng, r), *_fmt(rng, r))


def small_on_canvas(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """A small digit somewhere on a large sheet."""
    glyph = _scaled(_square(_alpha(digit), 1), _int(rng, r["digit"]))
    side = _int(rng, r["canvas"])
    canvas = np.zeros((side, int(side * _uniform(rng, (0.7, 1.4)))), np.float32)
    top = _int(rng, (0, canvas.shape[0] - glyph.shape[0]))
    left = _int(rng, (0, canvas.shape[1] - glyph.shape[1]))
    canvas[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph
    img = _polarity(canvas, rng, r).astype(np.float32) + rng.normal(0, r["noise"], canvas.shape)
    return encode(img, *_fmt(rng, r))


def lowres(n: int) -> Callable[[np.ndarray, Rng, Ranges], bytes]:
    """An n x n bitmap of the digit (it fills the square), upscaled with nearest or bicubic resampling."""

    def render(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
        bitmap = _resize(_square(_alpha(digit), 1), (n, n), Image.Resampling.BOX)
        bitmap = np.round(bitmap * 16) / 16 if rng.random() < 0.5 else bitmap  # 4-bit greys, like old scanners
        up = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BICUBIC
        return encode(_polarity(_resize(bitmap, (_int(rng, r["side"]),) * 2, up), rng, r), *_fmt(rng, r))

    render.__doc__ = f"A {n}x{n} bitmap of the digit, upscaled with nearest or bicubic resampling."
    return render


def thick_marker(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Broad marker strokes: the digit dilated at 3x scale."""
    alpha = _scaled(_square(_alpha(digit), 4), 84)
    alpha = ndimage.grey_dilation(alpha, footprint=_disk(_int(rng, r["radius"])))
    return encode(_polarity(_scaled(alpha, _int(rng, r["side"])), rng, r), *_fmt(rng, r))


def thin_pen(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """A fine pen: only the core of each stroke, at 4x scale."""
    alpha = _scaled(_square(_alpha(digit), 4), 112)
    level = _uniform(rng, r["level"])
    alpha = np.clip((alpha - level) / (1 - level), 0, 1) ** 0.5
    return encode(_polarity(_scaled(alpha, _int(rng, r["side"])), rng, r), *_fmt(rng, r))


def jpeg(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """A heavily compressed JPEG (blocks and ringing)."""
    img = _polarity(_scaled(_square(_alpha(digit), 4), _int(rng, r["side"])), rng, r)
    return encode(img, "JPEG", _int(rng, r["quality"]))


def blur(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Out of focus: a Gaussian blur at 2-3x scale."""
    alpha = _scaled(_square(_alpha(digit), 6), _int(rng, r["side"]))
    alpha = ndimage.gaussian_filter(alpha, _uniform(rng, r["sigma"]) * alpha.shape[0] / 56)
    return encode(_polarity(alpha, rng, r), *_fmt(rng, r))


def photo(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """A phone photo of paper: uneven light, a soft shadow, a warm tint, sensor noise, JPEG."""
    side = _int(rng, r["canvas"])
    glyph = _scaled(_square(_alpha(digit), 2), int(side * _uniform(rng, r["digit_share"])))
    canvas = np.zeros((side, side), np.float32)
    top = _int(rng, (0, side - glyph.shape[0]))
    left = _int(rng, (0, side - glyph.shape[1]))
    canvas[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph
    yy, xx = np.mgrid[0:side, 0:side] / side
    angle = _uniform(rng, (0, 2 * np.pi))
    light = 1 - _uniform(rng, r["gradient"]) * (0.5 + 0.5 * np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
    edge = np.cos(angle + 1.3) * (xx - _uniform(rng, (0.2, 0.8))) + np.sin(angle + 1.3) * (yy - 0.5)
    shadow = 1 - _uniform(rng, r["shadow"]) * ndimage.gaussian_filter((edge > 0).astype(np.float32), side / 30)
    paper = _uniform(rng, (165, 235)) * light * shadow
    ink = _uniform(rng, (15, 70)) * light * shadow
    grey = paper + (ink - paper) * ndimage.gaussian_filter(canvas, 0.6)
    tint = np.array([1.0, _uniform(rng, (0.93, 1.0)), _uniform(rng, (0.82, 0.97))], np.float32)
    rgb = grey[..., None] * tint + rng.normal(0, _uniform(rng, r["noise"]), (side, side, 3))
    return encode(rgb, "JPEG", _int(rng, r["quality"]))


_INKS = [(20, 40, 160), (180, 20, 30), (20, 110, 40), (90, 20, 120), (10, 10, 10), (30, 60, 110)]
_PAPERS = [(250, 240, 200), (200, 225, 250), (210, 245, 210), (185, 185, 185), (245, 215, 225), (255, 255, 255)]


def colour_ink(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Coloured ink on coloured or grey paper (or light chalk on a dark board)."""
    alpha = _scaled(_square(_alpha(digit), 4), _int(rng, r["side"]))
    ink = np.array(_INKS[_int(rng, (0, len(_INKS) - 1))], np.float32) + rng.normal(0, r["jitter"], 3)
    paper = np.array(_PAPERS[_int(rng, (0, len(_PAPERS) - 1))], np.float32) + rng.normal(0, r["jitter"], 3)
    if rng.random() < r["board"]:  # light chalk or marker on a dark green or blue board
        ink, paper = paper, np.array([(30, 70, 50), (25, 40, 80)][_int(rng, (0, 1))], np.float32)
    return encode(_paint(alpha, np.clip(ink, 0, 255), np.clip(paper, 0, 255)), *_fmt(rng, r))


def lines(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """A thin frame around the digit, ruled lines or a grid behind it, as on forms and exercise books."""
    side = _int(rng, r["side"])
    margin = _uniform(rng, r["margin"])
    alpha = _scaled(_square(_alpha(digit), 1), round(side / (1 + 2 * margin)))
    pad = (side - alpha.shape[0]) // 2
    canvas = np.zeros((side, side), np.float32)
    canvas[pad : pad + alpha.shape[0], pad : pad + alpha.shape[1]] = alpha
    width = max(1, round(side * _uniform(rng, r["width"])))
    strength = _uniform(rng, r["strength"])
    marks = np.zeros_like(canvas)
    kind = ("frame", "ruled", "grid")[_int(rng, (0, 2))]
    if kind == "frame":
        inset = _int(rng, (0, max(0, pad - width)))
        for a, b in ((inset, inset + width), (side - inset - width, side - inset)):
            marks[a:b, inset : side - inset] = 1
            marks[inset : side - inset, a:b] = 1
    else:
        step = max(width + 2, round(side * _uniform(rng, r["spacing"])))
        offset = _int(rng, (0, step - 1))
        for p in range(offset, side, step):
            marks[p : p + width, :] = 1
            if kind == "grid":
                marks[:, p : p + width] = 1
    paper, ink = _uniform(rng, (215, 255)), _uniform(rng, (0, 60))
    line = paper - strength * (paper - _uniform(rng, (60, 200)))
    grey = paper + (line - paper) * marks
    grey = grey + (ink - grey) * canvas
    return encode(grey, *_fmt(rng, r))


def rotation(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Written at a slant: rotated by a few to fifteen degrees either way."""
    alpha = _scaled(_square(_alpha(digit), 6), _int(rng, r["side"]))
    degrees = _uniform(rng, r["degrees"]) * (1 if rng.random() < 0.5 else -1)
    alpha = np.asarray(Image.fromarray(alpha).rotate(degrees, Image.Resampling.BICUBIC), np.float32)
    return encode(_polarity(np.clip(alpha, 0, 1), rng, r), *_fmt(rng, r))


def salt_pepper(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Salt-and-pepper noise: a share of the pixels set to black or white at random."""
    img = _polarity(_scaled(_square(_alpha(digit), 4), _int(rng, r["side"])), rng, r)
    hit = rng.random(img.shape) < _uniform(rng, r["share"])
    img[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)
    return encode(img)


def transparent(digit: np.ndarray, rng: Rng, r: Ranges) -> bytes:
    """Strokes on a transparent canvas (a drawing app's export): dark or light ink, no paper."""
    alpha = _scaled(_square(_alpha(digit), 4), _int(rng, r["side"]))
    colour = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    if rng.random() < 0.3:
        colour = _INKS[_int(rng, (0, len(_INKS) - 1))]
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"))


_E = {"light_on_dark": 0.5, "jpeg": 0.3, "quality": (80, 95)}  # shared evaluation defaults
_T = {"light_on_dark": 0.5, "jpeg": 0.4, "quality": (60, 98)}  # shared training defaults

CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in [
        Corruption("clean", clean, {}, {}, clean.__doc__ or ""),
        Corruption("inverted", inverted, {"side": (28, 112)}, {"side": (24, 140)}, inverted.__doc__ or ""),
        Corruption(
            "edge-crop",
            edge_crop,
            {**_E, "side": (28, 160), "cut": 1},
            {**_T, "side": (20, 180), "cut": 2},
            edge_crop.__doc__ or "",
        ),
        Corruption(
            "small-on-canvas",
            small_on_canvas,
            {**_E, "digit": (24, 40), "canvas": (150, 300), "noise": 3.0},
            {**_T, "digit": (16, 48), "canvas": (100, 400), "noise": 5.0},
            small_on_canvas.__doc__ or "",
        ),
        Corruption("lowres-8", lowres(8), {**_E, "side": (28, 160)}, {**_T, "side": (8, 180)}, lowres(8).__doc__ or ""),
        Corruption(
            "lowres-16", lowres(16), {**_E, "side": (28, 160)}, {**_T, "side": (16, 180)}, lowres(16).__doc__ or ""
        ),
        Corruption(
            "lowres-32", lowres(32), {**_E, "side": (32, 160)}, {**_T, "side": (32, 180)}, lowres(32).__doc__ or ""
        ),
        Corruption(
            "thick-marker",
            thick_marker,
            {**_E, "radius": (3, 5), "side": (40, 120)},
            {**_T, "radius": (2, 7), "side": (28, 140)},
            thick_marker.__doc__ or "",
        ),
        Corruption(
            "thin-pen",
            thin_pen,
            {**_E, "level": (0.5, 0.75), "side": (56, 160)},
            {**_T, "level": (0.4, 0.8), "side": (40, 200)},
            thin_pen.__doc__ or "",
        ),
        Corruption(
            "jpeg",
            jpeg,
            {**_E, "side": (40, 112), "quality": (20, 40)},
            {**_T, "side": (28, 140), "quality": (12, 50)},
            jpeg.__doc__ or "",
        ),
        Corruption(
            "blur",
            blur,
            {**_E, "side": (56, 112), "sigma": (1.0, 2.0)},
            {**_T, "side": (40, 140), "sigma": (0.5, 2.6)},
            blur.__doc__ or "",
        ),
        Corruption(
            "photo",
            photo,
            {
                "canvas": (200, 360),
                "digit_share": (0.3, 0.6),
                "gradient": (0.2, 0.45),
                "shadow": (0.15, 0.4),
                "noise": (2, 6),
                "quality": (70, 92),
            },
            {
                "canvas": (120, 400),
                "digit_share": (0.2, 0.8),
                "gradient": (0.0, 0.55),
                "shadow": (0.0, 0.5),
                "noise": (0, 9),
                "quality": (55, 95),
            },
            photo.__doc__ or "",
        ),
        Corruption(
            "colour-ink",
            colour_ink,
            {**_E, "side": (40, 140), "jitter": 10.0, "board": 0.2},
            {**_T, "side": (28, 160), "jitter": 20.0, "board": 0.25},
            colour_ink.__doc__ or "",
        ),
        Corruption(
            "lines",
            lines,
            {
                **_E,
                "side": (84, 160),
                "margin": (0.08, 0.3),
                "width": (0.008, 0.02),
                "strength": (0.4, 1.0),
                "spacing": (0.15, 0.3),
            },
            {
                **_T,
                "side": (56, 200),
                "margin": (0.05, 0.4),
                "width": (0.005, 0.03),
                "strength": (0.2, 1.0),
                "spacing": (0.12, 0.4),
            },
            lines.__doc__ or "",
        ),
        Corruption(
            "rotation",
            rotation,
            {**_E, "side": (56, 112), "degrees": (5, 15)},
            {**_T, "side": (28, 140), "degrees": (0, 20)},
            rotation.__doc__ or "",
        ),
        Corruption(
            "salt-pepper",
            salt_pepper,
            {**_E, "side": (28, 84), "share": (0.02, 0.08)},
            {**_T, "side": (28, 112), "share": (0.0, 0.12)},
            salt_pepper.__doc__ or "",
        ),
        Corruption("transparent", transparent, {"side": (28, 140)}, {"side": (20, 180)}, transparent.__doc__ or ""),
    ]
}
REALWORLD = tuple(n for n in CORRUPTIONS if n != "clean")  # the corruptions counted in "overall"


# --- pictures with no digit ------------------------------------------------------------------------------------


def _blank(rng: Rng) -> bytes:
    side = _int(rng, (28, 400))
    level = (255, 0, _int(rng, (40, 220)))[_int(rng, (0, 2))]
    return encode(np.full((side, int(side * _uniform(rng, (0.6, 1.5)))), level, np.uint8), *_fmt(rng, {"jpeg": 0.5}))


def _gradient_page(rng: Rng) -> bytes:
    side = _int(rng, (60, 400))
    yy, xx = np.mgrid[0:side, 0:side] / side
    a = _uniform(rng, (0, 2 * np.pi))
    page = _uniform(rng, (150, 240)) * (1 - _uniform(rng, (0.1, 0.5)) * (np.cos(a) * xx + np.sin(a) * yy))
    return encode(page + rng.normal(0, 3, page.shape), "JPEG", 85)


def _uniform_noise(rng: Rng) -> bytes:
    side = _int(rng, (28, 300))
    return encode(rng.integers(0, 256, (side, side), dtype=np.uint8), *_fmt(rng, {"jpeg": 0.3}))


def _gaussian_noise(rng: Rng) -> bytes:
    side = _int(rng, (28, 300))
    page = rng.normal(_uniform(rng, (60, 200)), _uniform(rng, (15, 60)), (side, side))
    if rng.random() < 0.5:
        page = np.repeat(page[..., None], 3, axis=2) + rng.normal(0, 10, (side, side, 3))
    return encode(page, *_fmt(rng, {"jpeg": 0.5}))


def _speckles(rng: Rng) -> bytes:
    side = _int(rng, (28, 200))
    page = np.full((side, side), 255 if rng.random() < 0.5 else 0, np.uint8)
    hit = rng.random(page.shape) < _uniform(rng, (0.01, 0.1))
    page[hit] = 255 - page[hit]
    return encode(page)


def _ruled_page(rng: Rng) -> bytes:
    side = _int(rng, (80, 300))
    page = np.full((side, side), _uniform(rng, (220, 255)), np.float32)
    step, width = _int(rng, (12, 40)), _int(rng, (1, 3))
    level = _uniform(rng, (80, 190))
    for p in range(_int(rng, (0, step)), side, step):
        page[p : p + width, :] = level
        if rng.random() < 0.3:
            page[:, p : p + width] = level
    return encode(page, *_fmt(rng, {"jpeg": 0.4}))


NON_DIGITS: dict[str, Callable[[Rng], bytes]] = {
    "blank": _blank,
    "gradient-page": _gradient_page,
    "uniform-noise": _uniform_noise,
    "gaussian-noise": _gaussian_noise,
    "speckles": _speckles,
    "ruled-page": _ruled_page,
}


def render(name: str, digit: np.ndarray, rng: Rng, *, training: bool = False) -> bytes:
    """The bytes of `digit` under corruption `name`, with the evaluation (or training) parameter ranges."""
    c = CORRUPTIONS[name]
    return c.render(digit, rng, c.train if training else c.eval)
