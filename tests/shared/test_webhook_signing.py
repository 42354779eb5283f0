"""Webhook signing follows the Standard Webhooks spec, through inferq's own signing code path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.runtime.celery_app import OPS_QUEUE, ROUTES, WEBHOOK_DISPATCH_TASK, celery_config
from shared.webhooks.outbox import new_secret, signature_header, signed_headers
from tests.factories import make_settings
from worker.webhooks_dispatch import retry_delay

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_webhooks_test_vector() -> None:
    """The spec's test vector gives the spec's signature."""
    assert signature_header(VECTOR_ID, VECTOR_TS, VECTOR_BODY, [VECTOR_SECRET]) == VECTOR_SIG
    headers = signed_headers(VECTOR_ID, VECTOR_TS, VECTOR_BODY, [VECTOR_SECRET])
    assert headers["webhook-signature"] == VECTOR_SIG
    assert headers["webhook-id"] == VECTOR_ID and headers["webhook-timestamp"] == str(VECTOR_TS)


def test_fresh_headers_verify_with_standardwebhooks() -> None:
    """Headers made now verify with standardwebhooks.Webhook(secret).verify and return the payload."""
    secret, body = new_secret(), json.dumps({"type": "job.completed", "data": {"id": "x"}})
    headers = signed_headers("msg_1", int(time.time()), body, [secret])
    assert Webhook(secret).verify(body, headers)["type"] == "job.completed"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_rotation_sends_both_signatures() -> None:
    """During an overlap both secrets sign: receivers holding either one verify the same delivery."""
    old, new, body = new_secret(), new_secret(), '{"a":1}'
    headers = signed_headers("msg_2", int(time.time()), body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_new_secrets_are_distinct_and_spec_shaped() -> None:
    """Secrets are whsec_ + base64 of 24 random bytes, never repeated."""
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50 and all(s.startswith("whsec_") and len(s) == 38 for s in secrets)


def test_dispatcher_is_scheduled_and_routed(tmp_path: Path) -> None:
    """Beat runs inferq.webhooks.dispatch every INFERQ_WEBHOOK_DISPATCH_INTERVAL_S on the inference queue."""
    conf = celery_config(make_settings(tmp_path, webhook_dispatch_interval_s=3.5))
    assert conf["beat_schedule"]["webhooks"] == {"task": "inferq.webhooks.dispatch", "schedule": 3.5}  # type: ignore[index]
    assert ROUTES[WEBHOOK_DISPATCH_TASK] == {"queue": OPS_QUEUE}


def test_retry_schedule_spans_about_three_days(tmp_path: Path) -> None:
    """The default backoff (x3 from 10 s, capped at 12 h, ±20% jitter) spreads 14 attempts over ~2.3-3.5 days."""
    settings = make_settings(tmp_path)
    total = sum(retry_delay(n, settings) for n in range(1, settings.webhook_max_attempts))
    assert 2.3 * 86400 < total < 3.5 * 86400
    scaled = make_settings(tmp_path, webhook_retry_scale=0.001)
    assert retry_delay(1, scaled) < 0.02
