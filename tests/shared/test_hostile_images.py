"""Hostile images: decompression bombs are refused without allocating them, safely under threads."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from shared.config.errors import ImageTooLarge, InvalidImage
from shared.inputs.imaging import DEFAULT_MAX_PIXELS, check_image, configure_pillow, preprocess
from tests.factories import png_header_only

REPO = Path(__file__).resolve().parents[2]
LIMIT = 4_000_000
PILLOW_DEFAULT = int(1024 * 1024 * 1024 // 4 // 3)  # Image.MAX_IMAGE_PIXELS as Pillow ships it


def digit_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """A small PNG of a dark stroke on white paper."""
    img = Image.new("L", size, 255)
    ImageDraw.Draw(img).line([(size[0] // 2, 8), (size[0] // 2, size[1] - 8)], fill=0, width=6)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# --- Pillow's own guard -----------------------------------------------------------------------------------


def test_pillow_pixel_guard_is_lowered_to_the_setting() -> None:
    """Image.MAX_IMAGE_PIXELS is INFERQ_MAX_IMAGE_PIXELS' default (40M), well below Pillow's 89.5M."""
    assert DEFAULT_MAX_PIXELS == 40_000_000
    assert Image.MAX_IMAGE_PIXELS is not None
    assert DEFAULT_MAX_PIXELS <= Image.MAX_IMAGE_PIXELS < PILLOW_DEFAULT


def test_configure_pillow_raises_but_never_lowers_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """A raised INFERQ_MAX_IMAGE_PIXELS raises Pillow's guard with it; a lowered one leaves the default."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)
    configure_pillow(max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    configure_pillow(max_pixels=60_000_000)
    assert Image.MAX_IMAGE_PIXELS == 60_000_000


def test_images_in_pillows_warning_band_are_refused_even_with_a_higher_limit() -> None:
    """Past Pillow's guard (but under twice it) an image is refused although max_pixels would allow it."""
    side = int((DEFAULT_MAX_PIXELS * 1.5) ** 0.5)  # 1.5x the guard: Pillow warns, it does not raise
    with pytest.raises(ImageTooLarge):
        check_image(png_header_only(side, side), max_pixels=10**12)


_FRESH_PROCESS = r"""
import json, re, sys, warnings
from PIL import Image
import shared.inputs.imaging
from shared.config.errors import ImageTooLarge
from tests.factories import png_header_only
def peak_kib_since_reset():  # Linux: VmHWM, the peak RSS since the last "5" written to clear_refs
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
def reset_peak():
    open("/proc/self/clear_refs", "w").write("5")
    return peak_kib_since_reset()
out = {}
try:  # Pillow's warning band (40M-80M pixels) raises, it does not just warn
    Image.open(__import__("io").BytesIO(png_header_only(7000, 7000)))
    out["open"] = "no error"
except Image.DecompressionBombWarning:
    out["open"] = "DecompressionBombWarning raised"
before = reset_peak()
for side in (7000, 10_000, 50_000):
    try:
        shared.inputs.imaging.preprocess(png_header_only(side, side), max_pixels=10**12)
        out[str(side)] = "accepted"
    except ImageTooLarge:
        out[str(side)] = "ImageTooLarge"
out["bomb_rss_kib"] = peak_kib_since_reset() - before
import struct, zlib  # the control: a real 16 MB decode does show up in the peak RSS (PNG built row by row)
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
z = zlib.compressobj()
idat = b"".join(z.compress(b"\x00" + b"\xff" * 4000) for _ in range(4000)) + z.flush()
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4000, 4000, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
before = reset_peak()
shared.inputs.imaging.check_image(png, max_pixels=10**12)
out["control_rss_kib"] = peak_kib_since_reset() - before
print(json.dumps(out))
"""


def test_fresh_process_refuses_bombs_without_allocating_them() -> None:
    """In a plain process (no pytest filters): the bomb warning is an error, and 50,000x50,000 is refused with
    no growth of the peak RSS, while decoding a real 16-megapixel image does grow it (the gauge works)."""
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(done.stdout)
    assert done.stderr == ""  # no warning printed either
    assert out["open"] == "DecompressionBombWarning raised"
    assert out["7000"] == out["10000"] == out["50000"] == "ImageTooLarge"
    assert out["bomb_rss_kib"] < 8 * 1024
    assert out["control_rss_kib"] > 12 * 1024


@pytest.mark.parametrize("decode", [check_image, preprocess])
def test_bomb_refused_with_tiny_python_allocations(decode: object) -> None:
    """A 50,000x50,000 PNG of 70 bytes is refused while Python and numpy allocate under 1 MB."""
    data = png_header_only(50_000, 50_000)
    assert len(data) < 100
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="50000"):
            decode(data, max_pixels=LIMIT)  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


# --- no process-global warning state in the decode path -------------------------------------------------------


def test_concurrent_decodes_never_swap_the_warning_filters() -> None:
    """Eight threads decoding bombs and digits get the right answer each, and the process-global warning filter
    list is never swapped while they run (warnings.catch_warnings would swap it and race between threads)."""
    good, bomb = digit_png(), png_header_only(7000, 7000)
    seen_lists: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen_lists.add(id(warnings.filters))

    def decode(i: int) -> str:
        try:
            preprocess(bomb if i % 2 else good, max_pixels=LIMIT)
            return "ok"
        except ImageTooLarge:
            return "too-large"

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(decode, range(400)))
    finally:
        stop.set()
        watcher.join()
    assert results == ["ok" if i % 2 == 0 else "too-large" for i in range(400)]
    assert len(seen_lists) == 1


# --- damaged and foreign files ----------------------------------------------------------------------------


def _png_with_bad_crc() -> bytes:
    data = bytearray(digit_png())
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def _png_idat_garbage() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"not zlib at all") + _chunk(b"IEND", b"")


def _gif_without_image_data() -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", 64, 64, 0, 0, 0) + b";"


def _jpeg_without_scan() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: data.index(b"\xff\xda")] + b"\xff\xd9"


CORRUPT = {
    "png-bad-crc": _png_with_bad_crc,
    "png-idat-not-zlib": _png_idat_garbage,
    "gif-no-image-data": _gif_without_image_data,
    "jpeg-no-scan": _jpeg_without_scan,
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_files_are_invalid_images(case: str) -> None:
    """Damaged PNG, GIF and JPEG files are refused as invalid images (422), never another exception."""
    data = CORRUPT[case]()
    for decode in (check_image, preprocess):
        with pytest.raises(InvalidImage):
            decode(data, max_pixels=LIMIT)
