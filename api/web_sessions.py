"""Server-side web sessions in Redis: the browser holds only a random id in an HttpOnly, SameSite=Strict cookie.

A session records which API key signed in (its id, never the key itself) and the session's CSRF token. Redis
keeps it under the SHA-256 of the cookie's id, so reading Redis gives no usable cookie. Every use of the session
re-reads the key's row, so revoking the key ends its web sessions at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass

import redis

COOKIE = "inferq_session"
CSRF_HEADER = "X-CSRF-Token"
_PREFIX = "inferq:web:session:"


@dataclass(frozen=True)
class WebSession:
    """What the server knows about one browser: the API key it signed in with (None before sign-in) and its
    CSRF token (sent back on every POST, as a form field or the X-CSRF-Token header)."""

    csrf: str
    key_id: str | None = None


class SessionStore:
    """Web sessions in Redis, each expiring `ttl_s` seconds after its last use."""

    def __init__(self, url: str, ttl_s: float) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._ttl = max(1, int(ttl_s))

    @staticmethod
    def _key(sid: str) -> str:
        return _PREFIX + hashlib.sha256(sid.encode()).hexdigest()

    def create(self, key_id: str | None = None) -> tuple[str, WebSession]:
        """A new session (a fresh id and CSRF token); returns the cookie's id and the session."""
        sid, session = secrets.token_urlsafe(32), WebSession(csrf=secrets.token_urlsafe(32), key_id=key_id)
        self._redis.set(self._key(sid), json.dumps(asdict(session)), ex=self._ttl)
        return sid, session

    def get(self, sid: str | None) -> WebSession | None:
        """The session of a cookie's id (its lifetime renewed), or None when unknown or expired."""
        if not sid or len(sid) > 100:
            return None
        raw = self._redis.getex(self._key(sid), ex=self._ttl)
        if raw is None:
            return None
        data = json.loads(raw)
        return WebSession(csrf=str(data["csrf"]), key_id=data.get("key_id"))

    def delete(self, sid: str | None) -> None:
        """End a session (sign-out)."""
        if sid:
            self._redis.delete(self._key(sid))

    def close(self) -> None:
        self._redis.close()


def csrf_matches(session: WebSession, sent: str | None) -> bool:
    """True when `sent` is the session's CSRF token (compared in constant time)."""
    return bool(sent) and secrets.compare_digest(session.csrf.encode(), (sent or "").encode())
