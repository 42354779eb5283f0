"""Data builders shared by every test: images, settings, model versions and jobs."""

from __future__ import annotations

import base64
import functools
import io
import os
import shutil
import sqlite3
import struct
import tempfile
import uuid
import zlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.config.errors import PROBLEM_BASE
from shared.config.settings import Settings
from shared.db.engine import upgrade_database
from shared.db.models import Job, JobItem, ModelVersion
from shared.inputs.storage import BlobStore
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import register_version

if TYPE_CHECKING:  # the API modules are imported by the API tests themselves
    from flask import Flask
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

    from api.deps import Services

# A loopback port nothing listens on: no test may reach a real broker by accident.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


# --- images ----------------------------------------------------------------------------------------------


def png_bytes(digit_like: bool = True, size: tuple[int, int] = (64, 64), mode: str = "L") -> bytes:
    """A small valid PNG: a dark '1'-like stroke on white paper (or plain mid-grey when digit_like=False)."""
    img = Image.new(mode, size, color=255 if digit_like else 128)
    if digit_like:
        w, h = size
        ImageDraw.Draw(img).line([(w // 2, h // 6), (w // 2, h - h // 6)], fill=0, width=max(2, w // 10))
    return encode(img, "PNG")


def noise_png(size: tuple[int, int] = (100, 100)) -> bytes:
    """A valid PNG of random grey noise, which barely compresses (about width*height bytes)."""
    return encode(Image.frombytes("L", size, os.urandom(size[0] * size[1])), "PNG")


def encode(img: Image.Image, fmt: str) -> bytes:
    """The image encoded in `fmt` (PNG, JPEG, TIFF, ...)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def tiff_bytes(size: tuple[int, int] = (32, 32)) -> bytes:
    """A valid TIFF (a format Pillow reads but inferq refuses)."""
    return encode(Image.new("L", size, color=200), "TIFF")


def truncated_png() -> bytes:
    """A PNG cut off in the middle of its image data."""
    data = png_bytes(size=(64, 64))
    return data[: len(data) // 2]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def b64(data: bytes) -> str:
    """Base64 text of `data`, as the JSON API expects."""
    return base64.b64encode(data).decode()


# --- settings --------------------------------------------------------------------------------------------


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: everything under tmp_path, SQLite, an unreachable broker, no .env file."""
    values: dict[str, Any] = {"data_dir": tmp_path, "redis_url": DEAD_REDIS_URL}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def migrate(settings: Settings) -> None:
    """upgrade_database(settings); a new SQLite file is a copy of one this process migrated once (about 0.1 s of
    Alembic saved per test). test_migrations.py runs the migrations themselves."""
    url = settings.resolved_database_url
    target = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if target is None or target.exists():
        upgrade_database(settings)
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_sqlite(), target)


@functools.cache
def _migrated_sqlite() -> Path:
    """A SQLite database at the newest migration, checkpointed into its one file."""
    folder = Path(tempfile.mkdtemp(prefix="inferq-migrated-"))
    settings = make_settings(folder)
    upgrade_database(settings)
    path = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    return path


# --- registry --------------------------------------------------------------------------------------------


def add_model_version(
    session: Session, name: str = "mnist-cnn", aliases: tuple[str, ...] = ("production",), **fields: Any
) -> ModelVersion:
    """Register the next version of `name` (a keras artifact that need not exist) and flush it."""
    values: dict[str, Any] = {
        "format": "keras",
        "artifact_uri": f"models/{name}/{uuid.uuid4().hex}.keras",
        "size_bytes": 1234,
        "metrics": {"accuracy": 0.99},
    }
    values.update(fields)
    return register_version(session, name=name, aliases=aliases, **values)


# --- jobs ------------------------------------------------------------------------------------------------


def make_job(
    session: Session,
    store: BlobStore,
    *,
    n_images: int = 2,
    images: Sequence[bytes] | None = None,
    model_ref: str = "mnist-cnn@production",
    top_k: int = 3,
    tenant_id: str = "default",
    created_at: datetime | None = None,
    **fields: Any,
) -> Job:
    """A classify job with its items and stored inputs, flushed; extra keyword arguments set job columns."""
    data = list(images) if images is not None else [png_bytes() for _ in range(n_images)]
    uploads = [jobstore.Upload(filename=f"img{i}.png", data=d) for i, d in enumerate(data)]
    job = jobstore.create_classify_job(
        session=session, store=store, uploads=uploads, model_ref=model_ref, top_k=top_k, tenant_id=tenant_id
    )
    if created_at is not None:
        fields["created_at"] = created_at
    if fields:
        session.execute(
            update(Job).where(Job.id == job.id).values(**fields).execution_options(synchronize_session=False)
        )
        session.flush()
        session.refresh(job)
    return job


# --- API test helpers (no api import at runtime) ----------------------------------------------------------


class SentTasks:
    """Stands in for the Celery app: records every send_task instead of talking to Redis."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any] | None, dict[str, Any]]] = []

    def send_task(self, name: str, args: list[Any] | None = None, **kw: Any) -> None:
        self.sent.append((name, args, kw))


class BrokerDown:
    """A Celery stand-in whose every publish fails the way an unreachable Redis does."""

    def __init__(self) -> None:
        self.calls = 0

    def send_task(self, name: str, args: list[Any] | None = None, **kw: Any) -> None:
        self.calls += 1
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


def services_of(app: Flask) -> Services:
    """The app's Services object (settings, sessions, store, celery)."""
    svc: Services = app.extensions["inferq"]
    return svc


def settings_of(app: Flask) -> Settings:
    """The Settings the app was built with."""
    return services_of(app).settings


def db_session(app: Flask) -> Session:
    """A fresh session on the app's database, for checking what a request wrote."""
    return services_of(app).sessions()


def post_files(client: FlaskClient, images: list[bytes], names: list[str] | None = None, **form: str) -> TestResponse:
    """POST /v1/jobs as multipart/form-data with one 'images' part per image, plus form fields."""
    names = names or [f"img{i}.png" for i in range(len(images))]
    files = [(io.BytesIO(b), n) for b, n in zip(images, names, strict=True)]
    data: dict[str, Any] = {"images": files, **form}
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def row_counts(app: Flask) -> tuple[int, int]:
    """(jobs, job items) in the database."""
    with db_session(app) as s:
        return (
            s.scalar(select(func.count()).select_from(Job)) or 0,
            s.scalar(select(func.count()).select_from(JobItem)) or 0,
        )


def blob_files(app: Flask) -> list[Path]:
    """Every file under the blob directory (temp files included)."""
    root = settings_of(app).blob_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_problem(resp: TestResponse, status: int, slug: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and stable type; returns its body."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json(force=True)
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


def assert_nothing_written(app: Flask) -> None:
    """No job row, no item row, no blob file and no task message."""
    assert row_counts(app) == (0, 0)
    assert blob_files(app) == []
    assert services_of(app).celery.sent == []  # type: ignore[attr-defined]
