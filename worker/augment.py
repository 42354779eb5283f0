"""Realistic training augmentation: each training digit also rendered as users send pictures, then preprocessed.

`realistic_copies` renders training images through random corruptions of `worker.corruptions` with their training
parameter ranges (wider than the evaluation's) and a seed stream of their own, reads each picture back through the
same preprocessing as the API's (`shared.inputs.imaging.prepare_image` on the decoded bytes), and returns the 28x28
results: the model learns exactly what preprocessing makes of real pictures. The evaluation suite never sees these
seeds. The work is split in fixed chunks (so the result does not depend on how many processes render them) spread over
the machine's cores in spawned processes, which import no TensorFlow.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from shared.inputs.imaging import prepare_image
from worker.corruptions import CORRUPTIONS, REALWORLD

AUGMENT_STREAM = 7  # seeds [seed, AUGMENT_STREAM, copy, chunk]: never the evaluation suite's
AUGMENT_MODES = ("none", "basic", "realistic")  # basic: shifts, rotations, zooms; realistic: these copies too
REALISTIC_COPIES = 2  # rendered copies of every training image, beside the image itself
PARALLEL_FROM = 2000  # renderings below this are done in-process (starting helper processes costs seconds)
CHUNK = 500  # images a rendering task takes; fixed, so results do not depend on the number of processes
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


def render_chunk(x: np.ndarray, y: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's readable renderings, preprocessed to uint8 28x28, with their labels."""
    names = list(WEIGHTS)
    weights = np.array([WEIGHTS[n] for n in names], float)
    rng = np.random.default_rng(seeds)
    picks = rng.choice(len(names), len(x), p=weights / weights.sum())
    out, labels = [], []
    for digit, label, pick in zip(x, y, picks, strict=True):
        corruption = CORRUPTIONS[names[int(pick)]]
        with Image.open(io.BytesIO(corruption.render(digit, rng, corruption.train))) as img:
            prepared = prepare_image(img)
        if prepared.readable:
            out.append(np.round(prepared.image * 255).astype(np.uint8))
            labels.append(label)
    if not out:
        return np.zeros((0, *x.shape[1:]), np.uint8), np.zeros((0,), y.dtype)
    return np.stack(out), np.asarray(labels, dtype=y.dtype)


def realistic_copies(
    x: np.ndarray,
    y: np.ndarray,
    *,
    copies: int = REALISTIC_COPIES,
    seed: int = 0,
    processes: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`copies` realistic renderings of every uint8 (N, 28, 28) image, preprocessed; unreadable ones dropped."""
    tasks = [
        (x[start : start + CHUNK], y[start : start + CHUNK], [seed, AUGMENT_STREAM, c, start // CHUNK])
        for c in range(copies)
        for start in range(0, len(x), CHUNK)
    ]
    total, done = copies * len(x), 0
    workers = min(len(tasks), processes or os.cpu_count() or 1) if total >= PARALLEL_FROM else 1
    results: list[tuple[np.ndarray, np.ndarray]] = []
    if workers <= 1:
        for task in tasks:
            results.append(render_chunk(*task))
            done += len(task[0])
            if on_progress:
                on_progress(done, total)
    else:
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold TensorFlow's threads
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for task, result in zip(tasks, pool.map(render_chunk, *zip(*tasks, strict=True)), strict=True):
                results.append(result)
                done += len(task[0])
                if on_progress:
                    on_progress(done, total)
    if not results:
        return np.zeros((0, *x.shape[1:]), np.uint8), np.zeros((0,), y.dtype)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
