"""Image decoding and MNIST-style preprocessing, with Pillow and numpy only (the API process imports this)."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from scipy import ndimage

from shared.config.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from shared.config.settings import Settings

ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})

_OPEN_ORDER = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_ALIASES = {"MPO": "JPEG"}  # phone JPEGs carrying a multi-picture extension open as MPO
_HINT = "Send a PNG, JPEG, WebP, BMP or GIF image."
# Everything Pillow's parsers and decoders are known to raise on hostile or damaged input.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    LookupError,
    ArithmeticError,
    AttributeError,
    EOFError,
    RuntimeError,
    struct.error,
)

# Pillow's own decompression-bomb guard is process-wide: Image.open() warns past Image.MAX_IMAGE_PIXELS and raises
# DecompressionBombError past twice that. It is lowered from Pillow's 89.5M to INFERQ_MAX_IMAGE_PIXELS (its default
# at import; configure_pillow() at each entry point), and its warning is an error. Both are set once and never saved
# and restored: warnings.catch_warnings() swaps the process-global filter list and races between worker threads.
DEFAULT_MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# Pillow's notes on damaged metadata (corrupt EXIF, malformed MPO, invalid APNG): the image decodes or is refused.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

_SIDE, _BOX, _CENTRE = 28, 20, 14.0  # MNIST: 28x28 canvas, digit fitted in 20x20, centre of mass at (14, 14)


# What preprocessing (and the model's confidence) says about one picture, in every prediction's `warnings`.
NO_INK = "no-ink"  # nothing stands out from the paper: blank, uniform or too faint; the label is null
NO_DIGIT = "no-digit"  # marks, but nothing shaped like a handwritten character (noise, texture); the label is null
LOW_CONTRAST = "low-contrast"  # the ink is faint against the paper: the reading may be wrong
SEVERAL_DIGITS = "several-digits"  # more than one separate character side by side: only the largest was read
LOW_CONFIDENCE = "low-confidence"  # the model's top confidence is below INFERQ_LOW_CONFIDENCE_THRESHOLD
WARNINGS: dict[str, str] = {
    NO_INK: "Nothing stands out from the paper (blank, uniform or too faint): label is null.",
    NO_DIGIT: "Marks were found, but nothing shaped like a handwritten character (noise, texture): label is null.",
    LOW_CONTRAST: "The ink is faint against the paper; the reading may be wrong.",
    SEVERAL_DIGITS: "More than one separate character side by side; the largest one was read.",
    LOW_CONFIDENCE: "The model's top confidence is below INFERQ_LOW_CONFIDENCE_THRESHOLD.",
}
UNREADABLE: frozenset[str] = frozenset({NO_INK, NO_DIGIT})  # the model is not asked; the label is null


@dataclass(frozen=True)
class Prepared:
    """One picture made ready for the model: the 28x28 input (zeros when unreadable) and what was noticed."""

    image: np.ndarray
    warnings: tuple[str, ...] = ()

    @property
    def readable(self) -> bool:
        """Whether there is a character to read (no `no-ink` / `no-digit` warning)."""
        return not UNREADABLE.intersection(self.warnings)


def confidence_warnings(prepared: tuple[str, ...], confidence: float | None, threshold: float) -> list[str]:
    """A prediction's warnings: preprocessing's, plus `low-confidence` when the top confidence is under `threshold`."""
    found = list(prepared)
    if confidence is not None and confidence < threshold and LOW_CONFIDENCE not in found:
        found.append(LOW_CONFIDENCE)
    return found


@dataclass(frozen=True)
class ImageInfo:
    """What check_image learned about an upload: its format and its size as stored (before EXIF rotation)."""

    format: str
    width: int
    height: int


def configure_pillow(*, max_pixels: int) -> None:
    """Raise Pillow's process-wide pixel guard to `max_pixels` when it is above the default (never lower it)."""
    Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0, DEFAULT_MAX_PIXELS)


