"""Abuse limits of the API: JSON nesting, rate limits per API key (Flask-Limiter on Redis), per-tenant queue caps.

Body size and multipart part counts are Werkzeug's MAX_CONTENT_LENGTH / MAX_FORM_PARTS (set in api.app, rendered
as 413 problems by api.problems); image limits live in shared.inputs.imaging; the queue caps in shared.tenancy.quotas.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many

from api.auth import current_principal, is_public
from api.problems import problem_response
from shared.config.errors import RateLimited
from shared.config.settings import Settings

log = logging.getLogger(__name__)

RATE_KEY_PREFIX = "inferq-rate"  # Redis keys of the limiter, next to Celery's in the broker database


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, where a body nested too deeply for the parser is a 400 like any malformed JSON (not a 500)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON body is nested too deeply") from None


def register_limits(app: Flask, settings: Settings, doc_prefix: str) -> Limiter:
    """JSON nesting and the rate limiter of `app` (call after register_auth: keys need a principal). The queue caps
    are checked by each route that queues a job (shared.tenancy.quotas.admit_job)."""
    app.json = SafeJSONProvider(app)
    return _rate_limiter(app, settings, doc_prefix)


def _rate_limiter(app: Flask, settings: Settings, doc_prefix: str) -> Limiter:
    try:
        parse_many(settings.rate_limit)
    except ValueError as exc:
        raise ValueError(f"INFERQ_RATE_LIMIT {settings.rate_limit!r} is not a rate limit like '600/minute'") from exc
    limiter = Limiter(
        _rate_key,
        application_limits=[settings.rate_limit],  # one budget per key over every route
        storage_uri=settings.broker_url(),
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2},
        strategy="sliding-window-counter",
        key_prefix=RATE_KEY_PREFIX,
        in_memory_fallback_enabled=True,  # Redis down: limit per process rather than refuse or stop limiting
        swallow_errors=True,
        headers_enabled=False,  # our own headers below: Flask-Limiter would put Retry-After on every answer
        enabled=settings.rate_limit_enabled,
    )

    @limiter.request_filter
    def _exempt() -> bool:  # the routes anyone may call: health, readiness and the API docs
        rule = request.url_rule
        return rule is not None and is_public(rule, doc_prefix)

    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        retry_after = 1
        if current is not None:  # never longer than the limit's own window (the reset time is rounded up)
            retry_after = min(max(1, math.ceil(current.reset_at - time.time())), current.limit.get_expiry())
        who = "API key" if current_principal().key_id else "client address"
        error = RateLimited(
            f"more than {exc.description} requests from this {who} (INFERQ_RATE_LIMIT); retry in {retry_after} s",
            retry_after_s=retry_after,
            limit=str(exc.description),
        )
        return problem_response(error.to_problem(request.path), {**error.headers, **_rate_headers(limiter)})

    @app.after_request
    def _add_rate_headers(resp: Response) -> Response:
        if resp.status_code != 429:
            resp.headers.update(_rate_headers(limiter))
        return resp

    return limiter


def _rate_key() -> str:
    """Requests are counted per API key, or per client address when the request carries no valid key."""
    key_id = current_principal().key_id
    return f"key:{key_id}" if key_id else f"addr:{request.remote_addr or 'unknown'}"


def _rate_headers(limiter: Limiter) -> dict[str, str]:
    """X-RateLimit-Limit / -Remaining / -Reset of the tightest limit this request was counted against."""
    current = limiter.current_limit
    if current is None:
        return {}
    try:
        return {
            "X-RateLimit-Limit": str(current.limit.amount),
            "X-RateLimit-Remaining": str(current.remaining),
            "X-RateLimit-Reset": str(current.reset_at),
        }
    except Exception:  # the storage went away between the check and now: the headers are a courtesy
        log.debug("rate limit headers unavailable", exc_info=True)
        return {}


# --- the OpenAPI document ------------------------------------------------------------------------------------

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}


def document_limits(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The spec with every limited operation's 429 answer documented (and, on POSTs, the queue caps)."""
    spec = copy.deepcopy(spec)
    for item in spec.get("paths", {}).values():
        for method, op in item.items():
            if not isinstance(op, dict) or op.get("security") == []:  # public (api.auth): never limited
                continue
            responses = op.setdefault("responses", {})
            what = f"More than INFERQ_RATE_LIMIT ({settings.rate_limit}) requests from this key"
            if method == "post":
                what += ", or the tenant's queue is full (INFERQ_MAX_QUEUED_JOBS/ITEMS_PER_TENANT)"
            responses["429"] = {
                "description": what + ".",
                "headers": {"Retry-After": _RETRY_AFTER},
                "content": _PROBLEM,
            }
    return spec
