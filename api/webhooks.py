"""/v1/webhooks: endpoints (secret shown once, rotation), the per-job signing secret, and the delivery log."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from flask import Request, Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from api.auth import current_tenant
from api.deps import db, services
from api.openapi import QueryModel
from shared.config.errors import ValidationFailed, WebhookDeliveryNotFound, WebhookEndpointNotFound
from shared.config.settings import Settings
from shared.db.models import Job
from shared.db.webhook_models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.schemas.public import Problem
from shared.webhooks import outbox as hooks
from shared.webhooks.outbox import WebhookEvent
from shared.webhooks.ssrf import check_url, parse_allow_cidrs

bp = APIBlueprint(
    "webhooks",
    __name__,
    url_prefix="/v1/webhooks",
    abp_tags=[Tag(name="webhooks")],
    abp_responses={"404": Problem, "422": Problem},
)


class EndpointCreate(BaseModel):
    url: str = Field(description="An http(s) URL on the public internet (or in INFERQ_WEBHOOK_ALLOW_CIDRS).")
    events: list[WebhookEvent] = Field(default=[WebhookEvent.COMPLETED], min_length=1)


class EndpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    events: list[str]
    created_at: datetime
    previous_secret_expires_at: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None

    @classmethod
    def of(cls, ep: WebhookEndpoint) -> EndpointPublic:
        """Render an endpoint (never its secret: EndpointPublic has no such field)."""
        return cls.model_validate(ep)


class EndpointWithSecret(EndpointPublic):
    secret: str = Field(description="Shown only in this answer: verify deliveries with it (standardwebhooks).")


class EndpointsPublic(BaseModel):
    data: list[EndpointPublic]


class SecretPublic(BaseModel):
    secret: str = Field(description="Shown only in this answer.")
    previous_secret_expires_at: datetime | None = None


class AttemptPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    at: datetime
    status_code: int | None
    latency_ms: float
    response_excerpt: str | None
    error: str | None
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, a: WebhookAttempt) -> AttemptPublic:
        """Render one attempt."""
        return cls.model_validate(a)


class DeliveryPublic(BaseModel):
    id: uuid.UUID
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt.")
    job_id: uuid.UUID
    endpoint_id: uuid.UUID | None
    url: str
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryPublic:
        """Render a delivery (without its attempts)."""
        return cls(
            id=d.id,
            webhook_id=d.msg_id,
            job_id=d.job_id,
            endpoint_id=d.endpoint_id,
            url=d.url,
            event=d.event,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
        )


class DeliveryDetail(DeliveryPublic):
    payload: dict[str, Any]
    attempt_log: list[AttemptPublic]


class DeliveriesPublic(BaseModel):
    data: list[DeliveryPublic]


class EndpointPath(BaseModel):
    endpoint_id: str


class DeliveryPath(BaseModel):
    delivery_id: str


class DeliveriesQuery(QueryModel):
    job_id: str | None = Field(None, description="Only deliveries of this job.", json_schema_extra={"format": "uuid"})
    endpoint_id: str | None = Field(
        None, description="Only deliveries to this endpoint.", json_schema_extra={"format": "uuid"}
    )
    limit: int = Field(50, ge=1, le=500)


def _uuid(text: str, not_found: type[Exception], what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise not_found(f"{what} {text!r} does not exist (ids are UUIDs)") from None


def checked_url(url: str, settings: Settings) -> str:
    """The URL if a webhook may use it, else WebhookUrlRefused (422 webhook-url-refused)."""
    check_url(url, allow=parse_allow_cidrs(settings.webhook_allow_cidrs), max_length=settings.webhook_max_url_length)
    return url


def _events(raw: Any) -> list[str]:
    if raw in (None, ""):
        return list(hooks.DEFAULT_EVENTS)
    if isinstance(raw, str):
        text = raw.strip()
        raw = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
    if not isinstance(raw, list) or not raw:
        raise ValidationFailed("webhook_events_filter must be a non-empty list of start, progress, completed")
    allowed = {e.value for e in WebhookEvent}
    bad = [e for e in raw if e not in allowed]
    if bad:
        raise ValidationFailed(f"webhook_events_filter has unknown events {bad}; use start, progress, completed")
    return sorted(set(raw), key=[e.value for e in WebhookEvent].index)


def read_job_webhook(req: Request, settings: Settings) -> dict[str, Any] | None:
    """The `webhook` and `webhook_events_filter` of POST /v1/jobs (JSON fields or multipart form fields;
    the filter as a JSON list or comma-separated), validated before anything is written."""
    raw = req.get_json(silent=True) if req.is_json else req.form
    if not raw or not hasattr(raw, "get"):
        return None
    url, events = raw.get("webhook"), raw.get("webhook_events_filter")
    if url in (None, ""):
        if events not in (None, ""):
            raise ValidationFailed("webhook_events_filter needs a webhook URL")
        return None
    if not isinstance(url, str):
        raise ValidationFailed("webhook must be a URL string")
    try:
        return {"url": checked_url(url, settings), "events": _events(events)}
    except json.JSONDecodeError:
        raise ValidationFailed("webhook_events_filter is neither a JSON list nor comma-separated names") from None


def attach_job_webhook(session: Any, job: Job, webhook: dict[str, Any] | None) -> None:
    """Store the job's webhook in its params and make sure the tenant has a signing key (before commit)."""
    if webhook is None:
        return
    job.params = {**job.params, "webhook": webhook}
    hooks.signing_key(session=session, tenant_id=job.tenant_id)
    session.flush()


