"""Datasets for bulk scoring: the ORM row, ingest (validate, then move a chunk-addressable form into the blob store),
chunk reads by range from that store (local files or S3), and deletion."""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.config.errors import DatasetInUse, DatasetNotFound, InvalidDataset
from shared.config.settings import Settings
from shared.config.status import JobStatus
from shared.db.models import Dataset, Job, utcnow
from shared.inputs.archives import OFFSET_PAIR, detect_format, read_into
from shared.inputs.storage import BlobStore, make_store

log = logging.getLogger(__name__)
LABEL_BLOCK = 4096  # labels read at a time when streaming an array dataset's index
NPY_HEAD_BYTES = 4096  # bytes read to parse a stored .npy header (ours are 128)
ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def dataset_prefix(dataset_id: uuid.UUID) -> str:
    """The blob-store prefix of a dataset's stored form."""
    return f"datasets/{dataset_id}"


def ingest(*, session: Session, settings: Settings, src: Path, filename: str, tenant_id: str = "default") -> Dataset:
    """Validate the uploaded file, normalize it in a local staging directory and move it into the blob store;
    adds the row (the caller commits, or calls remove_files if the commit fails).

    Any error removes the staging directory and whatever reached the store, so a refused upload leaves nothing."""
    with open(src, "rb") as fh:
        head = fh.read(512)
    fmt = detect_format(filename, head)
    dataset_id = uuid.uuid4()
    staging = settings.data_dir / "tmp" / f"dataset-{dataset_id}"
    store = make_store(settings)
    try:
        staged = read_into(fmt, src, staging, settings)
        for path in sorted(staging.iterdir()):
            store.move_in(f"{dataset_prefix(dataset_id)}/{path.name}", path)
    except BaseException:
        remove_files(settings, dataset_id)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
    """Delete a dataset's stored form (after its row is deleted, or when its row could not be committed);
    a storage failure is logged, never raised: the files are then orphaned, not the row."""
    try:
        make_store(settings).delete_prefix(dataset_prefix(dataset_id))
    except Exception:
        log.exception("could not remove the stored files of dataset %s (orphaned)", dataset_id)


def delete_dataset(*, session: Session, dataset_id: str | uuid.UUID, tenant_id: str) -> Dataset:
    """Delete the dataset's row, refused with DatasetInUse while a queued or running job reads it; the caller
    commits, then calls remove_files. The row is locked first, as score-job creation share-locks it."""
    ds = get_dataset(session, dataset_id, tenant_id=tenant_id, lock="update")
    busy = jobs_reading(session, ds.id)
    if busy:
        shown = ", ".join(str(j) for j in busy)
        raise DatasetInUse(
            f"dataset {ds.id} is read by unfinished job(s) {shown}; cancel them or wait until they finish",
            jobs=[str(j) for j in busy],
        )
    session.delete(ds)
    session.flush()
    return ds


