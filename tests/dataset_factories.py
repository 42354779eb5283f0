"""Builders of dataset files (zip, tar, npy, npz, JSONL), good and hostile, for the bulk-scoring tests."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import zipfile
from collections.abc import Sequence

import numpy as np

from tests.factories import png_bytes


def digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 28x28 images (a bright bar at a label-dependent row) and their labels 0..9."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    x = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(y):
        x[i, 2 + 2 * int(label) : 4 + 2 * int(label), 4:24] = 255
    return x, y


def npy_bytes(x: np.ndarray) -> bytes:
    """The array as a .npy file."""
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """The arrays as a compressed .npz file."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def zip_bytes(entries: Sequence[tuple[str, bytes]], *, symlink: str | None = None) -> bytes:
    """A deflated zip of (name, data) entries, plus an optional symlink entry of that name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16) | 0
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def tar_bytes(entries: Sequence[tuple[str, bytes]], *, link: str | None = None, hard: bool = False) -> bytes:
    """A gzipped tar of (name, data) entries, plus an optional symlink (or hardlink) member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)
    return buf.getvalue()


def class_folder_entries(per_class: int = 2, labels: Sequence[str] = ("1", "7")) -> list[tuple[str, bytes]]:
    """`label/nn.png` entries of small digit-like PNGs."""
    return [(f"{label}/{i:02d}.png", png_bytes()) for label in labels for i in range(per_class)]


def jsonl_bytes(images: Sequence[bytes], labels: Sequence[str | None] | None = None) -> bytes:
    """A manifest with one {"custom_id", "image", "label"} line per image."""
    lines = []
    for i, data in enumerate(images):
        row = {"custom_id": f"img-{i}", "image": base64.b64encode(data).decode()}
        if labels is not None and labels[i] is not None:
            row["label"] = labels[i]
        lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode()
