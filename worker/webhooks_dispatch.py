"""The webhook dispatcher: claim due outbox rows, sign and send each to its pinned address, record the attempt."""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config.errors import WebhookUrlRefused
from shared.config.settings import Settings
from shared.db.engine import session_scope
from shared.db.models import utcnow
from shared.db.webhook_models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.runtime import metrics
from shared.webhooks.outbox import DeliveryStatus, active_secrets, signed_headers, signing_key
from shared.webhooks.ssrf import check_url, parse_allow_cidrs, pinned_address

JITTER = 0.2  # each retry delay is moved by up to ±20% so failed receivers are not hit in waves
LEASE_MARGIN_S = 60.0  # a claimed row is due again this long after the attempt's timeout (a crashed dispatcher)


@dataclass(frozen=True)
class Claim:
    """One delivery taken for sending: what to send, where, and with which secrets."""

    delivery_id: uuid.UUID
    number: int
    msg_id: str
    url: str
    body: str
    secrets: tuple[str, ...]
    endpoint_id: uuid.UUID | None


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    status_code: int | None
    latency_ms: float
    excerpt: str | None = None
    error: str | None = None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class DispatchStats:
    claimed: int = 0
    succeeded: int = 0
    retrying: int = 0
    gave_up: int = 0
    canceled: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


Sender = Callable[[Claim, Settings], Outcome]


def retry_delay(attempt: int, settings: Settings) -> float:
    """Seconds before the attempt after `attempt`: base x 3^(n-1), capped, jittered, scaled (about 3 days in all)."""
    base = min(settings.webhook_retry_base_s * 3 ** (attempt - 1), settings.webhook_retry_max_delay_s)
    return base * random.uniform(1 - JITTER, 1 + JITTER) * settings.webhook_retry_scale


def dispatch_due(
    session_factory: sessionmaker[Session], settings: Settings, now: datetime | None = None, send: Sender | None = None
) -> DispatchStats:
    """Claim up to a batch of due deliveries, send them concurrently, and record every attempt."""
    now = now or utcnow()
    stats = DispatchStats()
    claims = claim_due(session_factory, settings, now, stats)
    if not claims:
        return stats
    sender = send or send_one
    workers = min(settings.webhook_dispatch_concurrency, len(claims))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
        outcomes = list(pool.map(lambda c: sender(c, settings), claims))
    with session_scope(session_factory) as session:
        for claim, outcome in zip(claims, outcomes, strict=True):
            _count(stats, record_outcome(session, claim, outcome, settings, now))
    return stats


def _count(stats: DispatchStats, status: str) -> None:
    if metrics.enabled:
        metrics.WEBHOOK_DELIVERIES.labels(str(status)).inc()
    if status == DeliveryStatus.SUCCEEDED:
        stats.succeeded += 1
    elif status == DeliveryStatus.PENDING:
        stats.retrying += 1
    elif status == DeliveryStatus.FAILED:
        stats.gave_up += 1
    elif status == DeliveryStatus.CANCELED:
        stats.canceled += 1


