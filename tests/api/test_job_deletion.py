"""DELETE /v1/jobs/{id}: a finished job goes with its stored inputs, results and deliveries; unfinished is 409."""

from __future__ import annotations

import io
import uuid

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from shared.config.status import JobStatus
from shared.db.engine import session_scope
from shared.db.models import Job, JobItem
from shared.db.webhook_models import WebhookDelivery
from shared.jobs import lifecycle as jobstore
from tests.factories import assert_problem, blob_files, db_session, png_bytes, post_files, services_of

HOOK = "https://hooks.example.com/inferq"


@pytest.fixture(autouse=True)
def inputs_as_blobs(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests follow stored input blobs: every input goes to the blob store (none inline in its row)."""
    monkeypatch.setattr(services_of(app).settings, "inline_input_max_bytes", 0)


def _move(app: Flask, job_id: str, *statuses: JobStatus) -> None:
    with session_scope(services_of(app).sessions) as s:
        for status in statuses:
            assert jobstore.set_status(s, uuid.UUID(job_id), status)


def _rows(app: Flask, job_id: str) -> tuple[int, int, int]:
    """(job rows, item rows, webhook deliveries) of one job."""
    jid = uuid.UUID(job_id)
    with db_session(app) as s:
        return (
            s.scalar(select(func.count()).select_from(Job).where(Job.id == jid)) or 0,
            s.scalar(select(func.count()).select_from(JobItem).where(JobItem.job_id == jid)) or 0,
            s.scalar(select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.job_id == jid)) or 0,
        )


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_deleting_a_finished_job_removes_its_inputs_results_and_deliveries(
    app: Flask, client: FlaskClient, final: JobStatus
) -> None:
    """204; the job, its items, its webhook deliveries and its stored images are gone; it is a 404 after."""
    keep = post_files(client, [png_bytes()]).get_json()["id"]
    job_id = post_files(client, [png_bytes(), png_bytes()], webhook=HOOK).get_json()["id"]
    _move(app, job_id, JobStatus.RUNNING, final)
    assert _rows(app, job_id)[2] >= 1 and len(blob_files(app)) == 3
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert _rows(app, job_id) == (0, 0, 0)
    assert [p.parent.name for p in blob_files(app)] == [keep]  # only the other job's input is left
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/results"):
        assert_problem(client.get(path), 404, "job-not-found")
    assert_problem(client.delete(f"/v1/jobs/{job_id}"), 404, "job-not-found")
    assert client.get(f"/v1/jobs/{keep}").status_code == 200


def test_a_canceled_job_can_be_deleted(client: FlaskClient) -> None:
    """Cancel, then delete: the documented way to delete a job that has not finished."""
    job_id = post_files(client, [png_bytes()]).get_json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204


def test_an_unfinished_job_is_409_and_untouched(app: Flask, client: FlaskClient) -> None:
    """A queued or running job answers 409 job-not-finished and keeps its rows and inputs."""
    queued = post_files(client, [png_bytes()]).get_json()["id"]
    running = post_files(client, [png_bytes()]).get_json()["id"]
    _move(app, running, JobStatus.RUNNING)
    for job_id in (queued, running):
        body = assert_problem(client.delete(f"/v1/jobs/{job_id}"), 409, "job-not-finished")
        assert "cancel" in body["detail"]
        assert _rows(app, job_id)[:2] == (1, 1)
    assert len(blob_files(app)) == 2


def test_deleting_a_model_upload_job_removes_the_uploaded_file(app: Flask, client: FlaskClient) -> None:
    """An import job's uploaded model bytes (model-uploads/<job>/) go with the job."""
    resp = client.post(
        "/v1/models/mine/uploads",
        data={"file": (io.BytesIO(b"model bytes"), "m.keras"), "labels": '["a", "b"]'},
        content_type="multipart/form-data",
    )
    job_id = resp.get_json()["id"]
    assert [p.parent.name for p in blob_files(app)] == [job_id]
    _move(app, job_id, JobStatus.RUNNING, JobStatus.FAILED)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert blob_files(app) == []
