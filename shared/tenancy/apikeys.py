"""API keys: `iq_<prefix>_<secret>`, of which only the prefix (the key's id) and a hash of the secret are stored.

Hashing: the secret is 32 random bytes (256 bits), so no guess can hit it and a slow password hash (bcrypt,
scrypt, argon2) would add nothing but ~100 ms of CPU to every request — an easy denial of service. Slow hashes exist
for low-entropy human passwords; a high-entropy token only needs a one-way hash, so a dump of the table does not
yield usable keys. SHA-256 over the prefix and the secret is that hash, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.config.errors import ApiKeyNotFound, ValidationFailed
from shared.db.models import utcnow
from shared.db.tenancy_models import KEY_PREFIX, ApiKey

SCOPES = ("jobs", "models", "admin")  # api.auth names them; kept here so the CLI needs no api import
_TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY = re.compile(r"^iq_(?P<prefix>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")


def _digest(prefix: str, secret: str) -> str:
    return hashlib.sha256(f"{prefix}.{secret}".encode()).hexdigest()


def check_tenant(tenant_id: str) -> str:
    """The tenant id if well formed (lowercase letters, digits, '.', '_' and '-'; at most 64), else 422."""
    if not _TENANT.match(tenant_id):
        raise ValidationFailed(
            f"tenant {tenant_id!r} is not a tenant id: use 1-64 lowercase letters, digits, '.', '_' or '-'"
        )
    return tenant_id


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, de-duplicated in canonical order, if each is known and there is at least one; else 422."""
    wanted = set(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown or not wanted:
        raise ValidationFailed(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {sorted(wanted)}")
    return [s for s in SCOPES if s in wanted]


def create_key(*, session: Session, tenant_id: str, scopes: Sequence[str], name: str = "") -> tuple[ApiKey, str]:
    """Add a new key to the session (the caller commits); returns the row and the full key, to be shown once."""
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(
        id=prefix,
        tenant_id=check_tenant(tenant_id),
        name=name[:100],
        scopes=check_scopes(scopes),
        secret_hash=_digest(prefix, secret),
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key, f"{KEY_PREFIX}_{prefix}_{secret}"


def authenticate(*, session: Session, token: str) -> ApiKey | None:
    """The live key that `token` is, or None (malformed, unknown, wrong secret or revoked)."""
    m = _KEY.match(token.strip())
    if m is None:
        return None
    key = session.get(ApiKey, m["prefix"])
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.secret_hash, _digest(m["prefix"], m["secret"])):
        return None
    return key


def needs_touch(key: ApiKey, min_interval_s: float, now: datetime | None = None) -> bool:
    """Whether the key's last_used_at is old enough to be written again (checked before any write)."""
    last = key.last_used_at
    return last is None or last <= (now or utcnow()) - timedelta(seconds=min_interval_s)


def touch(*, session: Session, key_id: str, min_interval_s: float, now: datetime | None = None) -> bool:
    """Record the key's use, at most once per `min_interval_s` (one cheap conditional UPDATE); True if written."""
    now = now or utcnow()
    stale = now - timedelta(seconds=min_interval_s)
    res = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at <= stale))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def list_keys(*, session: Session, tenant_id: str | None) -> list[ApiKey]:
    """A tenant's keys (every tenant's when None), revoked ones too, oldest first."""
    q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        q = q.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(q))


def get_key(*, session: Session, key_id: str, tenant_id: str | None) -> ApiKey:
    """The key, or ApiKeyNotFound (also another tenant's key, when `tenant_id` is given)."""
    key = session.get(ApiKey, key_id) if len(key_id) <= 24 else None
    if key is None or (tenant_id is not None and key.tenant_id != tenant_id):
        raise ApiKeyNotFound(f"API key {key_id!r} does not exist")
    return key


def revoke_key(*, session: Session, key_id: str, tenant_id: str | None) -> ApiKey:
    """Revoke a key (at once: the next request with it gets 401); revoking twice keeps the first time."""
    key = get_key(session=session, key_id=key_id, tenant_id=tenant_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


class KeyCache:
    """Recently authenticated keys of one process, by a digest of the whole key (never the key itself), each for
    `ttl_s` (INFERQ_API_KEY_CACHE_S); `forget` drops a revoked key at once. Thread-safe, bounded to `max_size`."""

    def __init__(self, ttl_s: float, max_size: int = 4096) -> None:
        self.ttl_s, self.max_size = ttl_s, max_size
        self._entries: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _slot(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> Any | None:
        """What `put` stored for this key, if it has not expired."""
        if self.ttl_s <= 0:
            return None
        hit = self._entries.get(self._slot(token))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, token: str, value: Any) -> None:
        """Remember an authenticated key's principal for ttl_s."""
        if self.ttl_s <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_size:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_size:
                    self._entries.clear()
            self._entries[self._slot(token)] = (now + self.ttl_s, value)

    def forget(self, key_id: str) -> None:
        """Drop every entry of the key `key_id` (it was revoked through this process)."""
        with self._lock:
            self._entries = {k: v for k, v in self._entries.items() if getattr(v[1], "key_id", None) != key_id}
