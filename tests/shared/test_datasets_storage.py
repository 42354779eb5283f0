"""Datasets in the blob store, local and S3 (moto's server): the packed form, chunk reads by range, deletion."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.config.errors import DatasetInUse, DatasetNotFound, UnsafeArchive
from shared.config.settings import Settings
from shared.config.status import JobKind, JobStatus
from shared.db.engine import make_engine, make_sessionmaker, upgrade_database
from shared.db.models import Dataset, Job
from shared.inputs import datasets as datastore
from shared.inputs.datasets import dataset_prefix, delete_dataset, ingest, iter_index, read_items, remove_files
from shared.inputs.storage import BlobStore, make_store
from tests.dataset_factories import class_folder_entries, digits, jsonl_bytes, npy_bytes, npz_bytes, zip_bytes
from tests.factories import png_bytes
from tests.s3_server import MotoS3


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    """One moto S3 server for this module."""
    with MotoS3() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The unit-test settings with local storage, or with storage in a fresh bucket of the moto server."""
    if request.param == "local":
        return settings
    server: MotoS3 = request.getfixturevalue("moto")
    return server.settings(settings, server.new_bucket())


def stored_keys(settings: Settings, ds_id: uuid.UUID) -> list[str]:
    """The names of a dataset's stored blobs (the same on either store)."""
    names = ["items.bin", "index.jsonl", "offsets.bin", "images.npy", "labels.npy"]
    store = make_store(settings)
    return sorted(n for n in names if store.exists(f"{dataset_prefix(ds_id)}/{n}"))


def put(session: Session, settings: Settings, name: str, data: bytes) -> Dataset:
    src = settings.data_dir / f"upload-{uuid.uuid4().hex}"
    src.write_bytes(data)
    ds = ingest(session=session, settings=settings, src=src, filename=name)
    session.commit()
    return ds


class CountingStore:
    """Wraps a store and counts the bytes read; a chunk read may not stream a whole file."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner, self.url, self.bytes_read, self.requests = inner, inner.url, 0, 0

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        self.bytes_read, self.requests = self.bytes_read + len(data), self.requests + 1
        return data

    def get(self, key: str) -> bytes:
        raise AssertionError(f"a chunk read fetched the whole blob {key}")

    def open_read(self, key: str) -> IO[bytes]:
        raise AssertionError(f"a chunk read streamed the whole blob {key}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_archive_is_packed_and_read_by_chunk(session: Session, where: Settings) -> None:
    """A zip of class folders is stored as items.bin + index.jsonl + offsets.bin; a chunk gets its own items."""
    entries = [(f"{label}/{i:02d}.png", png_bytes(size=(20 + i, 20))) for label in "17" for i in range(5)]
    ds = put(session, where, "d.zip", zip_bytes(entries))
    assert (ds.layout, ds.item_count) == ("packed", 10)
    assert stored_keys(where, ds.id) == ["index.jsonl", "items.bin", "offsets.bin"]
    items = read_items(where, ds.id, ds.layout, 3, 7)
    assert [(i.idx, i.custom_id, i.label) for i in items] == [
        (3, "1/03.png", "1"),
        (4, "1/04.png", "1"),
        (5, "7/00.png", "7"),
        (6, "7/01.png", "7"),
    ]
    assert [i.data for i in items] == [data for _, data in entries[3:7]]
    assert [lbl for _, _, lbl in iter_index(where, ds.id, ds.layout)] == ["1"] * 5 + ["7"] * 5


def test_array_is_read_by_chunk(session: Session, where: Settings) -> None:
    """An npz with labels is stored as images.npy + labels.npy; a chunk's pixels and labels are its own."""
    x, y = digits(300)
    ds = put(session, where, "d.npz", npz_bytes(x=x, y=y))
    assert stored_keys(where, ds.id) == ["images.npy", "labels.npy"]
    items = read_items(where, ds.id, ds.layout, 250, 300)
    assert np.array_equal(np.stack([i.pixels for i in items if i.pixels is not None]), x[250:300])
    assert [i.label for i in items] == [str(v) for v in y[250:300]]
    assert [lbl for _, _, lbl in iter_index(where, ds.id, ds.layout)] == [str(v) for v in y]


def test_manifest_is_read_by_chunk(session: Session, where: Settings) -> None:
    """A JSONL manifest keeps each line's custom_id, label and bytes, including an undecodable one."""
    ds = put(session, where, "m.jsonl", jsonl_bytes([png_bytes(), b"junk", png_bytes()], ["3", None, "5"]))
    items = read_items(where, ds.id, ds.layout, 1, 3)
    assert [(i.custom_id, i.label, i.data) for i in items] == [("img-1", None, b"junk"), ("img-2", "5", png_bytes())]


