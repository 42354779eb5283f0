"""/v1/jobs webhook fields and /v1/webhooks: endpoints (secret shown once), signing secret, deliveries, redeliver."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.db.models import Job
from shared.db.webhook_models import WebhookDelivery, WebhookSigningKey
from tests.factories import assert_nothing_written, assert_problem, b64, db_session, png_bytes, post_files, services_of
from worker.webhooks_dispatch import Claim, Outcome, dispatch_due

HOOK = "https://hooks.example.com/inferq"


def _submit_json(client: FlaskClient, **fields: Any) -> Any:
    return client.post("/v1/jobs", json={"images": [{"data": b64(png_bytes())}], **fields})


def _params(app: Flask, job_id: str) -> dict[str, Any]:
    with db_session(app) as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job.params


def test_json_job_takes_webhook_and_filter(app: Flask, client: FlaskClient) -> None:
    """webhook and webhook_events_filter (a JSON list) are stored in the job's params; a signing key exists."""
    resp = _submit_json(client, webhook=HOOK, webhook_events_filter=["completed", "start"])
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert _params(app, resp.get_json()["id"])["webhook"] == {"url": HOOK, "events": ["start", "completed"]}
    with db_session(app) as s:
        assert s.get(WebhookSigningKey, "default") is not None


def test_multipart_job_takes_webhook_and_comma_separated_filter(app: Flask, client: FlaskClient) -> None:
    """Multipart form fields work too, the filter comma-separated or as a JSON list; default is completed."""
    a = post_files(client, [png_bytes()], webhook=HOOK, webhook_events_filter="progress, completed")
    b = post_files(client, [png_bytes()], webhook=HOOK, webhook_events_filter='["start"]')
    c = post_files(client, [png_bytes()], webhook=HOOK)
    assert [r.status_code for r in (a, b, c)] == [202, 202, 202]
    assert _params(app, a.get_json()["id"])["webhook"]["events"] == ["progress", "completed"]
    assert _params(app, b.get_json()["id"])["webhook"]["events"] == ["start"]
    assert _params(app, c.get_json()["id"])["webhook"]["events"] == ["completed"]
    assert "webhook" not in _params(app, post_files(client, [png_bytes()]).get_json()["id"])


def test_refused_webhook_url_writes_nothing(app: Flask, client: FlaskClient) -> None:
    """An internal or non-http(s) webhook is 422 webhook-url-refused, with no job row, blob or message."""
    for url in ("http://127.0.0.1/x", "http://[::1]/", "ftp://hooks.example.com/", "http://169.254.169.254/"):
        assert_problem(_submit_json(client, webhook=url), 422, "webhook-url-refused")
    assert_problem(post_files(client, [png_bytes()], webhook="http://2130706433/"), 422, "webhook-url-refused")
    assert_nothing_written(app)


def test_bad_events_filter_is_a_validation_error(app: Flask, client: FlaskClient) -> None:
    """Unknown events, or a filter without a webhook, are 422 validation-error and write nothing."""
    assert_problem(_submit_json(client, webhook=HOOK, webhook_events_filter=["done"]), 422, "validation-error")
    assert_problem(_submit_json(client, webhook_events_filter=["start"]), 422, "validation-error")
    assert_nothing_written(app)


def test_endpoint_crud_shows_the_secret_once(client: FlaskClient) -> None:
    """POST returns the secret; GET (list and one) never does; DELETE removes it (then 404)."""
    created = client.post("/v1/webhooks/endpoints", json={"url": HOOK, "events": ["start", "completed"]})
    assert created.status_code == 201
    body = created.get_json()
    assert body["secret"].startswith("whsec_") and body["events"] == ["start", "completed"]
    listed = client.get("/v1/webhooks/endpoints").get_json()["data"]
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]
    one = client.get(f"/v1/webhooks/endpoints/{body['id']}").get_json()
    assert one["url"] == HOOK and "secret" not in one and body["secret"] not in json.dumps(one)
    assert client.delete(f"/v1/webhooks/endpoints/{body['id']}").status_code == 204
    assert client.get("/v1/webhooks/endpoints").get_json()["data"] == []
    assert_problem(client.get(f"/v1/webhooks/endpoints/{body['id']}"), 404, "webhook-endpoint-not-found")
    assert_problem(client.delete("/v1/webhooks/endpoints/nope"), 404, "webhook-endpoint-not-found")


def test_endpoint_refusals(client: FlaskClient) -> None:
    """An internal URL is 422 webhook-url-refused; an unknown event is 422 validation-error."""
    assert_problem(client.post("/v1/webhooks/endpoints", json={"url": "http://10.0.0.1/"}), 422, "webhook-url-refused")
    resp = client.post("/v1/webhooks/endpoints", json={"url": HOOK, "events": ["nope"]})
    assert_problem(resp, 422, "validation-error")