def check_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Validate an upload: allowed format, pixel count from the header, then a full decode."""
    img, fmt = _decode(data, max_pixels)
    return ImageInfo(format=fmt, width=img.width, height=img.height)


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an upload with check_image's checks; first frame only, EXIF orientation applied."""
    img, _ = _decode(data, max_pixels)
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:  # a damaged EXIF block: keep the image as stored rather than refuse it
        return img.copy()


def prepare(data: bytes, *, max_pixels: int) -> Prepared:
    """Decode an upload and normalize it like MNIST, saying what was noticed (see WARNINGS)."""
    img = open_image(data, max_pixels=max_pixels)
    with _pillow_errors():
        return prepare_image(img)


def preprocess(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an upload and normalize it like MNIST: float32 (28, 28) in [0, 1] (zeros when unreadable)."""
    return prepare(data, max_pixels=max_pixels).image


def to_mnist(img: Image.Image) -> np.ndarray:
    """Normalize like MNIST was made: light digit on dark, fitted in 20x20, centre of mass at (14, 14)."""
    return prepare_image(img).image


# --- decoding ---------------------------------------------------------------------------------------------


@contextmanager
def _pillow_errors() -> Iterator[None]:
    """Map Pillow's failures and its decompression-bomb error (or warning, an error here) to inferq errors."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{e} Scale the image down and send it again.") from e
    except _DECODE_ERRORS as e:
        detail = f"The image could not be decoded ({e}); it may be truncated or corrupt. "
        raise InvalidImage(detail + _HINT) from e


def _decode(data: bytes, max_pixels: int) -> tuple[ImageFile.ImageFile, str]:
    """Identify from the header, refuse too many pixels before decoding, then decode the first frame."""
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)  # Pillow's warning band is refused too
    with _pillow_errors():
        img = _open(data)
        fmt = _ALIASES.get(img.format or "", img.format or "")
        if fmt not in ALLOWED_FORMATS:
            raise UnsupportedImageFormat(f"{fmt or 'This'} images are not supported. " + _HINT)
        _check_pixels(img.size, limit)
        img.load()
        _check_pixels(img.size, limit)  # a GIF frame may grow the canvas while it loads
    return img, fmt


def _open(data: bytes) -> ImageFile.ImageFile:
    """Open lazily (header only) with the allowed formats; tell foreign images from non-images."""
    if not data:
        raise InvalidImage("The image is empty (0 bytes). " + _HINT)
    try:
        return Image.open(io.BytesIO(data), formats=_OPEN_ORDER)
    except UnidentifiedImageError:
        other = _foreign_format(data)
    if other and other not in ALLOWED_FORMATS and other not in _ALIASES:
        raise UnsupportedImageFormat(f"{other} images are not supported. " + _HINT)
    raise InvalidImage("The data is not a readable image. " + _HINT)


def _foreign_format(data: bytes) -> str | None:
    """The format name of an image Pillow can read but inferq does not accept, or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # a probe only: any failure means "not an image we can name"
        return None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse empty or oversized images from their declared size."""
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"The image declares an empty size ({width}x{height}). " + _HINT)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}. "
            "Scale it down and send it again."
        )


# --- MNIST normalization ------------------------------------------------------------------------------------
#
# A picture becomes an MNIST input in five steps, each made for pictures as people send them:
# 1. _rgb and _channel: transparency flattened, at most _WORK_SIDE pixels on the long side, and the one colour
#    channel in which the ink stands out most (luminance for a pencil, blue for yellow ink on white paper, ...).
# 2. _despeckle: salt-and-pepper noise (isolated black and white pixels) removed with a median filter.
# 3. _flatten: which side is paper, by a vote of the frame, the corners and the bulk (strokes may touch the frame,
#    a thick digit may cover much of the bulk); then the paper's own brightness, measured in blocks and smoothly
#    interpolated (a photo's uneven light or shadow), divided out. The result is ink strength on black, 0..1.
# 4. _strokes: a threshold between paper and ink (Otsu's), ruled lines, grids and frames removed, and the
#    connected shapes checked: blank or uniform pictures have no ink (`no-ink`), noise and textures have no
#    character-like shape (`no-digit`), two characters side by side are noticed (`several-digits`).
# 5. _fit_box and _centre: the digit fitted in 20x20 and its centre of mass put at (14, 14), like MNIST.