@bp.post("/endpoints", summary="Register a webhook endpoint", responses={"201": EndpointWithSecret})
def create_endpoint(body: EndpointCreate) -> tuple[Response, int]:
    """Every job's chosen events go to this URL, signed with the secret in this answer (shown only here)."""
    session = db()
    url = checked_url(body.url, services().settings)
    ep = hooks.create_endpoint(
        session=session, tenant_id=current_tenant(), url=url, events=[e.value for e in body.events]
    )
    session.commit()
    out = EndpointWithSecret.model_validate(ep)  # the one answer that carries the secret
    return jsonify(out.model_dump(mode="json")), 201


@bp.get("/endpoints", summary="List webhook endpoints", responses={"200": EndpointsPublic})
def list_endpoints() -> Response:
    """The tenant's endpoints; secrets are never shown again."""
    rows = hooks.list_endpoints(session=db(), tenant_id=current_tenant())
    return jsonify(EndpointsPublic(data=[EndpointPublic.of(e) for e in rows]).model_dump(mode="json"))


@bp.get("/endpoints/<endpoint_id>", summary="Get a webhook endpoint", responses={"200": EndpointPublic})
def get_endpoint(path: EndpointPath) -> Response:
    """One endpoint, without its secret."""
    eid = _uuid(path.endpoint_id, WebhookEndpointNotFound, "webhook endpoint")
    ep = hooks.get_endpoint(session=db(), endpoint_id=eid, tenant_id=current_tenant())
    return jsonify(EndpointPublic.of(ep).model_dump(mode="json"))


@bp.delete("/endpoints/<endpoint_id>", summary="Delete a webhook endpoint", responses={"204": None})
def delete_endpoint(path: EndpointPath) -> tuple[str, int]:
    """No further deliveries go to it; its pending ones are canceled; its log stays."""
    session = db()
    eid = _uuid(path.endpoint_id, WebhookEndpointNotFound, "webhook endpoint")
    hooks.delete_endpoint(session=session, endpoint_id=eid, tenant_id=current_tenant())
    session.commit()
    return "", 204


