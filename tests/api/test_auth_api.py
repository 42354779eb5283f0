"""Authentication and scopes on every route: 401/403 problems, public probes and docs, the OpenAPI security."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from api import auth
from api.auth import ADMIN, JOBS, MODELS
from shared.db.tenancy_models import ApiKey
from shared.tenancy import apikeys
from tests.access import auth_headers, client_for, make_key
from tests.factories import assert_problem, db_session, png_bytes, post_files, services_of

NO_KEY = {"Authorization": ""}  # overrides the key the app's test clients send by default


def _plain(app: Flask) -> FlaskClient:
    """A client that sends no key at all."""
    return FlaskClient(app, app.response_class, use_cookies=True)


def test_no_key_is_401_with_a_bearer_challenge(app: Flask) -> None:
    """A route without a key answers 401 problem+json `unauthenticated` with WWW-Authenticate: Bearer."""
    for method, path in (("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/v1/models"), ("get", "/v1/keys")):
        resp = getattr(_plain(app), method)(path)
        body = assert_problem(resp, 401, "unauthenticated")
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="inferq"'
        assert "Authorization: Bearer" in body["detail"] and body["instance"] == path


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer iq_0123456789ab_" + "A" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"X-API-Key": "iq_zz"},
    ],
)
def test_an_unknown_or_malformed_key_is_401_invalid_token(app: Flask, headers: dict[str, str]) -> None:
    """A key that does not authenticate is 401 with error="invalid_token" in the challenge."""
    resp = _plain(app).get("/v1/jobs", headers=headers)
    assert_problem(resp, 401, "unauthenticated")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="inferq", error="invalid_token"'


def test_a_revoked_key_is_401_from_the_next_request(app: Flask, client: FlaskClient) -> None:
    """DELETE /v1/keys/{id} with the key itself: the same key is refused on the very next request."""
    key = make_key(services_of(app).sessions, scopes=["jobs", "admin"])
    assert _plain(app).get("/v1/jobs", headers=auth_headers(key)).status_code == 200
    key_id = key.split("_")[1]
    assert _plain(app).delete(f"/v1/keys/{key_id}", headers=auth_headers(key)).status_code == 204
    assert_problem(_plain(app).get("/v1/jobs", headers=auth_headers(key)), 401, "unauthenticated")


def test_the_key_is_accepted_as_bearer_or_x_api_key(app: Flask) -> None:
    """`Authorization: Bearer` (any case of the scheme) and `X-API-Key` both carry the key."""
    key = make_key(services_of(app).sessions, scopes=["jobs"])
    for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": f"bearer {key}"}, {"X-API-Key": key}):
        assert _plain(app).get("/v1/jobs", headers=headers).status_code == 200, headers


def test_a_key_without_the_routes_scope_is_403(app: Flask) -> None:
    """A jobs-only key may submit jobs but not train, promote or manage keys: 403 insufficient-scope."""
    jobs_only = client_for(app, scopes=[JOBS])
    assert post_files(jobs_only, [png_bytes()]).status_code == 202
    assert jobs_only.get("/v1/models/mnist-cnn/report").status_code == 200  # reading models is a jobs scope
    for method, path, body in (
        ("post", "/v1/models/mnist-cnn/trainings", {"epochs": 1}),
        ("put", "/v1/models/mnist-cnn/aliases/canary", {"version": 1}),
        ("post", "/v1/keys", {"scopes": ["jobs"]}),
    ):
        resp = getattr(jobs_only, method)(path, json=body)
        problem = assert_problem(resp, 403, "insufficient-scope")
        assert problem["required_scope"] in (MODELS, ADMIN)
        assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    models_only = client_for(app, scopes=[MODELS])
    assert_problem(models_only.get("/v1/jobs"), 403, "insufficient-scope")
    assert models_only.put("/v1/models/mnist-cnn/aliases/canary", json={"version": 1}).status_code == 200


def test_probes_and_docs_need_no_key(app: Flask) -> None:
    """/healthz, /readyz, /openapi.json and the docs pages answer without a key; unknown paths stay 404."""
    plain = _plain(app)
    assert plain.get("/healthz").status_code == 200
    assert plain.get("/readyz").status_code in (200, 503)  # the test broker is unreachable on purpose
    assert plain.get("/openapi.json").status_code == 200
    assert plain.get("/docs/openapi.json").status_code == 200
    assert plain.get("/docs/").status_code == 200
    assert_problem(plain.get("/v1/nothing-here"), 404, "not-found")


def test_auth_can_be_turned_off(make_app: Any) -> None:
    """With INFERQ_AUTH_ENABLED=false every route works without a key, as the tenant "default"."""
    app = make_app(auth_enabled=False)
    resp = post_files(_plain(app), [png_bytes()])
    assert resp.status_code == 202
    assert _plain(app).get(f"/v1/jobs/{resp.get_json()['id']}").status_code == 200


def test_a_request_records_the_keys_last_use(app: Flask) -> None:
    """The first authenticated request sets the key's last_used_at."""
    key = make_key(services_of(app).sessions, scopes=["jobs"])
    _plain(app).get("/v1/jobs", headers=auth_headers(key))
    with db_session(app) as s:
        assert s.get(ApiKey, key.split("_")[1]).last_used_at is not None  # type: ignore[union-attr]