def jobs_reading(session: Session, dataset_id: uuid.UUID, limit: int = 10) -> list[uuid.UUID]:
    """Queued or running jobs whose parameters name the dataset (score: dataset_id; training, and optimizing or
    evaluating a version trained on it: dataset)."""
    key = str(dataset_id)
    q = (
        select(Job.id)
        .where(
            Job.status.in_(ACTIVE_STATUSES),
            or_(Job.params["dataset_id"].as_string() == key, Job.params["dataset"].as_string() == key),
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(q))


def get_dataset(
    session: Session,
    dataset_id: str | uuid.UUID,
    *,
    tenant_id: str | None = None,
    lock: Literal["share", "update"] | None = None,
) -> Dataset:
    """The dataset, or DatasetNotFound (also for malformed ids and another tenant's dataset); `lock` takes a
    row lock until commit (PostgreSQL; SQLite serializes writers anyway)."""
    try:
        key = dataset_id if isinstance(dataset_id, uuid.UUID) else uuid.UUID(str(dataset_id))
    except ValueError:
        raise DatasetNotFound(f"dataset {dataset_id!r} does not exist (dataset ids are UUIDs)") from None
    if lock is None:
        ds = session.get(Dataset, key)
    else:
        q = select(Dataset).where(Dataset.id == key).with_for_update(read=lock == "share")
        ds = session.scalars(q.execution_options(populate_existing=True)).first()
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
    """Items lo..hi-1 straight from the blob store, by range reads of only their bytes (never the whole dataset)."""
    store, prefix = make_store(settings), dataset_prefix(ds_id)
    if layout == "array":
        return _array_items(store, prefix, lo, hi)
    if layout == "files":
        return _legacy_file_items(store, prefix, lo, hi)
    offsets = _offsets(store, prefix, lo, hi)
    if len(offsets) < 2:
        return []
    (i0, b0), (i1, b1) = offsets[0], offsets[-1]
    lines = store.get_range(f"{prefix}/index.jsonl", int(i0), int(i1 - i0)).split(b"\n")
    blob = store.get_range(f"{prefix}/items.bin", int(b0), int(b1 - b0))
    items = []
    for i, line in enumerate(lines[: len(offsets) - 1]):
        row = json.loads(line)
        data = blob[int(offsets[i][1] - b0) : int(offsets[i + 1][1] - b0)]
        items.append(StoredItem(lo + i, str(row["id"]), row.get("label"), data=data))
    return items


DIGIT_SHAPE = (28, 28)  # an array dataset of these is scored as one block per chunk (no per-item preprocessing)


def chunk_size_for(settings: Settings, ds: Dataset) -> int:
    """Items per scoring task of a dataset: INFERQ_ARRAY_CHUNK_SIZE for an array of 28x28 digits, whose chunks are
    scaled and scored as one block (a chunk's fixed cost, its transaction, message and events, is then a large
    share of its work), else INFERQ_CHUNK_SIZE (pictures, decoded and preprocessed one by one)."""
    if ds.layout != "array":
        return settings.chunk_size
    try:
        shape = _npy_header(make_store(settings), f"{dataset_prefix(ds.id)}/images.npy").shape
    except FileNotFoundError:
        return settings.chunk_size
    return settings.array_chunk_size if tuple(shape[1:]) == DIGIT_SHAPE else settings.chunk_size


def iter_index(settings: Settings, ds_id: uuid.UUID, layout: str) -> Iterator[tuple[int, str, str | None]]:
    """(idx, custom_id, true label) of every item in order, streamed from the blob store."""
    store, prefix = make_store(settings), dataset_prefix(ds_id)
    if layout == "array":
        n = _npy_header(store, f"{prefix}/images.npy").shape[0]
        for lo in range(0, n, LABEL_BLOCK):
            labels = _array_labels(store, prefix, lo, min(n, lo + LABEL_BLOCK))
            for i, label in enumerate(labels):
                yield lo + i, str(lo + i), label
        return
    with store.open_read(f"{prefix}/index.jsonl") as fh:
        for idx, line in enumerate(fh):
            row = json.loads(line)
            yield idx, str(row["id"]), row.get("label")


def _offsets(store: BlobStore, prefix: str, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of offsets.bin: (index line offset, item bytes offset) of items lo..hi-1 and where hi starts."""
    size = OFFSET_PAIR.size
    raw = store.get_range(f"{prefix}/offsets.bin", lo * size, (hi - lo + 1) * size) if hi > lo else b""
    return np.frombuffer(raw[: len(raw) - len(raw) % size], dtype="<i8").reshape(-1, 2)


@dataclass(frozen=True)
class _NpyHeader:
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


_HEADERS: dict[tuple[str, str], _NpyHeader | None] = {}  # a stored dataset never changes: read each header once
_HEADERS_MAX = 256
_HEADERS_LOCK = threading.Lock()


def _npy_header(store: BlobStore, key: str) -> _NpyHeader:
    """Where a stored .npy array's data starts, its shape and dtype (FileNotFoundError if it is absent)."""
    header = _npy_header_or_none(store, key)
    if header is None:
        raise FileNotFoundError(key)
    return header


def _npy_header_or_none(store: BlobStore, key: str) -> _NpyHeader | None:
    """The header of a stored .npy array, or None if there is none (one small range read, then cached)."""
    with _HEADERS_LOCK:
        if (store.url, key) in _HEADERS:
            return _HEADERS[(store.url, key)]
    try:
        fp = io.BytesIO(store.get_range(key, 0, NPY_HEAD_BYTES))
    except FileNotFoundError:
        header = None
    else:
        try:
            version = np.lib.format.read_magic(fp)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fp)
        except ValueError as exc:
            raise InvalidDataset(f"the stored array {key} is unreadable ({exc})") from exc
        header = _NpyHeader(fp.tell(), tuple(int(d) for d in shape), np.dtype(dtype))
    with _HEADERS_LOCK:
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.pop(next(iter(_HEADERS)))
        _HEADERS[(store.url, key)] = header
    return header


def _npy_rows(store: BlobStore, key: str, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 of a stored C-ordered .npy array, by one range read."""
    h = _npy_header(store, key)
    hi = min(hi, h.shape[0])
    row_bytes = int(np.prod(h.shape[1:], dtype=np.int64)) * h.dtype.itemsize
    raw = store.get_range(key, h.offset + lo * row_bytes, max(hi - lo, 0) * row_bytes)
    return np.frombuffer(bytearray(raw), dtype=h.dtype).reshape(-1, *h.shape[1:])


class ArrayItems(list[StoredItem]):
    """The items of an array chunk, with the block of their pixels they are views of (`block[i]` is item i's): a
    chunk of 28x28 digits is scaled straight from it, without stacking the items again."""

    def __init__(self, items: list[StoredItem], block: np.ndarray) -> None:
        super().__init__(items)
        self.block = block


def _array_items(store: BlobStore, prefix: str, lo: int, hi: int) -> ArrayItems:
    block = _npy_rows(store, f"{prefix}/images.npy", lo, hi)
    labels = _array_labels(store, prefix, lo, lo + len(block))
    return ArrayItems([StoredItem(lo + i, str(lo + i), labels[i], pixels=block[i]) for i in range(len(block))], block)


def _array_labels(store: BlobStore, prefix: str, lo: int, hi: int) -> list[str | None]:
    key = f"{prefix}/labels.npy"
    if _npy_header_or_none(store, key) is None:
        return [None] * (hi - lo)
    return [str(v) for v in _npy_rows(store, key, lo, hi)]


def _legacy_file_items(store: BlobStore, prefix: str, lo: int, hi: int) -> list[StoredItem]:
    """The layout of datasets stored before the packed form: one blob per item, index lines read in order."""
    items = []
    with store.open_read(f"{prefix}/index.jsonl") as fh:
        for i, line in enumerate(islice(fh, lo, hi)):
            row, key = json.loads(line), f"{prefix}/items/{lo + i:07d}"
            data = store.get(key) if store.exists(key) else None
            items.append(StoredItem(lo + i, str(row["id"]), row.get("label"), data=data))
    return items