_WORK_SIDE = 256  # longest side the analysis runs at; the output is 28x28 anyway
_MIN_CONTRAST = 0.1  # ink this much darker (or lighter) than its paper, or less, counts as no ink
_LOW_CONTRAST = 0.25  # ink fainter than this relative to its paper is read, with `low-contrast`
_MAX_BLOCKS = 16  # the paper's level is measured in up to this many blocks a side (shadows, uneven light)
_IMPULSE_SHARE = 0.004  # isolated black/white pixels beyond this share of the image: salt-and-pepper noise
_LINE_COVER = 0.75  # a row (column) inked along this share of the width (height) may be a ruled line
_LINE_THICK = 0.06  # ...if its band is at most this share of the height (width) thick
_FRINGE = 0.1  # soft ink kept around the thresholded strokes, as a share of the digit's size (blur, upscaling)...
_PAPER_FLOOR = 0.08  # ...where it is stronger than this share of the strongest ink (the rest is paper)
_KEEP_SHARE = 0.04  # shapes smaller than this share of the largest one are specks, unless close to it
_SEVERAL_GAP = 0.3  # a gap this share of the digit's height between two tall shapes: two characters
_MAX_HOLES = 5  # an 8 has two holes; a texture or noise many
_MAX_PARTS = 12  # a handwritten character has a few strokes; noise many
_FILL_MAX = 0.85  # ink covering more of its box than this is a blob, not strokes...
_BLOB_ASPECT = 2.0  # ...unless the box is this much longer than wide (a thick 1)
# Noise and texture against strokes, from the evaluation suite's digits and no-digit pictures (bench/realworld.py):
# Separation: Otsu's between/total variance (noise 0.66-0.72; digits 0.62-0.97, photos the lowest). Coherence:
# correlation of neighbouring pixels in the digit's box (pixel noise 0-0.65; strokes 0.65-1, a thin 1 at 28x28
# lower). A picture is noise or texture when both are below one of these pairs:
_TEXTURE = ((0.85, 0.5), (0.75, 0.65), (0.65, 0.85))
_MIN_SEPARATION = 0.75  # ...or when separation is below this and the ink is faint (a smooth stain, uneven light)
_MIN_DIGIT_PIXELS = 12  # fewer inked pixels (at the analysis size) are specks, not a character


def prepare_image(img: Image.Image) -> Prepared:
    """Normalize a decoded picture like MNIST and say what was noticed (see WARNINGS)."""
    blank = np.zeros((_SIDE, _SIDE), np.float32)
    if img.width == 0 or img.height == 0:
        return Prepared(blank, (NO_INK,))
    grey = _despeckle(_channel(_rgb(img)))
    ink, contrast = _flatten(grey)
    if contrast < _MIN_CONTRAST:
        return Prepared(blank, (NO_INK,))
    mask, warnings = _strokes(ink, contrast)
    if not mask.any():
        return Prepared(blank, warnings or (NO_INK,))
    if contrast < _LOW_CONTRAST:
        warnings = (*warnings, LOW_CONTRAST)
    rows, cols = _extent(mask)
    fringe = max(1, round(_FRINGE * max(rows.stop - rows.start, cols.stop - cols.start)))
    near = ndimage.binary_dilation(mask, iterations=fringe)
    digit = np.where(near & (ink > _PAPER_FLOOR * contrast), ink, 0)  # strokes and their soft edges
    return Prepared(_centre(_fit_box(digit[_extent(digit > 0)])), warnings)


