"""Idempotency keys: claim a (tenant, key) atomically, remember the first answer, replay it, purge old keys.

Lifecycle of a row: `in_flight` (claimed by one request, whose `token` it carries) -> `committed` (written in the
same transaction as the request's own commit, so a key whose effect exists can never run again) -> `done` (the
answer is stored for replay). A request that fails before committing deletes its claim, so the client may retry
with the same key. A claim whose request died (no commit, no answer) is taken over after the lease.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import utcnow
from shared.db.tenancy_models import COMMITTED, DONE, IN_FLIGHT, IdempotencyKey


@dataclass
class Claim:
    """This request owns the key: only it may mark it committed, finish or release it."""

    id: int
    token: str
    tenant_id: str
    key: str
    committed: bool = False


@dataclass(frozen=True)
class Stored:
    """A key someone else holds or held: its state and, when done, the answer to replay."""

    status: str
    fingerprint: str | None
    response_status: int | None
    response_headers: dict[str, str]
    response_body: bytes


def fingerprint(*, method: str, path: str, query: bytes, content_type: str, body_digest: str) -> str:
    """What makes two requests "the same request": method, path, query, media type and body digest."""
    h = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), query, content_type.lower().encode(), body_digest.encode()):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


def claim_key(
    *, sessions: sessionmaker[Session], tenant_id: str, key: str, method: str, path: str, lease_s: float
) -> Claim | Stored:
    """Take the key for this request (insert-or-nothing, atomic on PostgreSQL and SQLite), or take over a claim
    whose request died (in flight past the lease); otherwise describe who holds it."""
    token, now = uuid.uuid4().hex, utcnow()
    values = {
        "tenant_id": tenant_id,
        "key": key,
        "method": method,
        "path": path,
        "status": IN_FLIGHT,
        "token": token,
        "locked_at": now,
        "created_at": now,
        "response_bytes": 0,
    }
    with sessions.begin() as session:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(IdempotencyKey).values(**values).on_conflict_do_nothing(index_elements=["tenant_id", "key"])
        new_id = session.execute(stmt.returning(IdempotencyKey.id)).scalar()
        if new_id is not None:
            return Claim(id=int(new_id), token=token, tenant_id=tenant_id, key=key)
        row = session.execute(
            select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
        ).scalar_one_or_none()
        if row is None:  # purged between the insert and the read: the next attempt will claim it
            return Stored(IN_FLIGHT, None, None, {}, b"")
        if row.status == IN_FLIGHT and row.locked_at < now - timedelta(seconds=lease_s):
            taken = session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row.id, IdempotencyKey.token == row.token)
                .where(IdempotencyKey.status == IN_FLIGHT)
                .values(token=token, locked_at=now, method=method, path=path)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return Claim(id=row.id, token=token, tenant_id=tenant_id, key=key)
        return Stored(
            status=row.status,
            fingerprint=row.fingerprint,
            response_status=row.response_status,
            response_headers=dict(row.response_headers or {}),
            response_body=row.response_body or b"",
        )


def mark_committed(*, session: Session, claim: Claim) -> None:
    """In the request's own transaction: the key's effect is being committed, so it must never run again."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == claim.id, IdempotencyKey.token == claim.token)
        .values(status=COMMITTED)
    )


def finish_key(
    *,
    sessions: sessionmaker[Session],
    claim: Claim,
    fingerprint: str,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> bool:
    """Store the answer to replay; False if the claim was lost (taken over after the lease)."""
    with sessions.begin() as session:
        res = session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == claim.id, IdempotencyKey.token == claim.token)
            .values(
                status=DONE,
                fingerprint=fingerprint,
                response_status=status,
                response_headers=headers,
                response_body=body,
                response_bytes=len(body),
            )
        )
        return bool(res.rowcount)  # type: ignore[attr-defined]


def release_key(*, sessions: sessionmaker[Session], claim: Claim) -> None:
    """Forget a claim whose request changed nothing, so the client may retry with the same key."""
    with sessions.begin() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id == claim.id, IdempotencyKey.token == claim.token, IdempotencyKey.status == IN_FLIGHT
            )
        )


def purge_expired(*, session: Session, ttl_s: float, batch: int = 10_000, now: datetime | None = None) -> int:
    """Delete up to `batch` keys created more than `ttl_s` ago; the number deleted."""
    cutoff = (now or utcnow()) - timedelta(seconds=ttl_s)
    ids = list(
        session.scalars(
            select(IdempotencyKey.id).where(IdempotencyKey.created_at < cutoff).order_by(IdempotencyKey.id).limit(batch)
        )
    )
    if ids:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(ids)))
    return len(ids)
