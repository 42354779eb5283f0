"""A dump of the whole PostgreSQL database (every table, every row, every column) holds no API key, an image only as
a small classify input kept in its item's row (INFERQ_INLINE_INPUT_MAX_BYTES; larger ones are blobs), and webhook
signing secrets only where they must be: they sign every delivery, so they are stored as they are,
in webhook_endpoints and webhook_signing_keys (the current and, during a rotation, the previous one)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from inferq.access import ensure_local_key
from shared.config.settings import Settings
from shared.config.status import JobStatus
from shared.db.engine import session_scope, upgrade_database
from shared.jobs import lifecycle as jobstore
from tests.access import use_key
from tests.factories import SentTasks, add_model_version, make_settings, noise_png, services_of

pytestmark = pytest.mark.integration
HOOK = "https://hooks.example.com/inferq"
DESIGNED = {("webhook_endpoints", "secret"), ("webhook_endpoints", "previous_secret")} | {
    ("webhook_signing_keys", "secret"),
    ("webhook_signing_keys", "previous_secret"),
}


@pytest.fixture
def pg_app(tmp_path: Path, pg_url: str) -> Iterator[Flask]:
    """The API on a fresh PostgreSQL database, recording Celery messages instead of sending them."""
    from api.app import create_app

    settings = make_settings(tmp_path, database_url=pg_url)
    upgrade_database(settings)
    app = create_app(settings)
    services_of(app).celery = SentTasks()
    with session_scope(services_of(app).sessions) as s:
        add_model_version(s)
    yield app
    services_of(app).engine.dispose()


def dump(url: str) -> list[tuple[str, str, str]]:
    """(table, column, value as text) of every non-null cell of every table in the database."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    cells = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(table.select()).mappings():
                cells += [(table.name, col, str(value)) for col, value in row.items() if value is not None]
    engine.dispose()
    return cells


def _where(cells: list[tuple[str, str, str]], needle: str) -> set[tuple[str, str]]:
    return {(t, c) for t, c, v in cells if needle in v}


def test_the_database_holds_no_key_no_image_and_secrets_only_where_designed(pg_app: Flask, pg_url: str) -> None:
    """Keys from the API, the CLI and `inferq up`, endpoint and per-job secrets (rotated too), jobs with images
    and finished webhooks: the dump has none of the keys, images only as inline inputs, secrets only in their own
    columns."""
    settings: Settings = services_of(pg_app).settings
    admin_key = use_key(pg_app, tenant_id="acme")
    client: FlaskClient = pg_app.test_client()
    api_key = client.post("/v1/keys", json={"name": "ci", "scopes": ["jobs"]}).get_json()["key"]
    local_key, _ = ensure_local_key(settings)
    endpoint = client.post("/v1/webhooks/endpoints", json={"url": HOOK}).get_json()
    rotated = client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate").get_json()["secret"]
    signing = client.post("/v1/webhooks/signing-secret/reveal").get_json()["secret"]
    signing_new = client.post("/v1/webhooks/signing-secret/rotate").get_json()["secret"]
    image = noise_png((40, 40))
    job: dict[str, Any] = client.post(
        "/v1/jobs", json={"images": [{"data": base64.b64encode(image).decode()}], "webhook": HOOK}
    ).get_json()
    with session_scope(services_of(pg_app).sessions) as s:
        for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            assert jobstore.set_status(s, uuid.UUID(job["id"]), status)
    assert client.get("/v1/jobs", headers={"X-API-Key": api_key, "Authorization": ""}).status_code == 200

    cells = dump(pg_url)
    tables = {t for t, _, _ in cells}
    assert {
        "api_keys",
        "jobs",
        "job_items",
        "webhook_endpoints",
        "webhook_signing_keys",
        "webhook_deliveries",
    } <= tables
    for key in (admin_key, api_key, local_key):
        secret = key.split("_", 2)[2]
        assert _where(cells, key) == set() and _where(cells, secret) == set(), key[:16]
        assert _where(cells, key.split("_")[1]) >= {("api_keys", "id")}  # the visible prefix is stored
    for secret in (endpoint["secret"], rotated, signing, signing_new):
        assert _where(cells, secret.removeprefix("whsec_")) <= DESIGNED, secret[:10]
    assert _where(cells, rotated) == {("webhook_endpoints", "secret")}
    inline = {("job_items", "input_data")}  # the input itself, by design (bytes: dumped as their repr or hex)
    assert _where(cells, base64.b64encode(image).decode()[:64]) == set()
    assert _where(cells, image[:32].hex()) <= inline and _where(cells, repr(image[:32])[2:-1]) <= inline