def claim_due(
    session_factory: sessionmaker[Session], settings: Settings, now: datetime, stats: DispatchStats
) -> list[Claim]:
    """Lease due rows (SKIP LOCKED on PostgreSQL) by moving next_attempt_at past the attempt's timeout."""
    lease = now + timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
    claims: list[Claim] = []
    with session_scope(session_factory) as session:
        q = (
            select(WebhookDelivery)
            .where(WebhookDelivery.status == DeliveryStatus.PENDING.value, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(settings.webhook_dispatch_batch)
        )
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        for d in session.scalars(q):
            claim = _claim_of(session, d, now)
            if claim is None:
                d.status, d.next_attempt_at, d.last_error = DeliveryStatus.CANCELED.value, None, "endpoint removed"
                stats.canceled += 1
                continue
            d.next_attempt_at = lease
            claims.append(claim)
    stats.claimed = len(claims)
    return claims


def _claim_of(session: Session, d: WebhookDelivery, now: datetime) -> Claim | None:
    url, secrets = d.url, []
    if d.endpoint_id is not None:
        ep = session.get(WebhookEndpoint, d.endpoint_id)
        if ep is None or ep.deleted_at is not None or ep.disabled_at is not None:
            return None
        url = ep.url
        secrets = active_secrets(ep.secret, ep.previous_secret, ep.previous_secret_expires_at, now)
    else:
        key = signing_key(session=session, tenant_id=d.tenant_id)
        secrets = active_secrets(key.secret, key.previous_secret, key.previous_secret_expires_at, now)
    return Claim(d.id, d.attempts + 1, d.msg_id, url, d.body, tuple(secrets), d.endpoint_id)


def record_outcome(session: Session, claim: Claim, outcome: Outcome, settings: Settings, now: datetime) -> str:
    """Write the attempt and move the delivery on: done, retry later, given up, or canceled (410 Gone)."""
    d = session.get(WebhookDelivery, claim.delivery_id, with_for_update=True)
    if d is None or d.attempts != claim.number - 1 or d.status != DeliveryStatus.PENDING.value:
        return "stale"  # someone else recorded this attempt (a lease that ran out); keep theirs
    limit = d.attempt_limit or settings.webhook_max_attempts
    next_at: datetime | None = None
    if outcome.ok:
        status, d.delivered_at = DeliveryStatus.SUCCEEDED, now
    elif outcome.status_code == 410:
        status = DeliveryStatus.CANCELED
        if claim.endpoint_id is not None:
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == claim.endpoint_id)
                .values(disabled_at=now, disabled_reason="the receiver answered 410 Gone")
            )
    elif outcome.refused or claim.number >= limit:
        status = DeliveryStatus.FAILED
    else:
        status, next_at = DeliveryStatus.PENDING, now + timedelta(seconds=retry_delay(claim.number, settings))
    d.status, d.attempts, d.next_attempt_at = status.value, claim.number, next_at
    d.last_status_code, d.last_error = outcome.status_code, outcome.error
    session.add(
        WebhookAttempt(
            delivery_id=d.id,
            number=claim.number,
            at=now,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            response_excerpt=outcome.excerpt,
            error=outcome.error,
            next_attempt_at=next_at,
        )
    )
    return status.value


# --- sending ------------------------------------------------------------------------------------------------


def open_socket(ip: str, port: int, timeout: float) -> socket.socket:
    """Connect to the pinned address (the one place a delivery opens a connection; tests watch it)."""
    return socket.create_connection((ip, port), timeout=timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a pinned address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_ip = ip

    def connect(self) -> None:
        self.sock = open_socket(self.pinned_ip, self.port, self.timeout or 10.0)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a pinned address; SNI and certificate checked for the URL's host name."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.pinned_ip = ip

    def connect(self) -> None:
        sock = open_socket(self.pinned_ip, self.port, self.timeout or 10.0)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def send_one(claim: Claim, settings: Settings) -> Outcome:
    """POST the signed body to the URL's resolved, allowed address; never follow a redirect; whole-attempt
    timeout."""
    started = time.monotonic()
    allow = parse_allow_cidrs(settings.webhook_allow_cidrs)
    try:
        target = check_url(claim.url, allow=allow, max_length=settings.webhook_max_url_length)
        ip = pinned_address(target, allow=allow)
    except WebhookUrlRefused as exc:
        return Outcome(None, 0.0, error=f"refused: {exc.detail}", refused=True)
    except OSError as exc:
        return Outcome(None, _ms(started), error=f"cannot resolve {claim.url}: {exc}")
    cls = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = cls(target.host, target.port, str(ip), settings.webhook_timeout_s)
    watchdog = threading.Timer(settings.webhook_timeout_s, _abort, args=(conn,))
    watchdog.start()
    try:
        headers = signed_headers(claim.msg_id, int(time.time()), claim.body, claim.secrets)
        conn.request("POST", target.path, body=claim.body.encode(), headers=headers)
        resp = conn.getresponse()
        excerpt = resp.read(settings.webhook_response_excerpt_bytes).decode("utf-8", "replace")
        return Outcome(resp.status, _ms(started), excerpt)
    except (OSError, http.client.HTTPException) as exc:
        late = time.monotonic() - started >= settings.webhook_timeout_s
        error = f"timed out after {settings.webhook_timeout_s}s" if late else f"{type(exc).__name__}: {exc}"
        return Outcome(None, _ms(started), error=error[:500])
    finally:
        watchdog.cancel()
        conn.close()


def _abort(conn: http.client.HTTPConnection) -> None:
    """Cut an attempt that outlived its timeout (a receiver trickling bytes keeps each read under it)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 1)
