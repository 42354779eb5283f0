"""Who is calling: API-key authentication on every route but health, readiness and the docs, and scopes.

A request carries its key as `Authorization: Bearer iq_...` or `X-API-Key: iq_...`, or comes from a browser signed
in to the web app (its session cookie names the key; unsafe methods must echo the session's CSRF token in
`X-CSRF-Token`). No key, or a key that is
malformed, unknown or revoked, is a 401 problem with `WWW-Authenticate`; a key without the route's scope is a 403.
The key's tenant is the request's tenant: every object lookup is filtered by it (another tenant's object is a 404).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, Request, Response, current_app, g, request
from werkzeug.routing import Rule

from api.deps import services
from api.problems import problem_response
from api.web_sessions import COOKIE, CSRF_HEADER, SessionStore, csrf_matches
from shared.config.errors import CsrfFailed, InsufficientScope, Unauthenticated
from shared.db.tenancy_models import ApiKey
from shared.tenancy import apikeys

log = logging.getLogger(__name__)

JOBS = "jobs"  # submit and read jobs, datasets, results and webhooks; read models
MODELS = "models"  # train, promote, upload, optimize, benchmark and export models
ADMIN = "admin"  # manage API keys
ALL_SCOPES = frozenset({JOBS, MODELS, ADMIN})

DEFAULT_TENANT = "default"
REALM = 'Bearer realm="inferq"'

# Routes anyone may call: probes and the API's own description.
METRICS_ENDPOINT = "metrics"  # public unless INFERQ_METRICS_PUBLIC=false (then it needs the admin scope)
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "openapi_json", "static"})
# The web app's pages and files: they carry no data (the page's script reads it from /v1 with the session).
WEB_BLUEPRINT = "web"
WEB_SESSIONS = "inferq_web_sessions"  # app.extensions key of the web app's SessionStore
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The scope each blueprint's routes need, then per-endpoint exceptions; any other route needs ADMIN (fail closed).
BLUEPRINT_SCOPES = {
    "jobs": JOBS,
    "scoring": JOBS,
    "datasets": JOBS,
    "webhooks": JOBS,
    "models": JOBS,
    "model_admin": MODELS,
    "keys": ADMIN,
}
ENDPOINT_SCOPES = {"model_admin.get_report": JOBS}

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer iq_...`."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same API key."},
}
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]


@dataclass(frozen=True)
class Principal:
    """The caller of a request: its tenant, the id of the key it used (None when auth is off) and its scopes."""

    tenant_id: str
    key_id: str | None
    scopes: frozenset[str]


ANONYMOUS = Principal(tenant_id=DEFAULT_TENANT, key_id=None, scopes=ALL_SCOPES)


def current_principal() -> Principal:
    """The principal the auth hook set for this request (the default tenant with every scope when auth is off)."""
    principal = g.get("principal")
    return principal if isinstance(principal, Principal) else ANONYMOUS


def current_tenant() -> str:
    """The tenant of this request."""
    return current_principal().tenant_id


def is_public(rule: Rule, doc_prefix: str) -> bool:
    """True for routes that need no key: health, readiness, /openapi.json and everything under the docs prefix."""
    docs = doc_prefix.rstrip("/")
    if rule.endpoint in PUBLIC_ENDPOINTS or rule.endpoint.startswith(WEB_BLUEPRINT + "."):
        return True
    return bool(docs) and (rule.rule == docs or rule.rule.startswith(docs + "/"))


def required_scope(endpoint: str) -> str:
    """The scope a route needs (ADMIN for a route nobody classified, so a new route is closed until it is)."""
    if endpoint in ENDPOINT_SCOPES:
        return ENDPOINT_SCOPES[endpoint]
    return BLUEPRINT_SCOPES.get(endpoint.split(".", 1)[0], ADMIN)


def bearer_token(req: Request) -> str | None:
    """The key of a request: `Authorization: Bearer <key>`, else `X-API-Key: <key>`; None when neither is sent."""
    scheme, _, value = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return req.headers.get("X-API-Key", "").strip() or None


def _principal_for(token: str) -> Principal | None:
    """The key's principal: from this process's KeyCache (INFERQ_API_KEY_CACHE_S), else looked up (noting its use,
    at most once a minute) and remembered; None if it does not authenticate (never remembered)."""
    svc = services()
    cached = svc.keys.get(token)
    if isinstance(cached, Principal):
        return cached
    principal = _look_up(token)
    if principal is not None:
        svc.keys.put(token, principal)
    return principal


def _look_up(token: str) -> Principal | None:
    """Read the key from the database (and note its use, at most once a minute)."""
    svc = services()
    with svc.sessions() as session:
        key = apikeys.authenticate(session=session, token=token)
        if key is None:
            return None
        principal = Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))
        if not apikeys.needs_touch(key, svc.settings.api_key_touch_interval_s):
            return principal  # no write at all on most requests
        try:
            if apikeys.touch(session=session, key_id=key.id, min_interval_s=svc.settings.api_key_touch_interval_s):
                session.commit()
        except Exception:  # last_used_at is bookkeeping: never fail a request over it
            session.rollback()
            log.warning("recording the use of API key %s failed", key.id, exc_info=True)
    return principal


def principal_of_key(key_id: str) -> Principal | None:
    """The principal of a live key found by its id (a web session's), or None when it is gone or revoked."""
    with services().sessions() as session:
        key = session.get(ApiKey, key_id)
        if key is None or key.revoked_at is not None:
            return None
        return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))


