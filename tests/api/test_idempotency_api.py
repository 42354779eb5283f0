"""Idempotency-Key on every creating POST: replay, 422 on reuse, 409 while in flight, release on failure, purge."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from shared.config.settings import Settings
from shared.db.models import Job, utcnow
from shared.db.tenancy_models import COMMITTED, IdempotencyKey
from shared.db.webhook_models import WebhookEndpoint
from shared.tenancy.idempotency import Stored, claim_key, mark_committed, purge_expired
from tests.access import client_for
from tests.dataset_factories import digits, npy_bytes
from tests.factories import assert_problem, b64, blob_files, db_session, png_bytes, row_counts, services_of

AppFactory = Callable[..., Flask]
HOOK = "https://hooks.example.com/inferq"


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """The API without rate limits (these tests send many requests)."""
    return make_app(rate_limit_enabled=False)


def _multipart(client: FlaskClient, key: str, image: bytes, boundary: str = "b0undary", **fields: str) -> TestResponse:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return client.post(
        "/v1/jobs",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
        headers={"Idempotency-Key": key},
    )


def _post_json(client: FlaskClient, path: str, key: str, body: Any) -> TestResponse:
    return client.post(path, json=body, headers={"Idempotency-Key": key})


def _jobs(app: Flask) -> int:
    with db_session(app) as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def _sent(app: Flask) -> int:
    return len(services_of(app).celery.sent)  # type: ignore[attr-defined]


def _keys(app: Flask) -> list[IdempotencyKey]:
    with db_session(app) as s:
        return list(s.scalars(select(IdempotencyKey)))


# --- replay ----------------------------------------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_answer(app: Flask) -> None:
    """A retry gets the first answer byte for byte (status, Location, body) marked Idempotent-Replayed; one job,
    one stored input (in its item's row: a small input is inline, so no blob), one message."""
    client, image = app.test_client(), png_bytes()
    first = _multipart(client, "retry-1", image)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = [_multipart(client, "retry-1", image) for _ in range(3)]
    for resp in again:
        assert (resp.status_code, resp.headers["Location"], resp.get_data()) == (
            202,
            first.headers["Location"],
            first.get_data(),
        )
        assert resp.headers["Idempotent-Replayed"] == "true" and resp.mimetype == "application/json"
    assert (row_counts(app), len(blob_files(app)), _sent(app)) == ((1, 1), 0, 1)


def test_a_multipart_retry_with_another_boundary_is_the_same_request(app: Flask) -> None:
    """Clients pick a random multipart boundary per attempt: the fingerprint reads fields and files, not framing."""
    client, image = app.test_client(), png_bytes()
    first = _multipart(client, "boundary-key", image, boundary="first-attempt", top_k="2")
    again = _multipart(client, "boundary-key", image, boundary="second-attempt-xyz", top_k="2")
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_data() == first.get_data()
    assert _jobs(app) == 1


@pytest.mark.parametrize(
    "change",
    ["other-image", "other-field", "other-path", "json-instead"],
)
def test_same_key_with_another_request_is_422(app: Flask, change: str) -> None:
    """Reusing a key for a different body, field, path or media type is a 422 problem; nothing new is created."""
    client, image = app.test_client(), png_bytes()
    assert _multipart(client, "k", image, top_k="2").status_code == 202
    if change == "other-image":
        resp = _multipart(client, "k", png_bytes(size=(32, 32)), top_k="2")
    elif change == "other-field":
        resp = _multipart(client, "k", image, top_k="3")
    elif change == "other-path":
        resp = _post_json(client, "/v1/models/mnist-cnn/trainings", "k", {"epochs": 1})
    else:
        resp = _post_json(client, "/v1/jobs", "k", {"images": [{"data": b64(image), "filename": "a.png"}]})
    body = assert_problem(resp, 422, "idempotency-key-reused")
    assert "Idempotency-Key 'k'" in body["detail"]
    assert _jobs(app) == 1


def test_keys_belong_to_a_tenant(app: Flask) -> None:
    """Two tenants may use the same key: each gets its own job."""
    image = png_bytes()
    a = _multipart(app.test_client(), "shared-key", image)
    b = _multipart(client_for(app, "acme"), "shared-key", image)
    assert a.status_code == b.status_code == 202 and "Idempotent-Replayed" not in b.headers
    assert a.get_json()["id"] != b.get_json()["id"]


# --- failures release the key --------------------------------------------------------------------------------


def test_a_refused_request_releases_its_key(app: Flask) -> None:
    """A request refused before it changed anything (422) frees its key: the corrected retry runs."""
    client = app.test_client()
    assert_problem(_post_json(client, "/v1/jobs", "fix-me", {"images": [{"data": "!!"}]}), 422, "validation-error")
    assert _keys(app) == []
    ok = _post_json(client, "/v1/jobs", "fix-me", {"images": [{"data": b64(png_bytes())}]})
    assert ok.status_code == 202 and "Idempotent-Replayed" not in ok.headers


def test_queue_full_releases_the_key_for_a_later_retry(make_app: AppFactory) -> None:
    """A 429 queue-full is not remembered: the same key succeeds once the queue has room."""
    app = make_app(rate_limit_enabled=False, max_queued_jobs_per_tenant=1)
    client, image = app.test_client(), png_bytes()
    first = _multipart(client, "a", image)
    assert_problem(_multipart(client, "b", image), 429, "queue-full")
    assert client.post(f"/v1/jobs/{first.get_json()['id']}/cancel").status_code == 200
    later = _multipart(client, "b", image)
    assert later.status_code == 202 and "Idempotent-Replayed" not in later.headers
    assert _jobs(app) == 2


# --- concurrency and crashes -------------------------------------------------------------------------------------


def test_a_duplicate_while_the_first_runs_is_409(app: Flask) -> None:
    """While another request holds the key (in flight), a duplicate is a 409 problem with Retry-After."""
    svc = services_of(app)
    claim = claim_key(
        sessions=svc.sessions, tenant_id="default", key="busy", method="POST", path="/v1/jobs", lease_s=600
    )
    assert not isinstance(claim, Stored)
    resp = _multipart(app.test_client(), "busy", png_bytes())
    assert_problem(resp, 409, "idempotency-key-in-use")
    assert resp.headers["Retry-After"] == "1"
    assert _jobs(app) == 0


def test_a_committed_key_without_an_answer_never_runs_again(app: Flask) -> None:
    """If the first request committed its job but died before storing its answer, a retry is a 409, even after
    the lease, never a second job."""
    svc = services_of(app)
    claim = claim_key(sessions=svc.sessions, tenant_id="default", key="k", method="POST", path="/v1/jobs", lease_s=1)
    assert not isinstance(claim, Stored)
    with svc.sessions.begin() as s:
        mark_committed(session=s, claim=claim)
        s.execute(update(IdempotencyKey).values(locked_at=utcnow() - timedelta(hours=1)))
    resp = _multipart(app.test_client(), "k", png_bytes())
    assert_problem(resp, 409, "idempotency-key-in-use")
    assert "has been carried out" in resp.get_json()["detail"]
    assert _keys(app)[0].status == COMMITTED and _jobs(app) == 0


def test_a_claim_abandoned_past_the_lease_is_taken_over(app: Flask) -> None:
    """A claim whose request died before committing (in flight past INFERQ_IDEMPOTENCY_LEASE_S) is taken over."""
    svc = services_of(app)
    claim_key(sessions=svc.sessions, tenant_id="default", key="k", method="POST", path="/v1/jobs", lease_s=600)
    with svc.sessions.begin() as s:
        s.execute(update(IdempotencyKey).values(locked_at=utcnow() - timedelta(seconds=601)))
    resp = _multipart(app.test_client(), "k", png_bytes())
    assert resp.status_code == 202 and _jobs(app) == 1
    assert _multipart(app.test_client(), "k", png_bytes()).headers["Idempotent-Replayed"] == "true"


def test_the_key_is_marked_committed_in_the_jobs_own_transaction(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """If storing the answer fails after the job committed, the key stays committed: a retry makes no second job."""
    import api.idempotency

    def lost(**_: Any) -> bool:
        raise ConnectionError("the database went away after the commit")

    monkeypatch.setattr(api.idempotency, "finish_key", lost)
    client, image = app.test_client(), png_bytes()
    assert _multipart(client, "k", image).status_code == 202  # the client got its answer; the row did not
    assert [k.status for k in _keys(app)] == [COMMITTED]
    assert_problem(_multipart(client, "k", image), 409, "idempotency-key-in-use")
    assert _jobs(app) == 1


def test_a_refusal_after_a_write_statement_does_not_lock_sqlite(app: Flask) -> None:
    """A cancel of a finished job (409 after its compare-and-set UPDATE) releases its key at once: the request's
    own open write transaction must not lock the release out for SQLite's 30 s busy timeout (found by
    schemathesis)."""
    import time

    client = app.test_client()
    job_id = _multipart(client, "submit", png_bytes()).get_json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers={"Idempotency-Key": "c1"}).status_code == 200
    started = time.monotonic()
    resp = client.post(f"/v1/jobs/{job_id}/cancel", headers={"Idempotency-Key": "c2"})
    assert_problem(resp, 409, "job-not-cancelable")
    assert time.monotonic() - started < 5
    assert sorted(k.key for k in _keys(app)) == ["c1", "submit"]


# --- every creating POST ----------------------------------------------------------------------------------------


def _dataset(client: FlaskClient) -> str:
    """The id of a dataset uploaded (once per client, without a key) for score jobs."""
    if not hasattr(client, "dataset_id"):
        data = npy_bytes(digits(12)[0])
        resp = client.post("/v1/datasets?filename=d.npy", data=data, content_type="application/octet-stream")
        client.dataset_id = str(resp.get_json()["id"])  # type: ignore[attr-defined]
    return str(client.dataset_id)  # type: ignore[attr-defined]


CREATORS: dict[str, Callable[[FlaskClient, str], TestResponse]] = {
    "classify-json": lambda c, k: _post_json(c, "/v1/jobs", k, {"images": [{"data": b64(png_bytes())}]}),
    "score": lambda c, k: _post_json(c, "/v1/jobs", k, {"kind": "score", "dataset": _dataset(c)}),
    "dataset-raw": lambda c, k: c.post(
        "/v1/datasets?filename=d.npy",
        data=npy_bytes(digits(12)[0]),
        content_type="application/octet-stream",
        headers={"Idempotency-Key": k},
    ),
    "dataset-multipart": lambda c, k: c.post(
        "/v1/datasets",
        data={"file": (io.BytesIO(npy_bytes(digits(12)[0])), "d.npy")},
        content_type="multipart/form-data",
        headers={"Idempotency-Key": k},
    ),
    "training": lambda c, k: _post_json(c, "/v1/models/mnist-cnn/trainings", k, {"epochs": 1}),
    "optimize": lambda c, k: _post_json(c, "/v1/models/mnist-cnn/versions/1/optimize", k, {"method": "int8"}),
    "benchmark": lambda c, k: _post_json(c, "/v1/models/mnist-cnn/versions/1/benchmark", k, {}),
    "model-upload": lambda c, k: c.post(
        "/v1/models/byom/uploads",
        data={"file": (io.BytesIO(b"PK-not-really"), "m.keras"), "labels": '["a", "b"]'},
        content_type="multipart/form-data",
        headers={"Idempotency-Key": k},
    ),
    "webhook-endpoint": lambda c, k: _post_json(c, "/v1/webhooks/endpoints", k, {"url": HOOK}),
    "api-key": lambda c, k: _post_json(c, "/v1/keys", k, {"name": "ci", "scopes": ["jobs"]}),
}


def _count_created(app: Flask) -> tuple[int, ...]:
    from shared.db.models import Dataset
    from shared.db.tenancy_models import ApiKey

    with db_session(app) as s:
        return tuple(
            s.scalar(select(func.count()).select_from(model)) or 0 for model in (Job, Dataset, WebhookEndpoint, ApiKey)
        )


@pytest.mark.parametrize("route", sorted(CREATORS))
def test_every_creating_post_is_idempotent(app: Flask, route: str) -> None:
    """Each POST that creates something (jobs of every kind, datasets, models, webhook endpoints, keys) creates
    it once for one key: three retries replay the first answer and create nothing more."""
    client = app.test_client()
    first = CREATORS[route](client, f"create-{route}")
    assert 200 <= first.status_code < 300, first.get_data(as_text=True)
    created = _count_created(app)
    for _ in range(3):
        again = CREATORS[route](client, f"create-{route}")
        assert again.status_code == first.status_code and again.headers["Idempotent-Replayed"] == "true"
        assert again.headers.get("Location") == first.headers.get("Location")
    assert _count_created(app) == created


@pytest.mark.parametrize(("route", "field"), [("api-key", "key"), ("webhook-endpoint", "secret")])
def test_secrets_are_shown_once_and_never_stored(app: Flask, route: str, field: str) -> None:
    """A replay of a key or secret creation shows the object with the secret null; the table never holds it."""
    client = app.test_client()
    first = CREATORS[route](client, "secret-key").get_json()
    replay = CREATORS[route](client, "secret-key").get_json()
    assert first[field] and replay[field] is None
    assert {k: v for k, v in replay.items() if k != field} == {k: v for k, v in first.items() if k != field}
    stored = b"".join((row.response_body or b"") + json.dumps(row.response_headers).encode() for row in _keys(app))
    assert first[field].encode() not in stored


# --- the header itself -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   ", "x" * 256, "caf\u00e9"], ids=["empty", "blank", "too-long", "non-ascii"])
def test_malformed_keys_are_400(app: Flask, key: str) -> None:
    """An empty, blank, over-long or non-ASCII key is a 400 problem and the request does not run."""
    resp = app.test_client().post(
        "/v1/jobs",
        json={"images": [{"data": b64(png_bytes())}]},
        headers={"Idempotency-Key": key.encode().decode("latin-1")},
    )
    assert_problem(resp, 400, "idempotency-key-invalid")
    assert _jobs(app) == 0


def test_requests_without_the_header_are_unaffected(app: Flask) -> None:
    """Without Idempotency-Key two identical POSTs are two jobs, and no key row is written."""
    client, image = app.test_client(), png_bytes()
    for _ in range(2):
        assert client.post("/v1/jobs", json={"images": [{"data": b64(image)}]}).status_code == 202
    assert _jobs(app) == 2 and _keys(app) == []


def test_openapi_documents_the_header_on_every_post(app: Flask) -> None:
    """Every POST operation lists the optional Idempotency-Key header and its 409 and 422 answers."""
    spec = app.test_client().get("/openapi.json").get_json()
    posts = [(path, item["post"]) for path, item in spec["paths"].items() if "post" in item]
    assert len(posts) >= 10
    for path, op in posts:
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in op["parameters"]), path
        assert {"409", "422"} <= set(op["responses"]), path


# --- retention -------------------------------------------------------------------------------------------------


def test_purge_deletes_only_keys_past_the_ttl(app: Flask) -> None:
    """Keys older than INFERQ_IDEMPOTENCY_TTL_S are purged in batches; younger ones stay."""
    client = app.test_client()
    for i in range(5):
        assert _multipart(client, f"k{i}", png_bytes()).status_code == 202
    svc = services_of(app)
    with svc.sessions.begin() as s:
        s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key.in_(["k0", "k1", "k2"]))
            .values(created_at=utcnow() - timedelta(hours=25))
        )
    with svc.sessions.begin() as s:
        assert purge_expired(session=s, ttl_s=24 * 3600, batch=2) == 2
    with svc.sessions.begin() as s:
        assert purge_expired(session=s, ttl_s=24 * 3600) == 1
    assert sorted(k.key for k in _keys(app)) == ["k3", "k4"]


def test_keys_are_kept_at_least_a_day() -> None:
    """INFERQ_IDEMPOTENCY_TTL_S below 24 hours is refused at start."""
    with pytest.raises(ValueError, match="idempotency_ttl_s"):
        Settings(_env_file=None, idempotency_ttl_s=3600)  # type: ignore[call-arg]
