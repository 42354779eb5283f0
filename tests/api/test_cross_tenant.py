"""Tenant isolation: every object route of the app's URL map, called with another tenant's ids, is a 404 that
looks exactly like a missing object; list routes never show another tenant's objects.

The routes are enumerated from the URL map, so a new route with a path parameter is covered (or fails here until
the test knows how to fill that parameter)."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

from api.auth import is_public
from shared.config.status import JobStatus
from shared.db.engine import session_scope
from shared.jobs import lifecycle as jobstore
from tests.access import client_for, make_key
from tests.dataset_factories import digits, npy_bytes
from tests.factories import add_model_version, png_bytes, post_files, services_of

HOOK = "https://hooks.example.com/inferq"
PRIVATE_MODEL = "acme-secret"
# A valid body for each route that validates one before it looks the object up (so the lookup is what answers).
BODIES: dict[str, dict[str, Any]] = {
    "model_admin.put_alias": {"json": {"version": 1}},
    "model_admin.create_training": {"json": {"epochs": 1}},
    "model_admin.create_optimization": {"json": {"method": "int8"}},
    "model_admin.create_export": {"json": {}},
    "model_admin.create_evaluation": {"json": {}},
    "model_admin.create_upload": {
        "data": {"file": (io.BytesIO(b"not a model"), "m.keras"), "labels": '["a", "b"]'},
        "content_type": "multipart/form-data",
    },
}
# Routes that create a model under the name in their path: a name nobody has makes a new model (202), so there is
# no "missing" answer to compare with; another tenant's private name is a 404 model-not-found all the same.
CREATE_BY_NAME = {"model_admin.create_training", "model_admin.create_upload"}


@dataclass
class Acme:
    """Tenant acme's objects, and how to fill each path parameter with them (or with ids nobody has)."""

    ids: dict[str, str]
    missing: dict[str, str]
    secrets: list[str]


def _finish(app: Flask, job_id: str) -> None:
    """Move a job to succeeded (queued -> running -> succeeded), recording its webhook deliveries."""
    with session_scope(services_of(app).sessions) as s:
        for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            assert jobstore.set_status(s, uuid.UUID(job_id), status)


@pytest.fixture
def acme(app: Flask) -> tuple[Acme, FlaskClient]:
    """Tenant acme with a finished classify job (with a webhook), a dataset and finished score job, a webhook
    endpoint and its deliveries, an API key, and a private model with a private alias."""
    client = client_for(app, tenant_id="acme")
    endpoint = client.post("/v1/webhooks/endpoints", json={"url": HOOK, "events": ["completed"]}).get_json()
    job = post_files(client, [png_bytes()], webhook=HOOK).get_json()
    _finish(app, job["id"])
    ds = client.post(
        "/v1/datasets?filename=d.npy", data=npy_bytes(digits(8)[0]), content_type="application/octet-stream"
    ).get_json()
    score = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}).get_json()
    _finish(app, score["id"])
    deliveries = client.get(f"/v1/webhooks/deliveries?job_id={job['id']}").get_json()["data"]
    assert deliveries, "the finished job with a webhook should have deliveries"
    other_key = make_key(services_of(app).sessions, tenant_id="acme", scopes=["jobs"], name="to-revoke")
    with session_scope(services_of(app).sessions) as s:
        add_model_version(s, name=PRIVATE_MODEL, aliases=("production",), tenant_id="acme")
    secret = client.post("/v1/webhooks/signing-secret/reveal").get_json()["secret"]
    ids = {
        "job_id": job["id"],
        "score_job_id": score["id"],
        "dataset_id": ds["id"],
        "endpoint_id": endpoint["id"],
        "delivery_id": deliveries[0]["id"],
        "key_id": other_key.split("_")[1],
        "name": PRIVATE_MODEL,
        "version": "1",
        "alias": "production",
    }
    missing = {
        "job_id": str(uuid.uuid4()),
        "score_job_id": str(uuid.uuid4()),
        "dataset_id": str(uuid.uuid4()),
        "endpoint_id": str(uuid.uuid4()),
        "delivery_id": str(uuid.uuid4()),
        "key_id": "0123456789ab",
        "name": "nobody-has-this-model",
        "version": "1",
        "alias": "production",
    }
    return Acme(ids, missing, [endpoint["secret"], secret, other_key]), client


