"""Webhooks: events, Standard Webhooks signing, the outbox hook of job state changes, and endpoint/secret data."""

from __future__ import annotations

import base64
import json
import secrets as secrets_lib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from shared.config.errors import WebhookDeliveryNotFound, WebhookEndpointNotFound, WebhookSecretAlreadyShown
from shared.config.status import JobKind, JobStatus
from shared.db.models import Job, JobItem, utcnow
from shared.db.webhook_models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookSigningKey
from shared.schemas.public import JobPublic


class WebhookEvent(StrEnum):
    START = "start"
    PROGRESS = "progress"
    COMPLETED = "completed"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


DEFAULT_EVENTS = (WebhookEvent.COMPLETED.value,)


# --- signing ------------------------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form (whsec_ + base64 of 24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets_lib.token_bytes(24)).decode()


def new_msg_id() -> str:
    """A webhook-id: the same on every attempt of one delivery, so receivers can drop duplicates."""
    return f"msg_{uuid.uuid4().hex}"


def signature_header(msg_id: str, timestamp: int, body: str, signing_secrets: Sequence[str]) -> str:
    """The webhook-signature value: one `v1,<base64>` per secret, space-separated (several during a rotation)."""
    ts = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(s).sign(msg_id, ts, body) for s in signing_secrets)


def signed_headers(msg_id: str, timestamp: int, body: str, signing_secrets: Sequence[str]) -> dict[str, str]:
    """Every header of one delivery attempt (a fresh timestamp and signature each time)."""
    return {
        "content-type": "application/json",
        "user-agent": "inferq-webhooks/0.1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(msg_id, timestamp, body, signing_secrets),
    }


def active_secrets(secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime) -> list[str]:
    """The current secret, plus the previous one while its overlap period lasts."""
    if previous and previous_expires_at is not None and previous_expires_at > now:
        return [secret, previous]
    return [secret]


# --- the outbox hook (called by shared.jobs.lifecycle in the transaction of the state change) -----------------------


def on_status_change(session: Session, job_id: uuid.UUID, new: JobStatus) -> None:
    """After a successful compare-and-set: queue `completed` for a terminal status, `start` for running."""
    if new.is_terminal():
        record_job_event(session, job_id, WebhookEvent.COMPLETED)
    elif new is JobStatus.RUNNING:
        record_job_event(session, job_id, WebhookEvent.START, once=True)


def on_started(session: Session, job_id: uuid.UUID) -> None:
    """After start_attempt: queue `start` once per job (a redelivered task sends no second one)."""
    record_job_event(session, job_id, WebhookEvent.START, once=True)


def on_progress(session: Session, job_id: uuid.UUID, *, min_interval_s: float) -> None:
    """After the item counts changed: queue `progress`, at most one per job per `min_interval_s`
    (INFERQ_WEBHOOK_PROGRESS_INTERVAL_S)."""
    record_job_event(session, job_id, WebhookEvent.PROGRESS, progress_interval_s=min_interval_s)


def tenants_listening(session: Session, tenants: set[str]) -> set[str]:
    """Which of these tenants have at least one live webhook endpoint."""
    q = (
        select(WebhookEndpoint.tenant_id)
        .where(WebhookEndpoint.tenant_id.in_(tenants))
        .where(WebhookEndpoint.deleted_at.is_(None), WebhookEndpoint.disabled_at.is_(None))
        .distinct()
    )
    return set(session.scalars(q)) if tenants else set()


def _targets(session: Session, job: Job, event: WebhookEvent) -> list[tuple[str, uuid.UUID | None]]:
    out: list[tuple[str, uuid.UUID | None]] = []
    own = (job.params or {}).get("webhook")
    if isinstance(own, dict) and own.get("url") and event.value in own.get("events", DEFAULT_EVENTS):
        out.append((str(own["url"]), None))
    q = select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == job.tenant_id,
        WebhookEndpoint.deleted_at.is_(None),
        WebhookEndpoint.disabled_at.is_(None),
    )
    out.extend((ep.url, ep.id) for ep in session.scalars(q) if event.value in ep.events)
    return out


