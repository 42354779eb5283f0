"""/v1/keys: create (the key shown once), list and get without secrets, revoke, and the admin scope."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from api.auth import ADMIN, JOBS
from shared.db.tenancy_models import ApiKey
from tests.access import auth_headers, client_for
from tests.factories import assert_problem, db_session


def test_create_shows_the_key_once_and_it_works(app: Flask, client: FlaskClient) -> None:
    """POST /v1/keys answers 201 with the full key; listing and getting it never show it again; it works."""
    resp = client.post("/v1/keys", json={"name": "ci", "scopes": ["jobs"]})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    key, key_id = body["key"], body["id"]
    assert key.startswith(f"iq_{key_id}_") and body["tenant_id"] == "default" and body["scopes"] == ["jobs"]
    assert resp.headers["Location"] == f"/v1/keys/{key_id}"
    listed = client.get("/v1/keys")
    shown = client.get(f"/v1/keys/{key_id}")
    assert key_id in listed.get_data(as_text=True) and shown.get_json()["name"] == "ci"
    for r in (listed, shown):
        assert key not in r.get_data(as_text=True) and key.split("_", 2)[2] not in r.get_data(as_text=True)
    with db_session(app) as s:
        row = s.get(ApiKey, key_id)
        assert row is not None and key.split("_", 2)[2] not in row.secret_hash
    new = app.test_client()
    assert new.get("/v1/jobs", headers=auth_headers(key)).status_code == 200


def test_new_keys_default_to_the_jobs_scope(client: FlaskClient) -> None:
    """Without scopes a key gets jobs only."""
    assert client.post("/v1/keys", json={}).get_json()["scopes"] == [JOBS]


def test_a_key_cannot_grant_more_than_it_has(app: Flask) -> None:
    """An admin-only key may create admin keys, but not one with jobs or models: 403 insufficient-scope."""
    admin_only = client_for(app, scopes=[ADMIN])
    assert admin_only.post("/v1/keys", json={"scopes": ["admin"]}).status_code == 201
    assert_problem(admin_only.post("/v1/keys", json={"scopes": ["admin", "models"]}), 403, "insufficient-scope")


def test_bad_scopes_and_fields_are_422(client: FlaskClient) -> None:
    """Unknown scopes, an empty list and unknown fields are 422 validation problems."""
    for body in ({"scopes": ["root"]}, {"scopes": []}, {"tenant_id": "other"}):
        assert_problem(client.post("/v1/keys", json=body), 422, "validation-error")


def test_managing_keys_needs_the_admin_scope(app: Flask) -> None:
    """A jobs-and-models key cannot list, create or revoke keys."""
    worker = client_for(app, scopes=["jobs", "models"])
    for resp in (worker.get("/v1/keys"), worker.post("/v1/keys", json={}), worker.delete("/v1/keys/abc")):
        assert_problem(resp, 403, "insufficient-scope")


def test_revoke_keeps_the_key_listed_and_is_idempotent(client: FlaskClient) -> None:
    """DELETE answers 204 (twice too); the key stays listed with revoked_at; an unknown id is 404."""
    key_id = client.post("/v1/keys", json={"name": "old"}).get_json()["id"]
    assert client.delete(f"/v1/keys/{key_id}").status_code == 204
    assert client.delete(f"/v1/keys/{key_id}").status_code == 204
    assert client.get(f"/v1/keys/{key_id}").get_json()["revoked_at"] is not None
    assert_problem(client.delete("/v1/keys/000000000000"), 404, "api-key-not-found")