@pytest.mark.parametrize("fmt", ["zip", "npy"])
def test_a_chunk_reads_only_its_own_bytes(
    session: Session, where: Settings, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Reading 10 items of 1,000 fetches a few range reads of about their size, never a whole blob."""
    x, _ = digits(1000)
    if fmt == "zip":
        data = zip_bytes([(f"{i % 10}/{i:04d}.png", png_bytes(size=(28, 28))) for i in range(1000)])
    else:
        buf = io.BytesIO()
        np.save(buf, x)
        data = buf.getvalue()
    ds = put(session, where, f"d.{fmt}", data)
    counting = CountingStore(make_store(where))
    monkeypatch.setattr(datastore, "make_store", lambda _settings: counting)
    items = read_items(where, ds.id, ds.layout, 500, 510)
    assert [i.idx for i in items] == list(range(500, 510))
    per_item = ds.stored_bytes / ds.item_count
    assert counting.requests <= 4 and counting.bytes_read < 10 * per_item + 8192
    assert counting.bytes_read < ds.stored_bytes / 20


def test_refused_upload_leaves_no_object(session: Session, moto: MotoS3, settings: Settings) -> None:
    """An archive refused while it is read leaves no object in the bucket, no row and no staging files."""
    bucket = moto.new_bucket()
    with pytest.raises(UnsafeArchive):
        put(session, moto.settings(settings, bucket), "bad.zip", zip_bytes([*class_folder_entries(3), ("../x", b"x")]))
    assert moto.keys(bucket) == []
    assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    staging = settings.data_dir / "tmp"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_storage_failure_mid_upload_leaves_no_object(
    session: Session, moto: MotoS3, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the store fails after the first file reached the bucket, that object is removed again and no row stays."""
    bucket = moto.new_bucket()
    s3 = moto.settings(settings, bucket)
    real = make_store(s3)
    moved: list[str] = []

    class Failing(CountingStore):
        def move_in(self, key: str, path: Path) -> None:
            if moved:
                raise OSError("connection reset by the store")
            real.move_in(key, path)
            moved.append(key)

    monkeypatch.setattr(datastore, "make_store", lambda _settings: Failing(real))
    x, y = digits(5)
    with pytest.raises(OSError, match="connection reset"):
        put(session, s3, "d.npz", npz_bytes(x=x, y=y))
    assert len(moved) == 1 and moto.keys(bucket) == []
    assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_s3_objects_live_under_the_prefix(session: Session, moto: MotoS3, settings: Settings) -> None:
    """With S3 storage every object of a dataset is under <prefix>/datasets/<id>/ and nothing is on local disk."""
    bucket = moto.new_bucket()
    s3 = moto.settings(settings, bucket, "team-a")
    ds = put(session, s3, "d.npz", npz_bytes(x=digits(5)[0], y=digits(5)[1]))
    assert moto.keys(bucket) == [f"team-a/datasets/{ds.id}/images.npy", f"team-a/datasets/{ds.id}/labels.npy"]
    assert not settings.blob_dir.exists()


def test_legacy_file_layout_is_still_read(session: Session, where: Settings) -> None:
    """A dataset stored before the packed form (items/NNNNNNN + index.jsonl) still reads by chunk."""
    ds_id, store = uuid.uuid4(), make_store(where)
    prefix = dataset_prefix(ds_id)
    index = b"".join(json.dumps({"id": f"f{i}.png", "label": str(i % 2)}).encode() + b"\n" for i in range(4))
    store.put(f"{prefix}/index.jsonl", index)
    for i in range(4):
        store.put(f"{prefix}/items/{i:07d}", b"bytes-%d" % i)
    items = read_items(where, ds_id, "files", 1, 3)
    assert [(i.idx, i.custom_id, i.label, i.data) for i in items] == [
        (1, "f1.png", "1", b"bytes-1"),
        (2, "f2.png", "0", b"bytes-2"),
    ]
    assert [cid for _, cid, _ in iter_index(where, ds_id, "files")] == [f"f{i}.png" for i in range(4)]


def _job(session: Session, ds: Dataset, status: JobStatus, kind: JobKind = JobKind.SCORE) -> Job:
    params = {"dataset_id": str(ds.id)} if kind == JobKind.SCORE else {"dataset": str(ds.id)}
    job = Job(kind=kind.value, status=status.value, model_ref="mnist-cnn", params=params, total_items=1)
    session.add(job)
    session.commit()
    return job


def test_delete_removes_row_and_objects(session: Session, where: Settings) -> None:
    """Deleting a dataset whose jobs have all finished removes its row and every stored object."""
    ds = put(session, where, "d.zip", zip_bytes(class_folder_entries(2)))
    _job(session, ds, JobStatus.SUCCEEDED)
    _job(session, ds, JobStatus.CANCELED)
    delete_dataset(session=session, dataset_id=ds.id, tenant_id="default")
    session.commit()
    remove_files(where, ds.id)
    assert session.get(Dataset, ds.id) is None and stored_keys(where, ds.id) == []
    with pytest.raises(DatasetNotFound):
        delete_dataset(session=session, dataset_id=ds.id, tenant_id="default")


@pytest.mark.parametrize(
    ("status", "kind"),
    [(JobStatus.QUEUED, JobKind.SCORE), (JobStatus.RUNNING, JobKind.SCORE), (JobStatus.RUNNING, JobKind.TRAIN)],
)
def test_delete_refused_while_a_job_reads_it(
    session: Session, settings: Settings, status: JobStatus, kind: JobKind
) -> None:
    """A queued or running score (or training) job on the dataset makes deletion a DatasetInUse naming it."""
    ds = put(session, settings, "d.npy", npy_bytes(digits(3)[0]))
    other = put(session, settings, "e.npy", npy_bytes(digits(3)[0]))
    job = _job(session, ds, status, kind)
    _job(session, other, JobStatus.RUNNING)
    with pytest.raises(DatasetInUse) as info:
        delete_dataset(session=session, dataset_id=ds.id, tenant_id="default")
    assert info.value.extra["jobs"] == [str(job.id)]
    session.rollback()
    assert session.get(Dataset, ds.id) is not None and stored_keys(settings, ds.id) == ["images.npy"]


def test_delete_is_scoped_to_the_tenant(session: Session, settings: Settings) -> None:
    """Another tenant's dataset cannot be deleted: it is a DatasetNotFound, and stays."""
    ds = put(session, settings, "d.zip", zip_bytes(class_folder_entries(1)))
    with pytest.raises(DatasetNotFound):
        delete_dataset(session=session, dataset_id=ds.id, tenant_id="someone-else")
    assert session.get(Dataset, ds.id) is not None


def test_delete_refusal_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL too, the JSON parameter match finds the running job that reads the dataset."""
    from tests.factories import make_settings

    settings = make_settings(tmp_path, database_url=pg_url)
    upgrade_database(settings)
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            ds = put(session, settings, "d.zip", zip_bytes(class_folder_entries(1)))
            _job(session, ds, JobStatus.RUNNING)
            with pytest.raises(DatasetInUse):
                delete_dataset(session=session, dataset_id=ds.id, tenant_id="default")
            session.rollback()
            _job(session, ds, JobStatus.SUCCEEDED)
            session.execute(Job.__table__.update().values(status=JobStatus.SUCCEEDED.value))
            session.commit()
            delete_dataset(session=session, dataset_id=ds.id, tenant_id="default")
            session.commit()
            assert session.get(Dataset, ds.id) is None
    finally:
        engine.dispose()


def test_delete_waits_for_a_score_job_being_created(tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL a delete blocks on the share lock a score-job creation holds until it commits, then sees that
    job and is refused: a dataset cannot vanish between the job's dataset check and its insert."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from shared.inputs.datasets import get_dataset
    from tests.factories import make_settings

    settings = make_settings(tmp_path, database_url=pg_url)
    upgrade_database(settings)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as setup:
            ds_id = put(setup, settings, "d.zip", zip_bytes(class_folder_entries(1))).id
        with sessions() as creating, sessions() as deleting:
            ds = get_dataset(creating, ds_id, tenant_id="default", lock="share")  # as create_score_job does
            deleting.execute(text("SET lock_timeout = '300ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                delete_dataset(session=deleting, dataset_id=ds_id, tenant_id="default")
            deleting.rollback()
            _job(creating, ds, JobStatus.QUEUED)  # commits, releasing the share lock
            deleting.execute(text("SET lock_timeout = '300ms'"))
            with pytest.raises(DatasetInUse):
                delete_dataset(session=deleting, dataset_id=ds_id, tenant_id="default")
    finally:
        engine.dispose()