def event_body(job: Job, event: WebhookEvent, items: list[JobItem] | None, now: datetime) -> str:
    """The delivery body: {type, timestamp, data} with data = the job as GET /v1/jobs/{id} shows it."""
    data = JobPublic.of(job, items).model_dump(mode="json")
    return json.dumps({"type": f"job.{event.value}", "timestamp": now.isoformat(), "data": data})


def record_job_event(
    session: Session, job_id: uuid.UUID, event: WebhookEvent, *, once: bool = False, progress_interval_s: float = 0.0
) -> int:
    """Insert one outbox row per receiver that wants `event` for this job, in the caller's transaction (`progress`
    only if the job had none in the last `progress_interval_s` seconds)."""
    job = session.execute(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).scalar()
    if job is None:
        return 0
    targets = _targets(session, job, event)
    if not targets:
        return 0
    now = utcnow()
    seen = select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id, WebhookDelivery.event == event.value)
    if once and session.scalar(select(exists(seen))):
        return 0
    if event is WebhookEvent.PROGRESS:
        cutoff = now - timedelta(seconds=progress_interval_s)
        if session.scalar(select(exists(seen.where(WebhookDelivery.created_at > cutoff)))):
            return 0
    items = None
    if JobStatus(job.status).is_terminal() and job.kind == JobKind.CLASSIFY.value:  # bounded by the image limit
        items = list(session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.idx)))
    body = event_body(job, event, items, now)
    session.add_all(
        WebhookDelivery(
            msg_id=new_msg_id(),
            tenant_id=job.tenant_id,
            job_id=job_id,
            endpoint_id=endpoint_id,
            url=url,
            event=event.value,
            body=body,
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=now,
            created_at=now,
        )
        for url, endpoint_id in targets
    )
    session.flush()
    return len(targets)


# --- endpoints and secrets (the API's data functions) --------------------------------------------------------


def create_endpoint(*, session: Session, tenant_id: str, url: str, events: Sequence[str]) -> WebhookEndpoint:
    """Register an endpoint with a new secret (the caller shows the secret once and never again)."""
    ep = WebhookEndpoint(
        id=uuid.uuid4(), tenant_id=tenant_id, url=url, events=list(events), secret=new_secret(), created_at=utcnow()
    )
    session.add(ep)
    session.flush()
    return ep


def list_endpoints(*, session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    """The tenant's endpoints (deleted ones left out), oldest first."""
    q = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))
    return list(session.scalars(q.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def get_endpoint(*, session: Session, endpoint_id: uuid.UUID, tenant_id: str) -> WebhookEndpoint:
    """The endpoint, or WebhookEndpointNotFound (also when deleted or another tenant's)."""
    ep = session.get(WebhookEndpoint, endpoint_id)
    if ep is None or ep.tenant_id != tenant_id or ep.deleted_at is not None:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
    return ep


def delete_endpoint(*, session: Session, endpoint_id: uuid.UUID, tenant_id: str) -> None:
    """Delete an endpoint (kept for the delivery log) and cancel its pending deliveries."""
    ep = get_endpoint(session=session, endpoint_id=endpoint_id, tenant_id=tenant_id)
    ep.deleted_at = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == ep.id, WebhookDelivery.status == DeliveryStatus.PENDING.value)
        .values(status=DeliveryStatus.CANCELED.value, next_attempt_at=None, last_error="endpoint deleted")
        .execution_options(synchronize_session=False)
    )