def test_allow_list_admits_loopback(make_app: Any) -> None:
    """With INFERQ_WEBHOOK_ALLOW_CIDRS=127.0.0.0/8 a loopback endpoint is accepted."""
    client = make_app(webhook_allow_cidrs="127.0.0.0/8").test_client()
    assert client.post("/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/hook"}).status_code == 201


def test_rotate_gives_a_new_secret_with_an_overlap(client: FlaskClient) -> None:
    """Rotation returns a new secret once and says until when the old one still signs."""
    created = client.post("/v1/webhooks/endpoints", json={"url": HOOK}).get_json()
    rotated = client.post(f"/v1/webhooks/endpoints/{created['id']}/rotate")
    assert rotated.status_code == 200
    body = rotated.get_json()
    assert body["secret"] != created["secret"] and body["previous_secret_expires_at"]
    assert client.get(f"/v1/webhooks/endpoints/{created['id']}").get_json()["previous_secret_expires_at"]


def test_signing_secret_is_revealed_once(client: FlaskClient) -> None:
    """The per-job signing secret is shown once (409 after); rotating shows a new one."""
    first = client.post("/v1/webhooks/signing-secret/reveal")
    assert first.status_code == 200 and first.get_json()["secret"].startswith("whsec_")
    assert_problem(client.post("/v1/webhooks/signing-secret/reveal"), 409, "webhook-secret-already-shown")
    rotated = client.post("/v1/webhooks/signing-secret/rotate").get_json()
    assert rotated["secret"] != first.get_json()["secret"] and rotated["previous_secret_expires_at"]


def _answer(status: int) -> Any:
    def send(claim: Claim, settings: Any) -> Outcome:
        return Outcome(status, 12.5, excerpt=f"answered {status}")

    return send


def test_deliveries_are_listed_with_attempts_and_can_be_redelivered(app: Flask, client: FlaskClient) -> None:
    """Canceling a job queues its completed event in the same transaction; the log shows each attempt; a failed
    delivery can be sent again with the same webhook-id."""
    job_id = _submit_json(client, webhook=HOOK).get_json()["id"]
    assert client.get(f"/v1/webhooks/deliveries?job_id={job_id}").get_json()["data"] == []
    client.post(f"/v1/jobs/{job_id}/cancel")
    (listed,) = client.get(f"/v1/webhooks/deliveries?job_id={job_id}").get_json()["data"]
    assert listed["event"] == "completed" and listed["status"] == "pending" and listed["url"] == HOOK
    detail = client.get(f"/v1/webhooks/deliveries/{listed['id']}").get_json()
    assert detail["payload"]["type"] == "job.completed"
    job_now = client.get(f"/v1/jobs/{job_id}").get_json()
    assert detail["payload"]["data"] == job_now  # the same JSON as GET /v1/jobs/{id}

    svc = services_of(app)
    settings = svc.settings.model_copy(update={"webhook_max_attempts": 1})
    assert dispatch_due(svc.sessions, settings, send=_answer(503)).gave_up == 1
    failed = client.get(f"/v1/webhooks/deliveries/{listed['id']}").get_json()
    assert failed["status"] == "failed" and failed["last_status_code"] == 503
    (attempt,) = failed["attempt_log"]
    assert attempt["status_code"] == 503 and attempt["latency_ms"] == 12.5 and attempt["next_attempt_at"] is None
    assert attempt["response_excerpt"] == "answered 503"

    again = client.post(f"/v1/webhooks/deliveries/{listed['id']}/redeliver")
    assert again.status_code == 202 and again.get_json()["status"] == "pending"
    assert dispatch_due(svc.sessions, settings, send=_answer(200)).succeeded == 1
    done = client.get(f"/v1/webhooks/deliveries/{listed['id']}").get_json()
    assert done["status"] == "succeeded" and [a["status_code"] for a in done["attempt_log"]] == [503, 200]
    assert done["webhook_id"] == listed["webhook_id"]
    with db_session(app) as s:
        assert len(s.scalars(select(WebhookDelivery)).all()) == 1


def test_unknown_delivery_is_404(client: FlaskClient) -> None:
    """Unknown or malformed delivery ids answer 404 webhook-delivery-not-found."""
    assert_problem(client.get(f"/v1/webhooks/deliveries/{uuid.uuid4()}"), 404, "webhook-delivery-not-found")
    assert_problem(client.post("/v1/webhooks/deliveries/x/redeliver"), 404, "webhook-delivery-not-found")