def _rgb(img: Image.Image) -> np.ndarray:
    """float32 grey (H, W) or RGB (H, W, 3), transparency flattened, at most _WORK_SIDE on the long side."""
    if img.mode == "F" or img.mode.startswith("I"):  # 16/32-bit greys: bring them to 8 bits first
        wide = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(wide / 257 if wide.max() > 255 else wide, 0, 255).astype(np.uint8))
    grey = img.mode in ("1", "L") or (img.mode == "P" and img.palette is not None and img.palette.mode == "L")
    img = img.convert("RGBA" if img.has_transparency_data else "L" if grey else "RGB")
    if max(img.size) > _WORK_SIDE:
        scale = _WORK_SIDE / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BOX)
    rgb = np.asarray(img, dtype=np.float32)
    return _flatten_alpha(rgb) if rgb.ndim == 3 and rgb.shape[2] == 4 else rgb


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    """Flatten transparency onto white behind dark strokes, onto black behind light ones."""
    grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    alpha = rgba[..., 3:] / 255
    weight = float(alpha.sum())
    backdrop = 0.0 if weight and float((grey * alpha[..., 0]).sum()) / weight > 127.5 else 255.0
    return rgba[..., :3] * alpha + backdrop * (1 - alpha)


def _channel(rgb: np.ndarray) -> np.ndarray:
    """The grey image in which ink and paper differ most: luminance, or one colour channel if it spreads further."""
    if rgb.ndim == 2:
        return rgb
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    if max(float(np.abs(red - green).max()), float(np.abs(green - blue).max())) < 24:  # grey, or nearly
        return luma
    candidates = [luma, red, green, blue]
    spreads = [float(np.subtract(*np.percentile(c, [99, 1]))) for c in candidates]
    best = int(np.argmax(spreads))
    return candidates[best] if spreads[best] > 1.25 * spreads[0] else luma


def _despeckle(grey: np.ndarray) -> np.ndarray:
    """Remove salt-and-pepper noise (isolated extreme pixels) with a 3x3 median filter, only where there is some."""
    if min(grey.shape) < 8:
        return grey
    inner = grey[1:-1, 1:-1]
    apart = np.minimum.reduce(  # how far each pixel stands from the nearest of its four neighbours
        [np.abs(inner - grey[:-2, 1:-1]), np.abs(inner - grey[2:, 1:-1]),
         np.abs(inner - grey[1:-1, :-2]), np.abs(inner - grey[1:-1, 2:])]
    )  # fmt: skip
    impulses = (apart > 96) & ((inner <= 12) | (inner >= 243))
    if float(impulses.mean()) <= _IMPULSE_SHARE:
        return grey
    return ndimage.median_filter(grey, size=3, mode="nearest")


