"""Datasets for bulk scoring: the ORM row, ingest (validate, then keep a chunk-addressable form), chunk reads."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Uuid, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from shared.archives import detect_format, read_into
from shared.errors import DatasetNotFound
from shared.models import Base, utcnow
from shared.settings import Settings

READY = "ready"


class Dataset(Base):
    """An uploaded, validated dataset, stored under blobs/datasets/<id>/ in a chunk-addressable form."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(20))  # zip | tar | npy | npz | jsonl (as uploaded)
    layout: Mapped[str] = mapped_column(String(20))  # files | array (as stored)
    status: Mapped[str] = mapped_column(String(20), default=READY)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    labelled: Mapped[bool] = mapped_column(Boolean, default=False)
    label_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def dataset_dir(settings: Settings, dataset_id: uuid.UUID) -> Path:
    """Where a dataset's stored form lives (local files; S3 is not supported for datasets yet)."""
    return settings.blob_dir / "datasets" / str(dataset_id)


def ingest(*, session: Session, settings: Settings, src: Path, filename: str, tenant_id: str = "default") -> Dataset:
    """Validate the uploaded file and store its normalized form; adds the row (the caller commits).

    Any error removes the staging directory, so a refused upload leaves no files and no row.
    """
    with open(src, "rb") as fh:
        head = fh.read(512)
    fmt = detect_format(filename, head)
    dataset_id = uuid.uuid4()
    staging = settings.blob_dir / "datasets" / f".staging-{dataset_id}"
    try:
        staged = read_into(fmt, src, staging, settings)
        final = dataset_dir(settings, dataset_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    ds = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=filename[:255],
        format=fmt,
        layout=staged.layout,
        item_count=staged.item_count,
        size_bytes=src.stat().st_size,
        stored_bytes=staged.stored_bytes,
        labelled=bool(staged.label_counts),
        label_counts=staged.label_counts,
        created_at=utcnow(),
    )
    session.add(ds)
    session.flush()
    return ds


def remove_files(settings: Settings, dataset_id: uuid.UUID) -> None:
    """Delete a dataset's stored form (used when its row could not be committed)."""
    shutil.rmtree(dataset_dir(settings, dataset_id), ignore_errors=True)


def get_dataset(session: Session, dataset_id: str | uuid.UUID, *, tenant_id: str | None = None) -> Dataset:
    """The dataset, or DatasetNotFound (also for malformed ids and another tenant's dataset)."""
    try:
        key = dataset_id if isinstance(dataset_id, uuid.UUID) else uuid.UUID(str(dataset_id))
    except ValueError:
        raise DatasetNotFound(f"dataset {dataset_id!r} does not exist (dataset ids are UUIDs)") from None
    ds = session.get(Dataset, key)
    if ds is None or (tenant_id is not None and ds.tenant_id != tenant_id):
        raise DatasetNotFound(f"dataset {dataset_id} does not exist")
    return ds


def list_datasets(session: Session, *, tenant_id: str, limit: int) -> list[Dataset]:
    """Newest datasets first."""
    q = select(Dataset).where(Dataset.tenant_id == tenant_id).order_by(Dataset.created_at.desc()).limit(limit)
    return list(session.scalars(q))


# --- reading the stored form ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredItem:
    """One dataset item as a chunk reader sees it: raw bytes (files) or a uint8 image (array)."""

    idx: int
    custom_id: str
    label: str | None
    data: bytes | None = None
    pixels: np.ndarray | None = None


def read_items(settings: Settings, ds_id: uuid.UUID, layout: str, lo: int, hi: int) -> list[StoredItem]:
    """Items lo..hi-1 straight from storage (the array is memory-mapped; files are read one by one)."""
    root = dataset_dir(settings, ds_id)
    labels = _labels(root, layout, lo, hi)
    if layout == "array":
        images = np.load(root / "images.npy", mmap_mode="r")
        block = np.array(images[lo:hi])
        return [StoredItem(lo + i, str(lo + i), labels[i], pixels=block[i]) for i in range(len(block))]
    items = []
    for i, (custom_id, label) in enumerate(_index_slice(root, lo, hi)):
        path = root / "items" / f"{lo + i:07d}"
        items.append(StoredItem(lo + i, custom_id, label, data=path.read_bytes() if path.exists() else None))
    return items


def iter_index(settings: Settings, ds_id: uuid.UUID, layout: str) -> Iterator[tuple[int, str, str | None]]:
    """(idx, custom_id, true label) of every item in order, streamed."""
    root = dataset_dir(settings, ds_id)
    if layout == "array":
        n = int(np.load(root / "images.npy", mmap_mode="r").shape[0])
        step = 4096
        for lo in range(0, n, step):
            labels = _labels(root, layout, lo, min(n, lo + step))
            for i, label in enumerate(labels):
                yield lo + i, str(lo + i), label
        return
    for idx, (custom_id, label) in enumerate(_index_slice(root, 0, None)):
        yield idx, custom_id, label


def _labels(root: Path, layout: str, lo: int, hi: int) -> list[str | None]:
    if layout != "array":
        return [label for _, label in _index_slice(root, lo, hi)]
    n = hi - lo
    path = root / "labels.npy"
    if not path.exists():
        return [None] * n
    return [str(v) for v in np.load(path, mmap_mode="r")[lo:hi]]


def _index_slice(root: Path, lo: int, hi: int | None) -> Iterator[tuple[str, str | None]]:
    with open(root / "index.jsonl", encoding="utf-8") as fh:
        for line in islice(fh, lo, hi):
            row = json.loads(line)
            yield str(row["id"]), row.get("label")