def rotate_endpoint_secret(
    *, session: Session, endpoint_id: uuid.UUID, tenant_id: str, overlap_s: float
) -> WebhookEndpoint:
    """Give the endpoint a new secret; the old one keeps signing (as a second signature) for overlap_s."""
    ep = get_endpoint(session=session, endpoint_id=endpoint_id, tenant_id=tenant_id)
    ep.previous_secret, ep.secret = ep.secret, new_secret()
    ep.previous_secret_expires_at = utcnow() + timedelta(seconds=overlap_s)
    session.flush()
    return ep


def signing_key(*, session: Session, tenant_id: str) -> WebhookSigningKey:
    """The tenant's per-job webhook signing key, created on first use."""
    key = session.get(WebhookSigningKey, tenant_id)
    if key is not None:
        return key
    try:
        with session.begin_nested():
            key = WebhookSigningKey(tenant_id=tenant_id, secret=new_secret(), created_at=utcnow())
            session.add(key)
    except IntegrityError:  # created by a concurrent transaction
        key = session.get(WebhookSigningKey, tenant_id, populate_existing=True)
        assert key is not None
    return key


def reveal_signing_secret(*, session: Session, tenant_id: str) -> WebhookSigningKey:
    """The per-job signing key, shown once (WebhookSecretAlreadyShown afterwards: rotate to get a new one)."""
    key = signing_key(session=session, tenant_id=tenant_id)
    if key.revealed_at is not None:
        raise WebhookSecretAlreadyShown(
            "the per-job webhook signing secret was already shown; "
            "POST /v1/webhooks/signing-secret/rotate for a new one"
        )
    key.revealed_at = utcnow()
    session.flush()
    return key


def rotate_signing_secret(*, session: Session, tenant_id: str, overlap_s: float) -> WebhookSigningKey:
    """A new per-job signing secret (shown once); the old one keeps signing for overlap_s."""
    key = signing_key(session=session, tenant_id=tenant_id)
    now = utcnow()
    key.previous_secret, key.secret = key.secret, new_secret()
    key.previous_secret_expires_at = now + timedelta(seconds=overlap_s)
    key.rotated_at = key.revealed_at = now
    session.flush()
    return key


# --- the delivery log ----------------------------------------------------------------------------------------


def deliveries_page(
    *, session: Session, tenant_id: str, job_id: uuid.UUID | None, endpoint_id: uuid.UUID | None, limit: int
) -> list[WebhookDelivery]:
    """The tenant's deliveries, newest first, optionally of one job or one endpoint."""
    q = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if job_id is not None:
        q = q.where(WebhookDelivery.job_id == job_id)
    if endpoint_id is not None:
        q = q.where(WebhookDelivery.endpoint_id == endpoint_id)
    return list(session.scalars(q.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)))


def get_delivery(*, session: Session, delivery_id: uuid.UUID, tenant_id: str) -> WebhookDelivery:
    """The delivery, or WebhookDeliveryNotFound."""
    d = session.get(WebhookDelivery, delivery_id)
    if d is None or d.tenant_id != tenant_id:
        raise WebhookDeliveryNotFound(f"webhook delivery {delivery_id} does not exist")
    return d


def attempts_of(session: Session, delivery_id: uuid.UUID) -> list[WebhookAttempt]:
    """Every attempt of a delivery, in order."""
    q = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id).order_by(WebhookAttempt.number)
    return list(session.scalars(q))


def redeliver(*, session: Session, delivery_id: uuid.UUID, tenant_id: str) -> WebhookDelivery:
    """Send a delivery again now, same webhook-id and body: one more attempt if it had finished, else sooner."""
    d = get_delivery(session=session, delivery_id=delivery_id, tenant_id=tenant_id)
    if d.status != DeliveryStatus.PENDING.value:
        d.attempt_limit = d.attempts + 1
    d.status, d.next_attempt_at = DeliveryStatus.PENDING.value, utcnow()
    session.flush()
    return d


def count_by_status(session: Session) -> dict[str, Any]:
    """How many deliveries are in each status (for tests and health views)."""
    q = select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
    return {status: n for status, n in session.execute(q)}