def _session_principal() -> Principal | Response | None:
    """The principal of a signed-in browser; a 403 problem when an unsafe request lacks the session's CSRF token;
    None when the cookie names no live session (then the request is judged as one without a key)."""
    store = current_app.extensions.get(WEB_SESSIONS)
    if not isinstance(store, SessionStore):
        return None
    try:
        web = store.get(request.cookies.get(COOKIE))
    except redis.RedisError:
        log.warning("reading a web session failed; the request is treated as one without a key", exc_info=True)
        return None
    if web is None or web.key_id is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_matches(web, request.headers.get(CSRF_HEADER)):
        detail = f"a signed-in browser must send the session's CSRF token in {CSRF_HEADER} with this method"
        return problem_response(CsrfFailed(detail).to_problem(request.path))
    return principal_of_key(web.key_id)


def _unauthenticated(detail: str, *, invalid: bool) -> Response:
    challenge = REALM + (', error="invalid_token"' if invalid else "")
    return problem_response(Unauthenticated(detail).to_problem(request.path), {"WWW-Authenticate": challenge})


def authenticate_request() -> None:
    """The first before-request hook: set g.principal, or keep the 401/403 for `answer_refusal`.

    The refusal is answered by a later hook, after the rate limiter has counted the request (per client
    address when the key is missing or not valid), so guessing keys is rate limited too.
    """
    refusal = _authenticate()
    if refusal is not None:
        g.auth_refusal = refusal


def answer_refusal() -> Response | None:
    """The before-request hook after the rate limiter: answer the refusal `authenticate_request` kept, if any."""
    refusal: Response | None = g.pop("auth_refusal", None)
    return refusal


def _authenticate() -> Response | None:
    """Set g.principal, or return the 401/403 answer."""
    rule = request.url_rule
    if rule is None or is_public(rule, current_app.config["INFERQ_DOC_PREFIX"]):  # no route (404/405) or public
        return None
    if rule.endpoint == METRICS_ENDPOINT and services().settings.metrics_public:  # INFERQ_METRICS_PUBLIC
        return None
    endpoint = rule.endpoint
    if not services().settings.auth_enabled:
        g.principal = ANONYMOUS
        return None
    token = bearer_token(request)
    if token is None and request.cookies.get(COOKIE):
        outcome = _session_principal()
        if isinstance(outcome, Principal):
            return _authorize(outcome, endpoint)
        if outcome is not None:
            return outcome
    if token is None:
        return _unauthenticated(
            "this route needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>` "
            "(`inferq keys create` makes one)",
            invalid=False,
        )
    principal = _principal_for(token)
    if principal is None:
        return _unauthenticated("the API key is not valid (malformed, unknown or revoked)", invalid=True)
    return _authorize(principal, endpoint)


def _authorize(principal: Principal, endpoint: str) -> Response | None:
    """Set g.principal; a 403 when its key lacks the route's scope."""
    g.principal = principal
    needed = required_scope(endpoint)
    if needed not in principal.scopes:
        problem = InsufficientScope(
            f"this route needs the {needed!r} scope; the key has {', '.join(sorted(principal.scopes))}",
            required_scope=needed,
        ).to_problem(request.path)
        return problem_response(problem, {"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{needed}"'})
    return None


def register_auth(app: Flask, doc_prefix: str) -> None:
    """Authenticate every request before its view (public routes excepted); `register_limits` must follow, then
    `register_auth_refusal` (so refused requests are rate limited per client address)."""
    app.config["INFERQ_DOC_PREFIX"] = doc_prefix
    app.before_request(authenticate_request)


def register_auth_refusal(app: Flask) -> None:
    """Answer the refusals `authenticate_request` kept: registered after the rate limiter."""
    app.before_request(answer_refusal)


# --- the OpenAPI document ------------------------------------------------------------------------------------


def _openapi_path(rule: Rule) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def document_security(spec: dict[str, Any], rules: Iterable[Rule], doc_prefix: str) -> dict[str, Any]:
    """The spec with the API-key security schemes, each operation's security and scope, and its 401/403 answers."""
    spec = copy.deepcopy(spec)
    spec.setdefault("components", {})["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    by_op = {(_openapi_path(r), m.lower()): r for r in rules for m in (r.methods or ())}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            rule = by_op.get((path, method))
            if not isinstance(op, dict) or rule is None:
                continue
            if is_public(rule, doc_prefix):
                op["security"] = []
                continue
            scope = required_scope(rule.endpoint)
            op["security"] = copy.deepcopy(SECURITY)
            op["x-required-scope"] = scope
            responses = op.setdefault("responses", {})
            responses["401"] = {"description": "No API key, or an invalid or revoked one.", "content": problem}
            responses["403"] = {"description": f"The API key lacks the {scope!r} scope.", "content": problem}
    spec["security"] = copy.deepcopy(SECURITY)
    return spec
