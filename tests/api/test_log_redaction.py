"""No API key, webhook secret or image byte reaches the logs, even with SQL statement logging on and a crash."""

from __future__ import annotations

import base64
import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient

import api.jobs
from shared.tenancy.redaction import MASK
from tests.access import auth_headers
from tests.factories import noise_png

HOOK = "https://hooks.example.com/inferq"


def test_secrets_and_images_never_reach_the_logs(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create a key and webhook secrets, submit an image, send a wrong key and crash a request while every
    logger (SQLAlchemy's statements and parameters included) records at DEBUG: none of it shows in the logs."""
    image = noise_png((60, 60))
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    key = client.post("/v1/keys", json={"scopes": ["jobs"]}).get_json()["key"]
    endpoint_secret = client.post("/v1/webhooks/endpoints", json={"url": HOOK}).get_json()["secret"]
    job = client.post("/v1/jobs", json={"images": [{"data": base64.b64encode(image).decode()}], "webhook": HOOK})
    assert job.status_code == 202
    signing_secret = client.post("/v1/webhooks/signing-secret/reveal").get_json()["secret"]
    assert app.test_client().get("/v1/jobs", headers=auth_headers(key + "x")).status_code == 401
    logging.getLogger("some.http.library").debug("sent headers %s", {"Authorization": f"Bearer {key}"})

    def crash(*_: object, **__: object) -> None:
        raise RuntimeError(f"boom with {key}, {signing_secret} and {image!r}")

    monkeypatch.setattr(api.jobs, "read_classify_request", crash)
    assert client.post("/v1/jobs", json={"images": []}).status_code == 500

    logged = caplog.text
    assert "INSERT INTO webhook_endpoints" in logged and "unhandled error" in logged  # the paths were exercised
    secrets = [key, key.split("_", 2)[2], endpoint_secret, signing_secret, base64.b64encode(image).decode()]
    assert [s[:12] + "…" for s in secrets if s in logged] == []
    assert repr(image)[:40] not in logged
    assert f"whsec_{MASK}" in logged
