"""/v1/jobs: submitting, refusing bad input without side effects, polling, paging and canceling."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select
from werkzeug.test import TestResponse

from shared.db.models import Job, JobItem, ModelVersion, utcnow
from shared.jobs import leases
from shared.jobs import lifecycle as jobstore
from shared.jobs.lifecycle import ItemResult
from tests.factories import (
    BrokerDown,
    SentTasks,
    assert_nothing_written,
    assert_problem,
    b64,
    blob_files,
    db_session,
    encode,
    make_job,
    noise_png,
    png_bytes,
    png_header_only,
    post_files,
    row_counts,
    services_of,
    tiff_bytes,
    truncated_png,
)

AppFactory = Callable[..., Flask]


def post_json(client: FlaskClient, images: list[bytes], **fields: Any) -> TestResponse:
    body = {"images": [{"data": b64(d), "filename": f"img{i}.png"} for i, d in enumerate(images)], **fields}
    return client.post("/v1/jobs", json=body)


def assert_accepted(app: Flask, resp: TestResponse, images: list[bytes]) -> dict[str, Any]:
    """202 with Location; one message carrying only the job id; job, items and blobs stored."""
    assert resp.status_code == 202, resp.get_data(as_text=True)
    body = resp.get_json()
    job_id = body["id"]
    assert resp.headers["Location"] == f"/v1/jobs/{job_id}"
    assert body["status"] == "queued" and body["kind"] == "classify"
    assert body["counts"] == {"total": len(images), "completed": 0, "failed": 0, "expired": 0}
    assert body["predictions"] is None
    assert body["links"]["self"] == f"/v1/jobs/{job_id}"

    sent = services_of(app).celery.sent  # type: ignore[attr-defined]
    assert sent == [("inferq.classify", [job_id], {"queue": "interactive"})]  # a normal job: the lane's plain queue
    assert len(json.dumps(sent)) < 200  # a reference, never image bytes

    with db_session(app) as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None and job.status == "queued" and job.total_items == len(images)
        assert job.dispatched_at is not None
        items = list(s.scalars(select(JobItem).where(JobItem.job_id == job.id).order_by(JobItem.idx)))
        assert [i.idx for i in items] == list(range(len(images)))
        store = services_of(app).store
        assert [i.input_data if i.input_key is None else store.get(i.input_key) for i in items] == images
        blobs = sum(i.input_key is not None for i in items)  # small inputs live in their row (inline)
    assert row_counts(app) == (1, len(images))
    assert len(blob_files(app)) == blobs
    return body  # type: ignore[no-any-return]


# --- accepted submissions ---------------------------------------------------------------------------------


def test_multipart_two_pngs(app: Flask, client: FlaskClient) -> None:
    """Two PNG files as multipart give 202, a queued job of 2 items, 2 blobs and one id-only message."""
    images = [png_bytes(), png_bytes(size=(40, 56))]
    body = assert_accepted(app, post_files(client, images), images)
    assert (body["model"], body["top_k"], body["attempts"]) == ("mnist-cnn", 3, 0)


def test_multipart_any_field_name_and_filenames(app: Flask, client: FlaskClient) -> None:
    """Files under any field name are taken, and their filenames are kept on the items."""
    data = {"file": (io.BytesIO(png_bytes()), "seven.png"), "other": (io.BytesIO(png_bytes()), "one.png")}
    resp = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert resp.status_code == 202
    with db_session(app) as s:
        assert sorted(s.scalars(select(JobItem.filename))) == ["one.png", "seven.png"]


def test_json_base64_two_pngs(app: Flask, client: FlaskClient) -> None:
    """Two base64 PNGs in a JSON body give the same 202 and stored job as multipart."""
    images = [png_bytes(), png_bytes(digit_like=False)]
    assert_accepted(app, post_json(client, images), images)


@pytest.mark.parametrize("ref", ["mnist-cnn:1", "mnist-cnn@production", "mnist-cnn", "MNIST-CNN@production"])
@pytest.mark.parametrize("form", ["json", "multipart"])
def test_model_reference_forms(app: Flask, client: FlaskClient, ref: str, form: str) -> None:
    """A job may name the model by version, alias or bare name; the job records the normalized reference."""
    images = [png_bytes()]
    resp = post_json(client, images, model=ref) if form == "json" else post_files(client, images, model=ref)
    assert assert_accepted(app, resp, images)["model"] == ref.lower()


@pytest.mark.parametrize("top_k", [1, 10])
@pytest.mark.parametrize("form", ["json", "multipart"])
def test_top_k_within_limits(app: Flask, client: FlaskClient, top_k: int, form: str) -> None:
    """top_k between 1 and max_top_k is accepted and stored."""
    images = [png_bytes()]
    resp = post_json(client, images, top_k=top_k) if form == "json" else post_files(client, images, top_k=str(top_k))
    assert assert_accepted(app, resp, images)["top_k"] == top_k


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "WEBP"])
def test_other_allowed_formats(app: Flask, client: FlaskClient, fmt: str) -> None:
    """JPEG, GIF, BMP and WebP images are accepted like PNG."""
    img = Image.open(io.BytesIO(png_bytes())).convert("RGB" if fmt == "JPEG" else "L")
    images = [encode(img, fmt)]
    assert_accepted(app, post_files(client, images), images)


# --- refused submissions: right problem, and nothing written ------------------------------------------------


Case = tuple[dict[str, Any], Callable[[FlaskClient], TestResponse], int, str]
PNG = png_bytes()
BOMB = png_header_only(50_000, 50_000)
INVALID, UNSUPPORTED, TOO_LARGE = "invalid-image", "unsupported-image-format", "payload-too-large"
NOT_VALID, NO_MODEL, BAD_REQUEST = "validation-error", "model-not-found", "bad-request"


def raw(c: FlaskClient, **kw: Any) -> TestResponse:
    return c.post("/v1/jobs", **kw)


BAD_INPUT: dict[str, Case] = {
    "text-bytes": ({}, lambda c: post_files(c, [b"hello, I am not an image"]), 422, INVALID),
    "empty-file": ({}, lambda c: post_files(c, [b""]), 422, INVALID),
    "truncated-png": ({}, lambda c: post_files(c, [truncated_png()]), 422, INVALID),
    "one-bad-of-two": ({}, lambda c: post_files(c, [PNG, b"garbage"]), 422, INVALID),
    "tiff": ({}, lambda c: post_files(c, [tiff_bytes()]), 415, UNSUPPORTED),
    "tiff-json": ({}, lambda c: post_json(c, [tiff_bytes()]), 415, UNSUPPORTED),
    "no-files": (
        {},
        lambda c: raw(c, data={"model": "mnist-cnn"}, content_type="multipart/form-data"),
        400,
        "no-images",
    ),
    "no-images-json": ({}, lambda c: raw(c, json={"images": []}), 400, "no-images"),
    "missing-images-json": ({}, lambda c: raw(c, json={"model": "mnist-cnn"}), 400, "no-images"),
    "too-many-files": ({"max_images_per_job": 2}, lambda c: post_files(c, [PNG] * 3), 413, "too-many-images"),
    "too-many-json": ({"max_images_per_job": 2}, lambda c: post_json(c, [PNG] * 3), 413, "too-many-images"),
    "image-over-max-bytes": ({"max_image_bytes": 4096}, lambda c: post_files(c, [PNG, noise_png()]), 413, TOO_LARGE),
    "image-over-max-bytes-json": ({"max_image_bytes": 4096}, lambda c: post_json(c, [noise_png()]), 413, TOO_LARGE),
    "body-over-max-request": (
        {"max_request_bytes": 16_000},
        lambda c: post_files(c, [noise_png(), noise_png()]),
        413,
        TOO_LARGE,
    ),
    "body-over-max-request-json": (
        {"max_request_bytes": 16_000},
        lambda c: post_json(c, [noise_png(), noise_png()]),
        413,
        TOO_LARGE,
    ),
    "decompression-bomb": ({}, lambda c: post_files(c, [BOMB]), 413, "image-too-large"),
    "decompression-bomb-json": ({}, lambda c: post_json(c, [BOMB]), 413, "image-too-large"),
    "over-max-pixels": (
        {"max_image_pixels": 1000},
        lambda c: post_files(c, [png_bytes(size=(64, 64))]),
        413,
        "image-too-large",
    ),
    "invalid-base64": ({}, lambda c: raw(c, json={"images": [{"data": "!!not base64!!"}]}), 422, NOT_VALID),
    "unknown-model": ({}, lambda c: post_json(c, [PNG], model="no-such-model"), 404, NO_MODEL),
    "unknown-model-multipart": ({}, lambda c: post_files(c, [PNG], model="no-such-model"), 404, NO_MODEL),
    "unknown-version": ({}, lambda c: post_json(c, [PNG], model="mnist-cnn:9"), 404, NO_MODEL),
    "unknown-alias": ({}, lambda c: post_json(c, [PNG], model="mnist-cnn@staging"), 404, NO_MODEL),
    "bad-model-ref": ({}, lambda c: post_json(c, [PNG], model="Not A Ref!"), 422, NOT_VALID),
    "bad-model-ref-multipart": ({}, lambda c: post_files(c, [PNG], model="a:b:c"), 422, NOT_VALID),
    "top-k-zero-json": ({}, lambda c: post_json(c, [PNG], top_k=0), 422, NOT_VALID),
    "top-k-over-max-json": ({}, lambda c: post_json(c, [PNG], top_k=11), 422, NOT_VALID),
    "top-k-over-max-multipart": ({}, lambda c: post_files(c, [PNG], top_k="11"), 422, NOT_VALID),
    "top-k-not-a-number": ({}, lambda c: post_files(c, [PNG], top_k="three"), 422, NOT_VALID),
    "unknown-json-field": ({}, lambda c: post_json(c, [PNG], priority="high"), 422, NOT_VALID),
    "text-plain": ({}, lambda c: raw(c, data="hello", content_type="text/plain"), 400, BAD_REQUEST),
    "no-content-type": ({}, lambda c: raw(c, data=b"\x89PNG"), 400, BAD_REQUEST),
    "json-array": ({}, lambda c: raw(c, json=[{"data": b64(PNG)}]), 400, BAD_REQUEST),
    "json-string": ({}, lambda c: raw(c, json="images"), 400, BAD_REQUEST),
    "malformed-json": ({}, lambda c: raw(c, data="{images:", content_type="application/json"), 400, BAD_REQUEST),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_without_side_effects(make_app: AppFactory, case: str) -> None:
    """Bad input gets the right problem+json and leaves no job, item, blob or message behind."""
    overrides, send, status, slug = BAD_INPUT[case]
    app = make_app(**overrides)
    body = assert_problem(send(app.test_client()), status, slug)
    assert body["instance"] == "/v1/jobs"
    assert_nothing_written(app)


def test_multipart_top_k_zero_is_refused(app: Flask, client: FlaskClient) -> None:
    """A multipart top_k of 0 is a 422, as it is in JSON."""
    assert_problem(post_files(client, [png_bytes()], top_k="0"), 422, "validation-error")
    assert_nothing_written(app)


def test_multipart_negative_top_k_is_refused(app: Flask, client: FlaskClient) -> None:
    """A multipart top_k below 1 is a 422, and no job is stored."""
    assert_problem(post_files(client, [png_bytes()], top_k="-1"), 422, "validation-error")
    assert_nothing_written(app)


def test_image_too_large_names_the_image(client: FlaskClient) -> None:
    """The problem for one bad image of several says which one (index and filename)."""
    resp = post_files(client, [png_bytes(), png_header_only(50_000, 50_000)], names=["ok.png", "bomb.png"])
    body = assert_problem(resp, 413, "image-too-large")
    assert body["index"] == 1 and "bomb.png" in body["detail"]


# --- Redis down -------------------------------------------------------------------------------------------


def test_broker_down_still_accepts_the_job(make_app: AppFactory) -> None:
    """When publishing fails the job is still accepted (202) and stays queued and undispatched."""
    broker = BrokerDown()
    app = make_app(celery=broker)
    resp = post_files(app.test_client(), [png_bytes(), png_bytes()])
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert broker.calls == 1
    with db_session(app) as s:
        job = s.get(Job, uuid.UUID(resp.get_json()["id"]))
        assert job is not None and job.status == "queued" and job.dispatched_at is None
    assert row_counts(app) == (1, 2) and blob_files(app) == []  # the small inputs are in their rows (inline)


def test_undispatched_job_is_found_by_the_reconciler(make_app: AppFactory) -> None:
    """A job whose publish failed shows up as stale once its lease has passed."""
    app = make_app(celery=BrokerDown())
    job_id = uuid.UUID(post_files(app.test_client(), [png_bytes()]).get_json()["id"])
    with services_of(app).sessions.begin() as s:
        s.get(Job, job_id).created_at = utcnow() - timedelta(minutes=5)  # type: ignore[union-attr]
    with db_session(app) as s:
        assert leases.stale_queued_jobs(s, lease_s=60) == [job_id]


# --- reading jobs -----------------------------------------------------------------------------------------


def _submit(client: FlaskClient, n: int = 2) -> str:
    resp = post_files(client, [png_bytes() for _ in range(n)])
    assert resp.status_code == 202
    return str(resp.get_json()["id"])


def test_get_job(client: FlaskClient) -> None:
    """GET /v1/jobs/{id} returns the job, without predictions while it is unfinished."""
    job_id = _submit(client)
    resp = client.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body = resp.get_json()
    assert (body["id"], body["status"], body["predictions"]) == (job_id, "queued", None)
    assert body["counts"] == {"total": 2, "completed": 0, "failed": 0, "expired": 0}
    assert body["links"] == {
        "self": f"/v1/jobs/{job_id}",
        "results": f"/v1/jobs/{job_id}/results",
        "cancel": f"/v1/jobs/{job_id}/cancel",
    }


@pytest.mark.parametrize("suffix", ["", "/results"])
@pytest.mark.parametrize("job_id", ["0b5c1b9e-3f0e-4b7a-9d57-6f1c2a8e4d10", "not-a-uuid", "1234"])
def test_unknown_or_malformed_job_is_404(client: FlaskClient, job_id: str, suffix: str) -> None:
    """An unknown or malformed job id answers 404 job-not-found."""
    assert_problem(client.get(f"/v1/jobs/{job_id}{suffix}"), 404, "job-not-found")


def test_cancel_unknown_job_is_404(client: FlaskClient) -> None:
    """Canceling a job that does not exist answers 404 job-not-found."""
    assert_problem(client.post(f"/v1/jobs/{uuid.uuid4()}/cancel"), 404, "job-not-found")


def _jobs_in_db(app: Flask, n: int) -> list[str]:
    """n jobs with distinct creation times, returned newest first."""
    base = utcnow() - timedelta(hours=1)
    with services_of(app).sessions.begin() as s:
        ids = [
            str(make_job(s, services_of(app).store, n_images=1, created_at=base + timedelta(seconds=i)).id)
            for i in range(n)
        ]
    return ids[::-1]


def test_list_jobs_cursor_pagination(app: Flask, client: FlaskClient) -> None:
    """GET /v1/jobs pages newest first; following next_cursor visits every job once and then stops."""
    expected = _jobs_in_db(app, 5)
    seen, url, pages = [], "/v1/jobs?limit=2", 0
    while url:
        resp = client.get(url)
        assert resp.status_code == 200
        body = resp.get_json()
        seen += [j["id"] for j in body["data"]]
        pages += 1
        url = f"/v1/jobs?limit=2&cursor={body['next_cursor']}" if body["next_cursor"] else ""
        assert pages <= 5
    assert (pages, seen) == (3, expected)


def test_list_jobs_status_filter(app: Flask, client: FlaskClient) -> None:
    """?status= keeps only jobs in that status."""
    ids = _jobs_in_db(app, 3)
    assert client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 200
    canceled = client.get("/v1/jobs?status=canceled").get_json()
    assert [j["id"] for j in canceled["data"]] == [ids[1]] and canceled["next_cursor"] is None
    queued = client.get("/v1/jobs?status=queued").get_json()
    assert [j["id"] for j in queued["data"]] == [ids[0], ids[2]]


@pytest.mark.parametrize(
    "query", ["status=bogus", "status=QUEUED", "cursor=not-a-cursor", "limit=0", "limit=501", "limit=ten"]
)
def test_list_jobs_invalid_query_is_422(client: FlaskClient, query: str) -> None:
    """An invalid status, cursor or limit answers 422 validation-error."""
    assert_problem(client.get(f"/v1/jobs?{query}"), 422, "validation-error")


def test_results_paging(app: Flask, client: FlaskClient) -> None:
    """GET /v1/jobs/{id}/results pages items in index order with after/limit and next_cursor."""
    job_id = _submit(client, n=5)
    pages = []
    after = -1
    while True:
        body = client.get(f"/v1/jobs/{job_id}/results?after={after}&limit=2").get_json()
        assert body["job_id"] == job_id and body["status"] == "queued"
        pages.append([p["index"] for p in body["data"]])
        if body["next_cursor"] is None:
            break
        after = int(body["next_cursor"])
    assert pages == [[0, 1], [2, 3], [4]]
    assert client.get(f"/v1/jobs/{job_id}/results").get_json()["data"][0] == {
        "index": 0,
        "filename": "img0.png",
        "status": "pending",
        "label": None,
        "confidence": None,
        "top_k": None,
        "warnings": [],
        "error": None,
        "model_version": None,
        "input_image": None,  # only with the option explain
        "explanation": None,
    }


@pytest.mark.parametrize("query", ["after=-2", "limit=0", "limit=501", "after=x"])
def test_results_invalid_query_is_422(client: FlaskClient, query: str) -> None:
    """Out-of-range after/limit answer 422."""
    job_id = _submit(client, n=1)
    assert_problem(client.get(f"/v1/jobs/{job_id}/results?{query}"), 422, "validation-error")


def test_cancel_then_cancel_again(app: Flask, client: FlaskClient, sent: SentTasks) -> None:
    """POST cancel answers 200 with the canceled job; a second cancel answers 409 job-not-cancelable."""
    job_id = _submit(client)
    first = client.post(f"/v1/jobs/{job_id}/cancel")
    assert first.status_code == 200
    assert first.get_json()["status"] == "canceled" and first.get_json()["finished_at"] is not None
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job-not-cancelable")
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "canceled"
    assert len(sent.sent) == 1  # canceling publishes nothing


def test_finished_job_shows_predictions(app: Flask, client: FlaskClient) -> None:
    """A finished job shows each prediction with label, confidence, top_k, warnings and the model version that ran."""
    job_id = uuid.UUID(_submit(client, n=2))
    top = [{"label": "7", "confidence": 0.93}, {"label": "1", "confidence": 0.05}]
    with services_of(app).sessions.begin() as s:
        mv = s.scalar(select(ModelVersion).filter_by(name="mnist-cnn", version=1))
        assert mv is not None
        assert jobstore.start_attempt(s, job_id, mv.id)
        items = jobstore.items_page(s, job_id, after=-1, limit=10)
        jobstore.write_results(
            s,
            [
                ItemResult(
                    item_id=items[0].id, label="7", confidence=0.93, top_k=top, warnings=["low-contrast"], batch_size=2
                ),
                ItemResult(item_id=items[1].id, error_type="invalid-image", error="could not decode"),
            ],
            mv.id,
        )
        assert jobstore.finish_if_done(s, job_id, progress_interval_s=0) is not None

    body = client.get(f"/v1/jobs/{job_id}").get_json()
    assert body["status"] == "succeeded" and body["model_version"] == "mnist-cnn:1"
    assert body["counts"] == {"total": 2, "completed": 1, "failed": 1, "expired": 0}
    assert body["attempts"] == 1 and body["started_at"] and body["finished_at"]
    ok, bad = body["predictions"]
    assert ok == {
        "index": 0,
        "filename": "img0.png",
        "status": "succeeded",
        "label": "7",
        "confidence": 0.93,
        "top_k": top,
        "warnings": ["low-contrast"],
        "error": None,
        "model_version": "mnist-cnn:1",
        "input_image": None,  # only with the option explain
        "explanation": None,
    }
    assert (bad["status"], bad["label"], bad["warnings"], bad["error"]) == (
        "failed",
        None,
        [],
        {"type": "invalid-image", "detail": "could not decode"},
    )
    results = client.get(f"/v1/jobs/{job_id}/results").get_json()
    assert results["status"] == "succeeded" and results["data"] == body["predictions"]
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job-not-cancelable")
