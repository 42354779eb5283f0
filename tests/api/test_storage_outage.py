"""A blob store that cannot be reached: the API answers 503 storage-unavailable with Retry-After and keeps nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flask import Flask
from sqlalchemy import func, select

from shared.db.models import Dataset, Job, JobItem
from shared.runtime.embedded import free_port
from tests.api.conftest import AppFactory
from tests.factories import assert_problem, db_session, png_bytes, post_files


@pytest.fixture
def app_without_storage(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """Inputs go to s3://inferq-test on a port where nothing listens (every input a blob: inline storage off)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries only make the test slower
    return make_app(
        storage_url="s3://inferq-test/blobs",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_region="us-east-1",
        inline_input_max_bytes=0,
        storage_retry_after_s=7,
    )


def rows(app: Flask, table: type) -> int:
    with db_session(app) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_a_classify_job_is_refused_with_retry_after_and_nothing_written(app_without_storage: Flask) -> None:
    jobs_before = rows(app_without_storage, Job)
    resp = post_files(app_without_storage.test_client(), [png_bytes()])
    assert_problem(resp, 503, "storage-unavailable")
    assert resp.headers["Retry-After"] == "7"
    assert "send the request again" in resp.get_json()["detail"]
    assert rows(app_without_storage, Job) == jobs_before
    assert rows(app_without_storage, JobItem) == 0


def test_a_dataset_upload_is_refused_with_retry_after_and_nothing_written(app_without_storage: Flask) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 28, 28), np.uint8))
    resp = app_without_storage.test_client().post(
        "/v1/datasets?filename=d.npy", data=buf.getvalue(), content_type="application/octet-stream"
    )
    assert_problem(resp, 503, "storage-unavailable")
    assert resp.headers["Retry-After"] == "7"
    assert rows(app_without_storage, Dataset) == 0
