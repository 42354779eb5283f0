"""The tenancy tables: API keys, Idempotency-Keys and tenants' own retention periods (shared.tenancy works on them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, BigId, utcnow

KEY_PREFIX = "iq"  # API keys read iq_<prefix>_<secret>
IN_FLIGHT, COMMITTED, DONE = "in_flight", "committed", "done"  # the states of an Idempotency-Key
MAX_KEY_LENGTH = 255  # of an Idempotency-Key


class ApiKey(Base):
    """One API key: its public id (the prefix), tenant, scopes and the hash of its secret, never the secret."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(24), primary_key=True)  # the visible prefix
    tenant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), default="")
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret_hash: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of "<prefix>.<secret>"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)

    @property
    def display(self) -> str:
        """How the key is shown after creation: its prefix and a mask instead of the secret."""
        return f"{KEY_PREFIX}_{self.id}_…"


class IdempotencyKey(Base):
    """One Idempotency-Key of a tenant: the request it belongs to and, once finished, the answer to replay."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=IN_FLIGHT)
    token: Mapped[str] = mapped_column(String(32))  # the claiming request's secret: only it may finish the row
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)  # sha256 of method, path, body
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    response_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    locked_at: Mapped[datetime] = mapped_column()  # when the current claim was taken (its lease starts here)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantRetention(Base):
    """A tenant's own retention period, overriding INFERQ_RETENTION_DAYS (0 keeps its data forever)."""

    __tablename__ = "tenant_retention"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    retention_days: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
