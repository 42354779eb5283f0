"""Queue caps and rate limits through the API: 429 problems with Retry-After, nothing written, per tenant and key."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from shared.db.models import Job
from tests.access import client_for, keyed_client_class
from tests.dataset_factories import digits, npy_bytes
from tests.factories import (
    assert_problem,
    blob_files,
    db_session,
    png_bytes,
    post_files,
    row_counts,
    services_of,
)

AppFactory = Callable[..., Flask]


def _jobs(app: Flask) -> int:
    with db_session(app) as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def _sent(app: Flask) -> int:
    return len(services_of(app).celery.sent)  # type: ignore[attr-defined]


# --- queue caps --------------------------------------------------------------------------------------------


def test_classify_past_the_job_cap_is_429_and_writes_nothing(make_app: AppFactory) -> None:
    """The third classify job of a tenant capped at two is a 429 queue-full problem with Retry-After; its inputs
    are removed and no message is sent. Another tenant still submits, and a cancel frees a place."""
    app = make_app(rate_limit_enabled=False, max_queued_jobs_per_tenant=2, queue_full_retry_after_s=17)
    client = app.test_client()
    first = [post_files(client, [png_bytes()]) for _ in range(2)]
    assert [r.status_code for r in first] == [202, 202]
    before = (row_counts(app), len(blob_files(app)), _sent(app))

    resp = post_files(client, [png_bytes(), png_bytes()])
    body = assert_problem(resp, 429, "queue-full")
    assert resp.headers["Retry-After"] == "17" and body["retry_after_s"] == 17
    assert body["limit_setting"] == "INFERQ_MAX_QUEUED_JOBS_PER_TENANT" and body["limit"] == 2
    assert (row_counts(app), len(blob_files(app)), _sent(app)) == before

    assert post_files(client_for(app, "acme"), [png_bytes()]).status_code == 202
    assert client.post(f"/v1/jobs/{first[0].get_json()['id']}/cancel").status_code == 200
    assert post_files(client, [png_bytes()]).status_code == 202


def test_score_job_past_the_item_cap_is_429(make_app: AppFactory) -> None:
    """A score job whose items would take the tenant past INFERQ_MAX_QUEUED_ITEMS_PER_TENANT is refused."""
    app = make_app(rate_limit_enabled=False, max_queued_items_per_tenant=30)
    client = app.test_client()
    data = npy_bytes(digits(20)[0])
    ds = client.post("/v1/datasets?filename=d.npy", data=data, content_type="application/octet-stream").get_json()
    assert client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}).status_code == 202
    sent = _sent(app)
    resp = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]})
    body = assert_problem(resp, 429, "queue-full")
    assert "40 unfinished items" in body["detail"] and "INFERQ_MAX_QUEUED_ITEMS_PER_TENANT" in body["detail"]
    assert (_jobs(app), _sent(app)) == (1, sent)


def test_dataset_larger_than_the_item_cap_is_413(make_app: AppFactory) -> None:
    """A score job that alone exceeds the item cap is a 413 (split it), never a 429 that would invite retries."""
    app = make_app(rate_limit_enabled=False, max_queued_items_per_tenant=10)
    client = app.test_client()
    data = npy_bytes(digits(20)[0])
    ds = client.post("/v1/datasets?filename=d.npy", data=data, content_type="application/octet-stream").get_json()
    assert_problem(client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}), 413, "payload-too-large")
    assert _jobs(app) == 0


def test_model_jobs_count_against_the_job_cap(make_app: AppFactory) -> None:
    """Trainings and model uploads are jobs too: past the cap they are 429 and the uploaded file is removed."""
    app = make_app(rate_limit_enabled=False, max_queued_jobs_per_tenant=1)
    client = app.test_client()
    assert client.post("/v1/models/mnist-cnn/trainings", json={"epochs": 1}).status_code == 202
    blobs = blob_files(app)
    assert_problem(client.post("/v1/models/mnist-cnn/trainings", json={"epochs": 1}), 429, "queue-full")
    upload = {"file": (io.BytesIO(b"PK-not-really"), "mine.keras"), "labels": '["a", "b"]'}
    resp = client.post("/v1/models/byom/uploads", data=upload, content_type="multipart/form-data")
    assert_problem(resp, 429, "queue-full")
    assert (_jobs(app), blob_files(app)) == (1, blobs)


# --- rate limits -----------------------------------------------------------------------------------------------


@pytest.fixture
def limited(make_app: AppFactory, redis_url: str) -> Flask:
    """An app limited to 5 requests a minute per key, counting in a real Redis."""
    return make_app(redis_url=redis_url, rate_limit="5/minute")


def _burst(client: FlaskClient, n: int, path: str = "/v1/jobs") -> list[int]:
    return [client.get(path).status_code for _ in range(n)]


def test_sixth_request_of_a_key_is_429_with_retry_after(limited: Flask) -> None:
    """Five requests pass (with X-RateLimit headers); the sixth is a 429 rate-limited problem with Retry-After."""
    client = limited.test_client()
    first = client.get("/v1/jobs")
    assert first.status_code == 200
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("5", "4")
    assert "Retry-After" not in first.headers
    assert _burst(client, 4) == [200] * 4
    resp = client.post("/v1/jobs", data=b"never read", content_type="application/octet-stream")
    body = assert_problem(resp, 429, "rate-limited")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60 and body["retry_after_s"] == int(resp.headers["Retry-After"])
    assert "5 per 1 minute" in body["detail"] and "API key" in body["detail"]
    assert _jobs(limited) == 0


def test_each_key_has_its_own_budget_shared_across_processes(
    limited: Flask, make_app: AppFactory, redis_url: str
) -> None:
    """Another key (or tenant) is not slowed by the first; a second API process on the same Redis shares the
    first key's budget (as gunicorn workers do)."""
    client = limited.test_client()
    assert _burst(client, 6)[-1] == 429
    assert _burst(client_for(limited, "acme"), 5) == [200] * 5
    assert _burst(client_for(limited), 5) == [200] * 5  # a second key of the same tenant
    twin = make_app(redis_url=redis_url, rate_limit="5/minute", seed=False)  # same database, same Redis
    key = client.environ_base["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    assert _burst(keyed_client_class(key)(twin, twin.response_class), 1) == [429]


def test_health_readiness_and_docs_are_exempt(limited: Flask) -> None:
    """Probes and the API description are never rate limited."""
    client = limited.test_client()
    assert _burst(client, 6)[-1] == 429
    for path in ("/healthz", "/openapi.json", "/docs/openapi.json"):
        assert set(_burst(client, 8, path)) == {200}, path


def test_without_auth_requests_are_counted_per_address(make_app: AppFactory, redis_url: str) -> None:
    """With auth off the budget belongs to the client address."""
    app = make_app(redis_url=redis_url, rate_limit="3/minute", auth_enabled=False)
    a = app.test_client()
    b = app.test_client()
    b.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    assert _burst(a, 4) == [200, 200, 200, 429]
    assert "client address" in a.get("/v1/jobs").get_json()["detail"]
    assert _burst(b, 3) == [200] * 3


def test_rate_limit_can_be_disabled(make_app: AppFactory, redis_url: str) -> None:
    """INFERQ_RATE_LIMIT_ENABLED=false turns the limiter off (and no X-RateLimit headers are sent)."""
    app = make_app(redis_url=redis_url, rate_limit="2/minute", rate_limit_enabled=False)
    client = app.test_client()
    assert _burst(client, 10) == [200] * 10
    assert "X-RateLimit-Limit" not in client.get("/v1/jobs").headers


def test_redis_down_falls_back_to_limits_per_process(make_app: AppFactory) -> None:
    """With the broker unreachable the API keeps answering and still limits, in memory."""
    app = make_app(rate_limit="3/minute")  # the tests' dead Redis URL
    assert _burst(app.test_client(), 4) == [200, 200, 200, 429]


def test_a_malformed_rate_limit_refuses_to_start(make_app: AppFactory) -> None:
    """INFERQ_RATE_LIMIT must parse ('600/minute'): a typo stops the app at start, not at the first request."""
    with pytest.raises(ValueError, match="INFERQ_RATE_LIMIT"):
        make_app(rate_limit="lots per minute")


def test_requests_with_a_bad_key_are_counted_per_address(limited: Flask) -> None:
    """Guessing keys is rate limited too: 401s count against the client address, and past the budget it is 429."""
    guesser = keyed_client_class("iq_nosuchkey_0000000000000000")(limited, limited.response_class)
    assert _burst(guesser, 6) == [401] * 5 + [429]
    assert "client address" in guesser.get("/v1/jobs").get_json()["detail"]


# --- backpressure on the interactive lane ---------------------------------------------------------------------


def test_a_full_interactive_lane_is_503_with_retry_after_and_bulk_still_goes(
    make_app: AppFactory, redis_url: str
) -> None:
    """Past INFERQ_INTERACTIVE_BACKLOG_MAX messages waiting in the interactive lane (real Redis) a classify job is a
    503 lane-full problem with Retry-After and nothing written; a score job is still accepted; once the lane
    drains (after the depth cache) classify jobs are accepted again."""
    import redis

    app = make_app(
        redis_url=redis_url,
        rate_limit_enabled=False,
        interactive_backlog_max=3,
        lane_depth_cache_s=0,
        lane_full_retry_after_s=7,
    )
    client = app.test_client()
    lane = redis.Redis.from_url(redis_url)
    try:
        lane.rpush("interactive", "m1", "m2")
        lane.rpush("inference", "m3")  # the pre-lanes queue counts too
        before = (row_counts(app), len(blob_files(app)), _sent(app))
        resp = post_files(client, [png_bytes()])
        body = assert_problem(resp, 503, "lane-full")
        assert resp.headers["Retry-After"] == "7" and body["retry_after_s"] == 7
        assert body["limit_setting"] == "INFERQ_INTERACTIVE_BACKLOG_MAX" and body["limit"] == 3
        assert (row_counts(app), len(blob_files(app)), _sent(app)) == before

        ds = client.post(
            "/v1/datasets?filename=d.npy", data=npy_bytes(digits(5)[0]), content_type="application/octet-stream"
        ).get_json()
        assert client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}).status_code == 202

        lane.delete("interactive", "inference")
        assert post_files(client, [png_bytes()]).status_code == 202
    finally:
        lane.delete("interactive", "inference")
        lane.close()
