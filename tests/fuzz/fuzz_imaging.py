"""Atheris fuzz target for the image decode-and-preprocess path (shared.inputs.imaging.preprocess).

    python tests/fuzz/fuzz_imaging.py [libFuzzer flags] [CORPUS_DIR]

Every input must either become a (28, 28) float32 array in [0, 1] or raise an InferqError (invalid-image,
unsupported-image-format, image-too-large); any other exception is a crash. Hangs are caught with libFuzzer's
-timeout (seconds per input) and memory blow-ups with -rss_limit_mb / -malloc_limit_mb. The corpus directory (a
temporary one if none is given) is seeded with valid images of every allowed format, built here in code.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import atheris

# Coverage feedback from our code and Pillow's Python parsers (instrumenting Pillow costs ~10 s at start);
# INFERQ_FUZZ_INSTRUMENT=shared narrows it, e.g. for the harness self-tests.
INSTRUMENT = os.environ.get("INFERQ_FUZZ_INSTRUMENT", "shared,PIL").split(",")

with atheris.instrument_imports(include=INSTRUMENT):
    import numpy as np

    # the allowed formats' plugins (and TIFF's, which reads EXIF), imported now so they are instrumented too
    from PIL import (  # noqa: F401
        BmpImagePlugin,
        GifImagePlugin,
        Image,
        ImageDraw,
        JpegImagePlugin,
        MpoImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    from shared.config.errors import InferqError
    from shared.inputs.imaging import preprocess

MAX_PIXELS = 4_000_000  # a tenth of INFERQ_MAX_IMAGE_PIXELS' default: each run stays fast, the checks the same


def test_one_input(data: bytes) -> None:
    """Decode and normalize one input; only InferqError may escape, and a result must be MNIST-shaped."""
    try:
        out = preprocess(data, max_pixels=MAX_PIXELS)
    except InferqError:
        return
    if out.shape != (28, 28) or out.dtype != np.float32 or not (0.0 <= float(out.min()) <= float(out.max()) <= 1.0):
        raise AssertionError(f"preprocess returned {out.dtype} {out.shape} in [{out.min()}, {out.max()}]")


def _digit(size: tuple[int, int] = (40, 48), mode: str = "L") -> Image.Image:
    img = Image.new("L", size, 240)
    w, h = size
    ImageDraw.Draw(img).line([(w // 4, h // 5), (3 * w // 4, h // 5), (2 * w // 5, 4 * h // 5)], fill=20, width=4)
    return img.convert(mode)


def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def seeds() -> list[bytes]:
    """Small valid images: every allowed format and mode the decoder treats differently."""
    img = _digit()
    exif = Image.Exif()
    exif[0x0112] = 6
    out = [_encode(img.convert("RGB"), f) for f in ("PNG", "JPEG", "WEBP", "BMP", "GIF")]
    out += [
        _encode(img, "PNG"),
        _encode(img.convert("LA"), "PNG"),
        _encode(img.convert("RGBA"), "WEBP", lossless=True),
        _encode(img.convert("P"), "PNG", transparency=0),
        _encode(Image.fromarray(np.asarray(img, np.uint16) * 257), "PNG"),  # 16-bit grey
        _encode(img.convert("1"), "BMP"),
        _encode(img.convert("RGB"), "JPEG", exif=exif, progressive=True),
        _encode(img, "GIF", save_all=True, append_images=[img.rotate(90)], duration=50),
        _encode(img, "PNG", save_all=True, append_images=[img.rotate(90)]),  # APNG
        _encode(img.convert("RGB"), "MPO", save_all=True, append_images=[img.convert("RGB")]),
        _encode(Image.new("L", (1, 1), 0), "PNG"),
    ]
    return out


def seed_corpus(directory: Path) -> Path:
    """Write the seeds into `directory` (named by content hash, as libFuzzer names corpus files)."""
    directory.mkdir(parents=True, exist_ok=True)
    for data in seeds():
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return directory


# --- self-tests of the harness: each misbehaves on every input, and libFuzzer must report it ----------------------


def _crash(data: bytes) -> None:
    raise KeyError("self-test: an exception that is not an InferqError")


def _hang(data: bytes) -> None:
    time.sleep(3600)


def _blow_up(data: bytes) -> None:
    hoard = []
    while True:  # 64 MiB at a time, touched, until the RSS limit stops the run
        hoard.append(np.ones(64 * 1024 * 1024, np.uint8))


SELF_TESTS = {"crash": _crash, "hang": _hang, "blow-up": _blow_up}


def main(argv: list[str]) -> None:
    """Seed the corpus directory (or a temporary one) and hand over to libFuzzer (INFERQ_FUZZ_SELF_TEST=crash,
    hang or blow-up swaps in a broken target, to prove the run's limits catch it)."""
    flags = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    corpus = seed_corpus(Path(dirs[0]) if dirs else Path(tempfile.mkdtemp(prefix="inferq-fuzz-")))
    target = SELF_TESTS.get(os.environ.get("INFERQ_FUZZ_SELF_TEST", ""), test_one_input)
    atheris.Setup([argv[0], *flags, str(corpus), *dirs[1:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
