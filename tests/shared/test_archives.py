"""Dataset ingest: every format lands in a chunk-addressable form; hostile files are refused leaving nothing."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.config.errors import DatasetTooLarge, InferqError, InvalidDataset, UnsafeArchive, UnsupportedDatasetFormat
from shared.config.settings import Settings
from shared.db.models import Dataset
from shared.inputs.datasets import dataset_prefix, ingest, iter_index, read_items
from tests.dataset_factories import (
    class_folder_entries,
    digits,
    jsonl_bytes,
    npy_bytes,
    npz_bytes,
    tar_bytes,
    zip_bytes,
)
from tests.factories import png_bytes


def _ingest(session: Session, settings: Settings, tmp_path: Path, name: str, data: bytes) -> Dataset:
    src = tmp_path / f"upload-{name}"
    src.write_bytes(data)
    return ingest(session=session, settings=settings, src=src, filename=name)


def _refused(session: Session, settings: Settings, tmp_path: Path, name: str, data: bytes, error: type) -> str:
    with pytest.raises(error) as info:
        _ingest(session, settings, tmp_path, name, data)
    assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    root = settings.blob_dir / "datasets"
    assert not root.exists() or list(root.iterdir()) == []
    staging = settings.data_dir / "tmp"
    assert not staging.exists() or list(staging.iterdir()) == []
    return str(info.value)


def test_npy_is_stored_as_uint8_and_read_by_chunk(session: Session, settings: Settings, tmp_path: Path) -> None:
    """A float (N,28,28,1) array in [0,1] is stored as uint8 and a chunk reads only its own items."""
    x, _ = digits(50)
    ds = _ingest(session, settings, tmp_path, "d.npy", npy_bytes((x / 255.0).astype(np.float32)[..., None]))
    assert (ds.item_count, ds.layout, ds.labelled) == (50, "array", False)
    items = read_items(settings, ds.id, ds.layout, 10, 20)
    assert [i.idx for i in items] == list(range(10, 20))
    assert np.array_equal(np.stack([i.pixels for i in items if i.pixels is not None]), x[10:20])


def test_npz_labels_are_counted(session: Session, settings: Settings, tmp_path: Path) -> None:
    """An npz with x and y keeps the labels and reports their counts."""
    x, y = digits(30)
    ds = _ingest(session, settings, tmp_path, "d.npz", npz_bytes(x=x, y=y))
    assert ds.labelled and sum(ds.label_counts.values()) == 30
    assert [lbl for _, _, lbl in iter_index(settings, ds.id, ds.layout)] == [str(v) for v in y]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_class_folders_become_labels(session: Session, settings: Settings, tmp_path: Path, kind: str) -> None:
    """`label/x.png` entries are items labelled by their folder; dot files are skipped."""
    entries = [*class_folder_entries(3), (".DS_Store", b"x")]
    data = zip_bytes(entries) if kind == "zip" else tar_bytes(entries)
    ds = _ingest(session, settings, tmp_path, f"d.{kind}", data)
    assert ds.item_count == 6 and ds.label_counts == {"1": 3, "7": 3}
    items = read_items(settings, ds.id, ds.layout, 4, 6)
    assert [(i.custom_id, i.label) for i in items] == [("7/01.png", "7"), ("7/02.png", "7")]
    assert items[0].data == png_bytes()


def test_jsonl_manifest(session: Session, settings: Settings, tmp_path: Path) -> None:
    """Each manifest line is an item with its custom_id and optional label."""
    ds = _ingest(session, settings, tmp_path, "m.jsonl", jsonl_bytes([png_bytes(), b"junk"], ["1", None]))
    assert ds.item_count == 2 and ds.label_counts == {"1": 1}
    assert [i.custom_id for i in read_items(settings, ds.id, ds.layout, 0, 2)] == ["img-0", "img-1"]


def test_manifest_line_not_json_is_reported_by_number(session: Session, settings: Settings, tmp_path: Path) -> None:
    """A manifest line that is not JSON refuses the dataset, naming the line."""
    data = jsonl_bytes([png_bytes()]) + b"{not json\n"
    assert "line 2" in _refused(session, settings, tmp_path, "m.jsonl", data, InvalidDataset)


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("dots.zip", zip_bytes([("../evil.png", b"x")]), UnsafeArchive),
        ("abs.zip", zip_bytes([("/etc/evil.png", b"x")]), UnsafeArchive),
        ("link.zip", zip_bytes([("1/a.png", b"x")], symlink="1/link.png"), UnsafeArchive),
        ("dots.tar.gz", tar_bytes([("a/../../evil.png", b"x")]), UnsafeArchive),
        ("sym.tar.gz", tar_bytes([("1/a.png", b"x")], link="1/l.png"), UnsafeArchive),
        ("hard.tar.gz", tar_bytes([("1/a.png", b"x")], link="1/h.png", hard=True), UnsafeArchive),
        ("bad.npy", npy_bytes(np.zeros((4, 28), np.uint8)), InvalidDataset),
        ("bad-dtype.npy", npy_bytes(np.zeros((4, 28, 28), np.int64)), InvalidDataset),
        ("rgb.npy", npy_bytes(np.zeros((4, 28, 28, 3), np.uint8)), InvalidDataset),
        ("junk.bin", b"\x00\x01hello", UnsupportedDatasetFormat),
        ("broken.zip", b"PK\x03\x04garbage", InvalidDataset),
    ],
)
def test_hostile_files_are_refused(
    session: Session, settings: Settings, tmp_path: Path, name: str, data: bytes, error: type
) -> None:
    """Traversal, absolute paths, links, wrong array shapes/dtypes and unreadable files leave no row, no file."""
    _refused(session, settings, tmp_path, name, data, error)


def test_too_many_items(tmp_path: Path, session: Session, settings: Settings) -> None:
    """More entries than INFERQ_DATASET_MAX_ITEMS are refused (zip, tar, array)."""
    small = settings.model_copy(update={"dataset_max_items": 3})
    entries = class_folder_entries(2)
    _refused(session, small, tmp_path, "a.zip", zip_bytes(entries), DatasetTooLarge)
    _refused(session, small, tmp_path, "a.tar", tar_bytes(entries), DatasetTooLarge)
    _refused(session, small, tmp_path, "a.npy", npy_bytes(digits(4)[0]), DatasetTooLarge)


def test_zip_bomb_by_declared_ratio(tmp_path: Path, session: Session, settings: Settings) -> None:
    """An entry that declares a compression ratio past the limit is refused before extraction."""
    bomb = zip_bytes([("1/zeros.png", b"\0" * (8 * 1024 * 1024))])
    assert "COMPRESSION_RATIO" in _refused(session, settings, tmp_path, "b.zip", bomb, UnsafeArchive)


def test_zip_lying_about_its_size_is_caught_while_extracting(
    tmp_path: Path, session: Session, settings: Settings
) -> None:
    """An entry whose real bytes exceed its declared size is refused by counting while extracting."""
    data = bytearray(zip_bytes([("1/a.png", b"A" * 5000)]))
    # shrink the declared uncompressed size in both headers, leaving the compressed data intact
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
    local = info.header_offset
    data[local + 22 : local + 26] = (100).to_bytes(4, "little")
    central = bytes(data).rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")
    with pytest.raises(InferqError):
        _ingest(session, settings, tmp_path, "liar.zip", bytes(data))
    assert session.scalar(select(func.count()).select_from(Dataset)) == 0


def test_expanded_bytes_limit(tmp_path: Path, session: Session, settings: Settings) -> None:
    """A dataset expanding past INFERQ_DATASET_MAX_EXPANDED_BYTES is refused (declared and counted)."""
    small = settings.model_copy(update={"dataset_max_expanded_bytes": 2048})
    entries = [("1/a.png", b"x" * 1500), ("1/b.png", b"y" * 1500)]
    _refused(session, small, tmp_path, "big.zip", zip_bytes(entries), DatasetTooLarge)
    _refused(session, small, tmp_path, "big.tar.gz", tar_bytes(entries), DatasetTooLarge)


def test_tar_bomb_ratio_counted(tmp_path: Path, session: Session, settings: Settings) -> None:
    """A gzipped tar expanding past the ratio limit is refused while its bytes are counted."""
    _refused(
        session, settings, tmp_path, "bomb.tar.gz", tar_bytes([("1/z.png", b"\0" * (8 * 1024 * 1024))]), UnsafeArchive
    )


def test_refused_upload_keeps_earlier_datasets(tmp_path: Path, session: Session, settings: Settings) -> None:
    """Cleaning up a refused upload does not touch a dataset stored before it."""
    good = _ingest(session, settings, tmp_path, "ok.npy", npy_bytes(digits(3)[0]))
    with pytest.raises(UnsafeArchive):
        _ingest(session, settings, tmp_path, "bad.zip", zip_bytes([("../x.png", b"x")]))
    assert (settings.blob_dir / dataset_prefix(good.id) / "images.npy").is_file()