def _object_routes(app: Flask) -> list[tuple[Rule, str]]:
    """(rule, method) of every non-public route with a path parameter, GETs first and DELETEs last."""
    order = {"get": 0, "put": 1, "post": 1, "patch": 1, "delete": 2}
    routes = [
        (rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.arguments and not is_public(rule, app.config["INFERQ_DOC_PREFIX"])
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]
    return sorted(routes, key=lambda rm: (order[rm[1]], rm[0].rule))


def _url(rule: Rule, values: dict[str, str]) -> str:
    """The rule's path with each parameter filled (a score job's id for the score-file routes)."""
    unknown = sorted(set(rule.arguments) - set(values))
    assert not unknown, f"{rule.rule}: teach test_cross_tenant an id for {unknown}"
    filled = dict(values)
    if rule.endpoint.startswith("scoring."):
        filled["job_id"] = values["score_job_id"]
    path = rule.rule
    for arg in rule.arguments:
        path = path.replace(f"<{arg}>", filled[arg]).replace(f"<int:{arg}>", filled[arg])
    return path


def _call(client: FlaskClient, method: str, rule: Rule, values: dict[str, str]) -> TestResponse:
    kwargs = dict(BODIES.get(rule.endpoint, {}))
    if "data" in kwargs:  # a fresh file object per request
        form = kwargs["data"]
        kwargs["data"] = {
            k: (io.BytesIO(v[0].getvalue()), v[1]) if isinstance(v, tuple) else v for k, v in form.items()
        }
    resp: TestResponse = getattr(client, method)(_url(rule, values), **kwargs)
    resp.get_data()  # read a streamed body to its end
    resp.close()
    return resp


def test_every_object_route_hides_another_tenants_objects(app: Flask, acme: tuple[Acme, FlaskClient]) -> None:
    """With acme's ids, tenant globex (every scope) gets 404 on every object route, with the same problem type
    as for an id nobody has; acme itself gets something other than 404 on each (the ids are right)."""
    objects, acme_client = acme
    globex = client_for(app, tenant_id="globex")
    routes = _object_routes(app)
    assert len(routes) >= 20
    for rule, method in routes:
        theirs = _call(globex, method, rule, objects.ids)
        where = f"{method.upper()} {rule.rule}"
        assert theirs.status_code == 404, f"{where}: {theirs.status_code} {theirs.get_data(as_text=True)}"
        if rule.endpoint not in CREATE_BY_NAME:
            missing = _call(globex, method, rule, objects.missing)
            assert missing.status_code == 404, f"{where} (missing id): {missing.get_data(as_text=True)}"
            assert theirs.get_json()["type"] == missing.get_json()["type"], where
        assert not [s for s in objects.secrets if s in theirs.get_data(as_text=True)], where
    for rule, method in routes:
        own = _call(acme_client, method, rule, objects.ids)
        assert own.status_code != 404, f"acme {method.upper()} {rule.rule}: {own.get_data(as_text=True)}"


def test_list_routes_never_show_another_tenants_objects(app: Flask, acme: tuple[Acme, FlaskClient]) -> None:
    """Every GET route without parameters, called by globex, mentions none of acme's ids, names or secrets."""
    objects, _ = acme
    globex = client_for(app, tenant_id="globex")
    lists = [
        rule
        for rule in app.url_map.iter_rules()
        if not rule.arguments and "GET" in (rule.methods or ()) and rule.rule.startswith("/v1/")
    ]
    assert {r.rule for r in lists} >= {"/v1/jobs", "/v1/datasets", "/v1/models", "/v1/keys", "/v1/webhooks/endpoints"}
    leaks = [*(v for k, v in objects.ids.items() if k not in ("version", "alias")), *objects.secrets]
    for rule in lists:
        body = globex.get(rule.rule).get_data(as_text=True)
        assert not [v for v in leaks if v in body], rule.rule
    filtered = globex.get(f"/v1/webhooks/deliveries?job_id={objects.ids['job_id']}").get_json()
    assert filtered["data"] == []


def test_private_models_are_not_usable_by_another_tenant(app: Flask, acme: tuple[Acme, FlaskClient]) -> None:
    """globex cannot classify with acme's model (404 like a missing one); acme's own alias of the public model
    changes what acme resolves, never what globex does."""
    _, acme_client = acme
    globex = client_for(app, tenant_id="globex")
    for ref in (PRIVATE_MODEL, f"{PRIVATE_MODEL}:1", f"{PRIVATE_MODEL}@production"):
        resp = post_files(globex, [png_bytes()], model=ref)
        assert resp.status_code == 404 and resp.get_json()["type"].endswith("model-not-found"), ref
    with session_scope(services_of(app).sessions) as s:
        add_model_version(s, aliases=(), tenant_id="acme")  # mnist-cnn:2, acme's own
    assert acme_client.put("/v1/models/mnist-cnn/aliases/production", json={"version": 2}).status_code == 200
    assert acme_client.get("/v1/models/mnist-cnn").get_json()["aliases"] == {"production": 2}
    globex_view = globex.get("/v1/models/mnist-cnn").get_json()
    assert globex_view["aliases"] == {"production": 1} and [v["version"] for v in globex_view["versions"]] == [1]
    assert_404 = globex.put("/v1/models/mnist-cnn/aliases/production", json={"version": 2})
    assert assert_404.status_code == 404