def test_every_route_is_public_or_needs_a_known_scope(app: Flask) -> None:
    """Each URL rule is public (probes, docs) or maps to jobs/models/admin; an unclassified one needs admin."""
    prefix = app.config["INFERQ_DOC_PREFIX"]
    public = {r.rule for r in app.url_map.iter_rules() if auth.is_public(r, prefix)}
    assert {"/healthz", "/readyz", "/openapi.json"} <= public
    pages = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("web.")}  # shells: data comes from /v1
    assert all(
        r.startswith("/docs") or r in {"/healthz", "/readyz", "/openapi.json", "/static/<path:filename>"} | pages
        for r in public
    )
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            assert not auth.is_public(rule, prefix) and auth.required_scope(rule.endpoint) in auth.ALL_SCOPES
    assert auth.required_scope("someone_new.route") == ADMIN
    assert set(apikeys.SCOPES) == auth.ALL_SCOPES


def test_openapi_documents_the_api_key_security(app: Flask) -> None:
    """securitySchemes name bearer and X-API-Key; secured operations list them with 401/403 answers and their
    scope; the probes declare no security."""
    spec = _plain(app).get("/openapi.json").get_json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["in"] == "header" and schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert spec["paths"]["/readyz"]["get"]["security"] == []
    secured = [op for p, item in spec["paths"].items() if p.startswith("/v1/") for op in item.values()]
    assert len(secured) >= 30
    for op in secured:
        assert op["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
        assert {"401", "403"} <= set(op["responses"])
        assert op["responses"]["401"]["content"]["application/problem+json"]
        assert op["x-required-scope"] in auth.ALL_SCOPES
    assert spec["paths"]["/v1/keys"]["post"]["x-required-scope"] == ADMIN
    assert spec["paths"]["/v1/models/{name}/trainings"]["post"]["x-required-scope"] == MODELS


def test_the_auth_lookup_never_writes_a_secret(app: Flask) -> None:
    """Authenticating many requests leaves only hashes in api_keys (no column ever holds the key)."""
    key = make_key(services_of(app).sessions, scopes=["jobs"])
    for _ in range(3):
        _plain(app).get("/v1/jobs", headers=auth_headers(key))
    session: Session
    with db_session(app) as session:
        rows = [r._asdict() for r in session.execute(ApiKey.__table__.select())]
    assert rows and not [r for r in rows if any(key.split("_", 2)[2] in str(v) for v in r.values())]


def test_a_key_revoked_elsewhere_stops_within_the_cache_time(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key revoked outside this process (`inferq keys revoke`) is still served from the KeyCache until
    INFERQ_API_KEY_CACHE_S passes, then refused; the cache holds no key, only a digest of it."""
    key = make_key(services_of(app).sessions, scopes=["jobs"])
    assert _plain(app).get("/v1/jobs", headers=auth_headers(key)).status_code == 200
    with services_of(app).sessions() as session:
        apikeys.revoke_key(session=session, key_id=key.split("_")[1], tenant_id=None)
        session.commit()
    assert _plain(app).get("/v1/jobs", headers=auth_headers(key)).status_code == 200  # remembered
    cache = services_of(app).keys
    assert all(key not in slot for slot in cache._entries)
    later = apikeys.time.monotonic() + cache.ttl_s + 0.01
    monkeypatch.setattr(apikeys.time, "monotonic", lambda: later)
    assert_problem(_plain(app).get("/v1/jobs", headers=auth_headers(key)), 401, "unauthenticated")


def test_an_unknown_key_is_never_cached(app: Flask) -> None:
    """Only keys that authenticated are remembered: a refused key is read (and refused) again each time."""
    before = len(services_of(app).keys._entries)
    for _ in range(2):
        assert_problem(
            _plain(app).get("/v1/jobs", headers={"X-API-Key": "iq_0123456789ab_" + "x" * 43}), 401, "unauthenticated"
        )
    assert len(services_of(app).keys._entries) == before