@bp.post("/endpoints/<endpoint_id>/rotate", summary="Rotate an endpoint's secret", responses={"200": SecretPublic})
def rotate_endpoint(path: EndpointPath) -> Response:
    """A new secret (shown once); the old one still signs, as a second signature, for the overlap period."""
    session = db()
    eid = _uuid(path.endpoint_id, WebhookEndpointNotFound, "webhook endpoint")
    ep = hooks.rotate_endpoint_secret(
        session=session,
        endpoint_id=eid,
        tenant_id=current_tenant(),
        overlap_s=services().settings.webhook_secret_overlap_s,
    )
    session.commit()
    return jsonify(
        SecretPublic(secret=ep.secret, previous_secret_expires_at=ep.previous_secret_expires_at).model_dump(mode="json")
    )


@bp.post(
    "/signing-secret/reveal",
    summary="Show the per-job webhook secret once",
    responses={"200": SecretPublic, "409": Problem},
)
def reveal_signing_secret() -> Response:
    """The secret that signs jobs' own `webhook` deliveries; 409 after the first time (rotate for a new one)."""
    session = db()
    key = hooks.reveal_signing_secret(session=session, tenant_id=current_tenant())
    session.commit()
    return jsonify(SecretPublic(secret=key.secret).model_dump(mode="json"))


@bp.post("/signing-secret/rotate", summary="Rotate the per-job webhook secret", responses={"200": SecretPublic})
def rotate_signing_secret() -> Response:
    """A new per-job secret (shown once); the old one still signs for the overlap period."""
    session = db()
    key = hooks.rotate_signing_secret(
        session=session, tenant_id=current_tenant(), overlap_s=services().settings.webhook_secret_overlap_s
    )
    session.commit()
    return jsonify(
        SecretPublic(secret=key.secret, previous_secret_expires_at=key.previous_secret_expires_at).model_dump(
            mode="json"
        )
    )


@bp.get("/deliveries", summary="List webhook deliveries, newest first", responses={"200": DeliveriesPublic})
def list_deliveries(query: DeliveriesQuery) -> Response:
    """Filter by job or endpoint; each delivery's attempts are at /v1/webhooks/deliveries/{id}."""
    job_id = _uuid(query.job_id, ValidationFailed, "job") if query.job_id is not None else None
    ep_id = _uuid(query.endpoint_id, ValidationFailed, "webhook endpoint") if query.endpoint_id is not None else None
    rows = hooks.deliveries_page(
        session=db(), tenant_id=current_tenant(), job_id=job_id, endpoint_id=ep_id, limit=query.limit
    )
    return jsonify(DeliveriesPublic(data=[DeliveryPublic.of(d) for d in rows]).model_dump(mode="json"))


def _detail(session: Any, d: WebhookDelivery) -> DeliveryDetail:
    attempts = [AttemptPublic.of(a) for a in hooks.attempts_of(session, d.id)]
    return DeliveryDetail(**DeliveryPublic.of(d).model_dump(), payload=json.loads(d.body), attempt_log=attempts)


@bp.get("/deliveries/<delivery_id>", summary="Get a delivery with its attempts", responses={"200": DeliveryDetail})
def get_delivery(path: DeliveryPath) -> Response:
    """The payload and every attempt: time, status code, latency, response excerpt, next attempt."""
    session = db()
    did = _uuid(path.delivery_id, WebhookDeliveryNotFound, "webhook delivery")
    d = hooks.get_delivery(session=session, delivery_id=did, tenant_id=current_tenant())
    return jsonify(_detail(session, d).model_dump(mode="json"))


@bp.post("/deliveries/<delivery_id>/redeliver", summary="Send a delivery again", responses={"202": DeliveryDetail})
def redeliver(path: DeliveryPath) -> tuple[Response, int]:
    """The dispatcher sends it again soon, with the same webhook-id and payload and a fresh signature."""
    session = db()
    did = _uuid(path.delivery_id, WebhookDeliveryNotFound, "webhook delivery")
    d = hooks.redeliver(session=session, delivery_id=did, tenant_id=current_tenant())
    session.commit()
    return jsonify(_detail(session, d).model_dump(mode="json")), 202