def _flatten(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """Ink strength 0..1 on a black background (paper's polarity and uneven light removed) and the ink's contrast."""
    low, high = _extremes(grey)
    if high - low < 255 * _MIN_CONTRAST:
        return np.zeros_like(grey), 0.0
    light_paper = _light_paper(grey, (low + high) / 2)
    if light_paper:  # dark ink on light paper: reflectance relative to the paper, lighting divided out
        ink = 1 - grey / np.maximum(_paper_surface(grey, high - low), 1.0)
    else:  # light ink on dark paper (a board, MNIST itself): brightness above the paper, relative to full scale
        paper = -_paper_surface(-grey, high - low)
        ink = (grey - paper) / np.maximum(255 - paper, 128.0)  # at most doubled: a light "paper" is no paper
    ink = np.clip(ink, 0, 1).astype(np.float32)
    return ink, _extremes(ink)[1]


def _extremes(values: np.ndarray) -> tuple[float, float]:
    """The lowest and highest levels, robust to a few stray pixels: the k-th from each end (k ~ 0.05%)."""
    flat = values.ravel()
    k = max(4, flat.size // 2000)
    if flat.size <= 2 * k:
        return float(flat.min()), float(flat.max())
    low, high = np.partition(flat, [k, flat.size - k])[[k, flat.size - k]]
    return float(low), float(high)


def _light_paper(grey: np.ndarray, mid: float) -> bool:
    """Whether the paper is the light side: a vote of the frame, the corners and the bulk of the picture (a tight
    crop's strokes cover much of its frame, a thick digit much of its bulk; the corners of a crop are paper
    most often)."""
    c = max(1, min(grey.shape) // 10)
    corners = np.concatenate(
        [grey[:c, :c].ravel(), grey[:c, -c:].ravel(), grey[-c:, :c].ravel(), grey[-c:, -c:].ravel()]
    )
    votes = [float(np.median(part)) > mid for part in (_border(grey), corners, grey)]
    return sum(votes) >= 2


def _border(grey: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame, where paper (not the digit) is expected most of the time."""
    t = max(1, min(grey.shape) // 32)
    return np.concatenate([grey[:t].ravel(), grey[-t:].ravel(), grey[:, :t].ravel(), grey[:, -t:].ravel()])


def _paper_surface(signal: np.ndarray, spread: float) -> np.ndarray:
    """The paper's level at every pixel (of `signal`, where paper is the high side): each block's upper percentile,
    smoothly interpolated; blocks mostly covered by ink (outliers of a robust quadratic fit) take the fit's level.
    `spread`: the signal's range, which sets how far below the fit a block must be to count as inked over."""
    h, w = signal.shape
    n = int(np.clip(min(h, w) // 12, 1, _MAX_BLOCKS))
    if n < 3:  # a small picture: one level for all of it (no light falls unevenly over a few dozen pixels)
        return np.full(signal.shape, float(np.percentile(signal, 90)), np.float32)
    bh, bw = h // n, w // n
    step = 2 if min(bh, bw) >= 16 else 1  # every other pixel is plenty for a block's level
    sh, sw = bh // step, bw // step
    blocks = signal[: sh * step * n : step, : sw * step * n : step]
    blocks = blocks.reshape(n, sh, n, sw).transpose(0, 2, 1, 3).reshape(n * n, sh * sw)
    v = np.percentile(blocks, 90, axis=1)
    centres = (np.arange(n) + 0.5) / n - 0.5
    y, x = np.repeat(centres, n), np.tile(centres, n)
    terms = [np.ones_like(v), x, y, x * x, x * y, y * y] if n >= 4 else [np.ones_like(v)] + ([x, y] if n >= 2 else [])
    design = np.stack(terms, axis=1)
    keep = np.ones(len(v), bool)
    for _ in range(3):  # blocks well below the fit are inked over: drop them and fit again
        coef = np.linalg.lstsq(design[keep], v[keep], rcond=None)[0]
        residual = v - design @ coef
        tolerance = max(float(np.median(np.abs(residual[keep]))) * 3, 0.12 * spread + 1)
        new_keep = residual > -tolerance
        if new_keep.sum() < len(terms) or (new_keep == keep).all():
            break
        keep = new_keep
    local = np.where(keep, v, design @ coef).reshape(n, n)  # inked-over blocks take the fitted level
    # One block more on every side, extrapolated linearly, so the margins follow the light's slope too.
    grid = np.pad(local, 1, mode="reflect", reflect_type="odd") if n >= 2 else np.pad(local, 1, mode="edge")
    big = Image.fromarray(grid.astype(np.float32)).resize((w + 2 * bw, h + 2 * bh), Image.Resampling.BILINEAR)
    return np.asarray(big, np.float32)[bh : bh + h, bw : bw + w]


def _otsu(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold of values in [0, 1], and how well it separates them (between-class / total variance)."""
    bins = 64
    hist = np.bincount(np.minimum((values.ravel() * bins).astype(np.intp), bins - 1), minlength=bins).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    best = int(np.argmax(between[:-1]))
    total = float(w0[-1] * np.sum(hist * (centres - m0[-1] / w0[-1]) ** 2))
    return float(edges[best + 1]), float(between[best] / total) if total > 0 else 0.0


def _strokes(ink: np.ndarray, peak: float) -> tuple[np.ndarray, tuple[str, ...]]:
    """The digit's pixels (ruled lines, frames and stray specks removed) and what the shapes say about it."""
    level, separation = _level(ink, peak)
    mask = ink > level
    lines = mask & ~_without_lines(mask)
    if lines.any():  # ruled lines, a grid or a frame: read the picture without them
        ink = np.where(ndimage.binary_dilation(lines, iterations=1) & ~mask | lines, 0, ink)
        level, separation = _level(ink, peak)
        mask = _without_lines(ink > level)
        slivers = ndimage.binary_dilation(lines, iterations=2) & ~ndimage.binary_opening(mask, np.ones((2, 2), bool))
        mask &= ~slivers  # what is left of a line beside it: one-pixel edges that were just above the threshold
    if not mask.any():
        return mask, (NO_INK,)
    if _textured(ink[_extent(mask)], peak, separation):
        return np.zeros(ink.shape, bool), (NO_DIGIT,)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    big = int(np.argmax(sizes))
    significant = sizes >= max(2, _KEEP_SHARE * sizes[big])
    if int(significant.sum()) > _MAX_PARTS or _holes(mask) > _MAX_HOLES:
        return np.zeros_like(mask), (NO_DIGIT,)
    keep, several = _digit_parts(boxes, sizes, big, significant)
    digit = np.isin(labels, np.flatnonzero(keep) + 1)
    if int(digit.sum()) < _MIN_DIGIT_PIXELS:  # nothing but specks
        return np.zeros_like(mask), (NO_INK,)
    box = digit[_extent(digit)]
    if float(box.mean()) > _FILL_MAX and box.size > 64 and max(box.shape) < _BLOB_ASPECT * min(box.shape):
        return np.zeros_like(mask), (NO_DIGIT,)  # a solid square-ish blob (a thick 1 is a long bar: kept)
    return digit, ((SEVERAL_DIGITS,) if several else ())


def _level(ink: np.ndarray, peak: float) -> tuple[float, float]:
    """The ink threshold (Otsu's between paper and ink, at least 35% of the peak) and Otsu's separation."""
    threshold, separation = _otsu(np.clip(ink / max(peak, 1e-6), 0, 1))
    return max(threshold * peak, 0.35 * peak, _MIN_CONTRAST * 0.75), separation


def _textured(box: np.ndarray, peak: float, separation: float) -> bool:
    """Noise or texture rather than strokes: neighbouring pixels of the marks' box barely alike, or no two clear
    levels (paper and ink) in a picture whose marks are weak or incoherent."""
    coherence = _coherence(box)
    if any(separation < sep and coherence < coh for sep, coh in _TEXTURE):
        return True
    return separation < _MIN_SEPARATION and peak < _LOW_CONTRAST


def _coherence(ink: np.ndarray) -> float:
    """How alike neighbouring pixels are (correlation at a one-pixel shift, along the more coherent axis): strokes
    ~0.7-1, pixel noise ~0-0.5."""
    a, b = ink[:, :-1].ravel(), ink[:, 1:].ravel()
    c, d = ink[:-1, :].ravel(), ink[1:, :].ravel()
    if a.size < 4 or c.size < 4 or a.std() == 0 or c.std() == 0:
        return 1.0
    return float(max(np.corrcoef(a, b)[0, 1], np.corrcoef(c, d)[0, 1]))


def _without_lines(mask: np.ndarray) -> np.ndarray:
    """The mask without long thin straight rows or columns (ruled lines, grids, frames); strokes crossing them
    keep their pixels."""
    out = mask.copy()
    for axis in (0, 1):  # axis 0: horizontal lines (rows), axis 1: vertical lines (columns)
        m = out if axis == 0 else out.T
        cover = m.mean(axis=1)
        lined = cover >= _LINE_COVER
        if not lined.any():
            continue
        runs = np.flatnonzero(np.diff(np.concatenate([[0], lined.astype(np.int8), [0]])))
        for start, stop in zip(runs[::2], runs[1::2], strict=True):
            if stop - start > max(2, _LINE_THICK * m.shape[0]):
                continue  # a thick band is a stroke or a blob, not a ruled line
            above = m[start - 1] if start > 0 else np.zeros(m.shape[1], bool)
            below = m[stop] if stop < m.shape[0] else np.zeros(m.shape[1], bool)
            m[start:stop] &= above & below
        if axis == 1:
            out = m.T
    return out


def _holes(mask: np.ndarray) -> int:
    """Enclosed background regions of a few pixels or more (an 8 has two; noise has many)."""
    rows, cols = _extent(mask)
    inner = ~mask[rows, cols]
    labels, count = ndimage.label(np.pad(inner, 1, constant_values=True))
    if count <= 1:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    outside = labels[0, 0]
    minimum = max(2, 0.002 * inner.size)
    return int(sum(1 for i, s in enumerate(sizes, start=1) if i != outside and s >= minimum))


def _digit_parts(
    boxes: list[tuple[slice, slice] | None], sizes: np.ndarray, big: int, significant: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Which shapes make the digit: the largest, and those near it; whether another character stands beside it."""
    main = boxes[big]
    assert main is not None
    height = main[0].stop - main[0].start
    reach = 0.5 * max(height, main[1].stop - main[1].start)
    keep = np.zeros(len(sizes), bool)
    several = False
    for i, box in enumerate(boxes):
        if box is None or not significant[i]:
            continue
        gap_x = max(box[1].start - main[1].stop, main[1].start - box[1].stop, 0)
        gap_y = max(box[0].start - main[0].stop, main[0].start - box[0].stop, 0)
        tall = box[0].stop - box[0].start >= 0.5 * height and sizes[i] >= 0.25 * sizes[big]
        if i != big and tall and gap_x >= _SEVERAL_GAP * height:
            several = True
            continue
        keep[i] = i == big or (gap_x <= reach and gap_y <= reach)
    return keep, several


def _extent(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding rows and columns of the mask's pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Resize the digit to fit 20x20 keeping its aspect ratio, anti-aliased, strongest ink at 255."""
    height, width = crop.shape
    scale = _BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = Image.fromarray(np.ascontiguousarray(crop, np.float32)).resize(size, method)
    digit = np.clip(np.asarray(small, dtype=np.float32), 0, None)
    peak = float(np.percentile(digit[digit > 0], 95)) if (digit > 0).sum() > 4 else float(digit.max())
    return np.clip(digit * (255 / peak), 0, 255) if peak > 0 else digit


def _centre(digit: np.ndarray) -> np.ndarray:
    """Place the digit on a black 28x28 canvas with its centre of mass at (14, 14), kept inside the canvas."""
    canvas = np.zeros((_SIDE, _SIDE), np.float32)
    mass = float(digit.sum())
    if mass <= 0:
        return canvas
    height, width = digit.shape
    ys, xs = np.indices(digit.shape)
    top = int(np.clip(round(_CENTRE - float((ys * digit).sum()) / mass), 0, _SIDE - height))
    left = int(np.clip(round(_CENTRE - float((xs * digit).sum()) / mass), 0, _SIDE - width))
    canvas[top : top + height, left : left + width] = digit
    return np.clip(canvas / 255, 0, 1).astype(np.float32)


def to_pixels(image: np.ndarray) -> bytes:
    """A float (28, 28) picture in [0, 1] as 784 uint8 bytes (how inputs the model saw are stored)."""
    return bytes(np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8).tobytes())


def pixels_png(pixels: bytes) -> bytes:
    """784 stored uint8 bytes as a 28x28 greyscale PNG (a few hundred bytes)."""
    out = io.BytesIO()
    Image.frombytes("L", (_SIDE, _SIDE), pixels).save(out, format="PNG", optimize=True)
    return out.getvalue()
