"""Realistic training augmentation: each training digit also rendered as users send pictures, then preprocessed.

`realistic_copies` renders training images through random corruptions of `worker.corruptions` with their training
parameter ranges (wider than the evaluation's) and a seed stream of their own, reads each picture back through the
same preprocessing as the API's (`shared.imaging.prepare_image` on the decoded bytes), and returns the 28x28 results:
the model learns exactly what preprocessing makes of real pictures. The evaluation suite never sees these seeds.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from shared.imaging import prepare_image
from worker.corruptions import CORRUPTIONS, REALWORLD

AUGMENT_STREAM = 7  # seeds [seed, AUGMENT_STREAM, copy]: never the evaluation suite's
AUGMENT_MODES = ("none", "basic", "realistic")  # basic: shifts, rotations, zooms; realistic: these copies too
REALISTIC_COPIES = 2  # rendered copies of every training image, beside the image itself
# How often each corruption is drawn: the hardest to read (tiny bitmaps, photos, crops) more often; `clean` (the
# digit as a 28x28 PNG, re-normalized) so the model also sees exactly what preprocessing makes of MNIST itself.
WEIGHTS: dict[str, float] = {name: 1.0 for name in REALWORLD} | {
    "clean": 1.5,
    "lowres-8": 3.0,
    "lowres-16": 1.5,
    "photo": 2.0,
    "small-on-canvas": 2.0,
    "edge-crop": 2.0,
    "thick-marker": 1.5,
}


def mode(augment: bool | str) -> str:
    """Normalize an `augment` parameter: True is "basic", False "none"."""
    if isinstance(augment, bool):
        return "basic" if augment else "none"
    if augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)} (or true/false), got {augment!r}")
    return augment


def realistic_copies(
    x: np.ndarray,
    y: np.ndarray,
    *,
    copies: int = REALISTIC_COPIES,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`copies` realistic renderings of every uint8 (N, 28, 28) image, preprocessed; unreadable ones dropped."""
    names = list(WEIGHTS)
    weights = np.array([WEIGHTS[n] for n in names], float)
    out, labels = [], []
    total, last = copies * len(x), time.monotonic()
    for c in range(copies):
        rng = np.random.default_rng([seed, AUGMENT_STREAM, c])
        picks = rng.choice(len(names), len(x), p=weights / weights.sum())
        for i, (digit, label) in enumerate(zip(x, y, strict=True)):
            corruption = CORRUPTIONS[names[int(picks[i])]]
            data = corruption.render(digit, rng, corruption.train)
            with Image.open(io.BytesIO(data)) as img:
                prepared = prepare_image(img)
            if prepared.readable:
                out.append(np.round(prepared.image * 255).astype(np.uint8))
                labels.append(label)
            if on_progress and time.monotonic() - last > 1.0:
                on_progress(c * len(x) + i + 1, total)
                last = time.monotonic()
    if not out:
        return np.zeros((0, *x.shape[1:]), np.uint8), np.zeros((0,), y.dtype)
    return np.stack(out), np.asarray(labels, dtype=y.dtype)
