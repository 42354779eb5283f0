"""Image decoding and MNIST-style preprocessing, with Pillow and numpy only (the API process imports this)."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageFilter, ImageOps, UnidentifiedImageError

from shared.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from shared.settings import Settings

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
_WORK_SIDE = 1024  # longest side the analysis runs at; the output is 28x28 anyway
_DENOISE_MIN_SIDE = 4 * _SIDE  # a 3x3 median filter removes specks only where strokes are wider than that
_MIN_CONTRAST = 24.0  # grey levels between paper and ink below which the image counts as blank
_TRIM = 0.005  # ink mass cut from each side when locating the digit: specks and stray marks
_FLOOR = 0.1  # ink fainter than this share of the strongest ink is noise, as is anything the border reaches


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


def prepare_image(img: Image.Image) -> Prepared:
    """Normalize a decoded picture like MNIST and say what was noticed."""
    if img.width == 0 or img.height == 0:
        return Prepared(np.zeros((_SIDE, _SIDE), np.float32), (NO_INK,))
    ink = _ink(_grey(img))
    if not ink.any():
        return Prepared(np.zeros((_SIDE, _SIDE), np.float32), (NO_INK,))
    return Prepared(_centre(_fit_box(ink[_span(ink, axis=1), _span(ink, axis=0)])))


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


def _grey(img: Image.Image) -> np.ndarray:
    """Grey levels 0..255 as float32, transparency flattened, at most _WORK_SIDE on the long side."""
    if img.mode == "F" or img.mode.startswith("I"):  # 16/32-bit greys: bring them to 8 bits first
        wide = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(wide / 257 if wide.max() > 255 else wide, 0, 255).astype(np.uint8))
    img = img.convert("RGBA" if img.has_transparency_data else "L")
    if max(img.size) > _WORK_SIDE:
        scale = _WORK_SIDE / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BOX)
    grey = np.asarray(img, dtype=np.float32)
    return _flatten_alpha(grey) if grey.ndim == 3 else grey


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    """Flatten transparency onto white behind dark strokes, onto black behind light ones."""
    grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    alpha = rgba[..., 3] / 255
    weight = float(alpha.sum())
    backdrop = 0.0 if weight and float((grey * alpha).sum()) / weight > 127.5 else 255.0
    return grey * alpha + backdrop * (1 - alpha)


def _ink(grey: np.ndarray) -> np.ndarray:
    """Ink 0..255 on a zero background: polarity from the border, background removed, contrast stretched."""
    if min(grey.shape) >= _DENOISE_MIN_SIDE:
        grey = np.asarray(Image.fromarray(grey).filter(ImageFilter.MedianFilter(3)), dtype=np.float32)
    border = _border(grey)
    background = float(np.median(border))
    # The ink is the extreme furthest from the paper; dark ink on lighter paper is inverted to light on dark.
    sign = -1.0 if background - float(grey.min()) > float(grey.max()) - background else 1.0
    ink, border = sign * (grey - background), sign * (border - background)
    peak = float(ink.max())
    if peak < _MIN_CONTRAST:
        return np.zeros_like(ink)
    floor = max(_FLOOR * peak, float(np.percentile(border, 99)))
    return np.where(ink > floor, ink * (255 / peak), 0)


def _border(grey: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame, where the paper (not the digit) is expected."""
    t = max(1, min(grey.shape) // 32)
    return np.concatenate([grey[:t].ravel(), grey[-t:].ravel(), grey[:, :t].ravel(), grey[:, -t:].ravel()])


def _span(ink: np.ndarray, axis: int) -> slice:
    """Rows (axis=1) or columns (axis=0) of the digit: the mass-weighted core, widened to its faint edges."""
    profile = ink.sum(axis=axis)
    cumulative = np.cumsum(profile) / profile.sum()
    first = int(np.searchsorted(cumulative, _TRIM, side="right"))
    last = int(np.searchsorted(cumulative, 1 - _TRIM, side="left"))
    margin = (last - first) // _BOX + 1  # one output pixel: the anti-aliased fringe of the strokes
    window = np.flatnonzero(profile[max(0, first - margin) : last + margin + 1]) + max(0, first - margin)
    return slice(int(window[0]), int(window[-1]) + 1)


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Resize the digit to fit 20x20 keeping its aspect ratio, anti-aliased, strongest ink at 255."""
    height, width = crop.shape
    scale = _BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(np.ascontiguousarray(crop, np.float32)).resize(size, Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(small, dtype=np.float32), 0, None)  # Lanczos rings slightly below zero
    peak = float(digit.max())
    return digit * (255 / peak) if peak > 0 else digit


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
