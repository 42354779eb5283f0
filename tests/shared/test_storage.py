"""LocalBlobStore: atomic, durable files under one root, with keys that cannot escape it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.storage import LocalBlobStore


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def test_roundtrip(blobs: LocalBlobStore) -> None:
    """put then get returns the same bytes; exists tracks the key; delete removes it and is idempotent."""
    key = "inputs/3f2a/00001"
    assert not blobs.exists(key)
    assert blobs.put(key, b"\x89PNG data") == key
    assert blobs.exists(key) and blobs.get(key) == b"\x89PNG data"
    blobs.delete(key)
    assert not blobs.exists(key)
    blobs.delete(key)  # deleting twice is fine
    with pytest.raises(FileNotFoundError):
        blobs.get(key)


def test_put_overwrites(blobs: LocalBlobStore) -> None:
    """A second put of a key replaces its bytes."""
    blobs.put("a/b", b"one")
    blobs.put("a/b", b"two")
    assert blobs.get("a/b") == b"two"


def test_empty_blob(blobs: LocalBlobStore) -> None:
    """Zero bytes are stored and read back as zero bytes."""
    blobs.put("empty", b"")
    assert blobs.exists("empty") and blobs.get("empty") == b""


def test_files_live_under_root(blobs: LocalBlobStore, tmp_path: Path) -> None:
    """A key maps to a file of the same relative path under the root."""
    blobs.put("models/mnist-cnn/1.keras", b"x")
    assert (tmp_path / "blobs" / "models" / "mnist-cnn" / "1.keras").read_bytes() == b"x"


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "a/../../escape",
        "a/..",
        "..",
        "/etc/passwd",
        "/abs",
        "",
        ".hidden",
        "a//b/../../..",
        "a\\..\\b",
        "a b",
        "a\x00b",
        "~/x",
        "x" * 402,
    ],
)
@pytest.mark.parametrize("op", ["put", "get", "delete", "exists"])
def test_bad_keys_are_refused(blobs: LocalBlobStore, tmp_path: Path, key: str, op: str) -> None:
    """Keys with '..', absolute paths or odd characters raise ValueError for every operation."""
    with pytest.raises(ValueError, match="invalid blob key"):
        if op == "put":
            blobs.put(key, b"x")
        else:
            getattr(blobs, op)(key)
    assert not (tmp_path / "escape").exists()


def test_write_leaves_no_temp_files(blobs: LocalBlobStore, tmp_path: Path) -> None:
    """After puts (including overwrites) only the final files remain, no .tmp- leftovers."""
    for i in range(3):
        blobs.put(f"inputs/job/{i:05d}", b"data" * i)
    blobs.put("inputs/job/00000", b"again")
    names = sorted(p.name for p in (tmp_path / "blobs" / "inputs" / "job").iterdir())
    assert names == ["00000", "00001", "00002"]


def test_failed_write_leaves_no_temp_file(blobs: LocalBlobStore, tmp_path: Path) -> None:
    """A write that fails midway removes its temp file and leaves the old value in place."""
    blobs.put("k", b"old")
    with pytest.raises(TypeError):
        blobs.put("k", "not bytes")  # type: ignore[arg-type]
    assert blobs.get("k") == b"old"
    assert [p.name for p in (tmp_path / "blobs").iterdir()] == ["k"]
