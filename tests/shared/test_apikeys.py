"""API keys: the format, only a hash stored, authentication, revocation, scopes and tenants, last use."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config.errors import ApiKeyNotFound, ValidationFailed
from shared.db.models import utcnow
from shared.db.tenancy_models import ApiKey
from shared.tenancy import apikeys


def test_a_key_is_a_visible_prefix_and_a_256_bit_secret(session: Session) -> None:
    """The key reads iq_<12 hex>_<43 url-safe chars>; its id is the prefix; two keys never repeat."""
    row, key = apikeys.create_key(session=session, tenant_id="acme", scopes=["jobs"], name="ci")
    other = apikeys.create_key(session=session, tenant_id="acme", scopes=["jobs"])[1]
    kind, prefix, secret = key.split("_", 2)
    assert (kind, prefix, len(prefix), len(secret)) == ("iq", row.id, 12, 43)
    assert other != key and other.split("_", 2)[1] != row.id
    assert row.display == f"iq_{row.id}_…"


def test_only_a_hash_of_the_secret_is_stored(session: Session) -> None:
    """No column of the row holds the secret or the key; secret_hash is SHA-256 of prefix.secret."""
    row, key = apikeys.create_key(session=session, tenant_id="acme", scopes=["jobs", "admin"], name="ci")
    session.commit()
    secret = key.split("_", 2)[2]
    stored = session.execute(select(ApiKey.__table__)).one()._asdict()
    assert not [c for c, v in stored.items() if secret in str(v) or key in str(v)]
    assert stored["secret_hash"] == hashlib.sha256(f"{row.id}.{secret}".encode()).hexdigest()


def test_authenticate_accepts_the_key_and_nothing_near_it(session: Session) -> None:
    """The exact key authenticates; a wrong secret, an unknown prefix or a malformed token do not."""
    row, key = apikeys.create_key(session=session, tenant_id="acme", scopes=["jobs"])
    prefix, secret = key.split("_", 2)[1:]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert apikeys.authenticate(session=session, token=key) is row
    assert apikeys.authenticate(session=session, token=f"  {key}\n") is row
    for token in (f"iq_{prefix}_{flipped}", f"iq_{'0' * 12}_{secret}", key[:-1], "", "iq_", key + "x", secret):
        assert apikeys.authenticate(session=session, token=token) is None, token


def test_a_revoked_key_stops_authenticating(session: Session) -> None:
    """Revoking sets revoked_at (kept on a second revoke) and the key no longer authenticates."""
    row, key = apikeys.create_key(session=session, tenant_id="acme", scopes=["jobs"])
    first = apikeys.revoke_key(session=session, key_id=row.id, tenant_id="acme").revoked_at
    assert first is not None and apikeys.authenticate(session=session, token=key) is None
    assert apikeys.revoke_key(session=session, key_id=row.id, tenant_id=None).revoked_at == first


def test_keys_are_found_only_within_their_tenant(session: Session) -> None:
    """get/revoke with another tenant, or an unknown id, raise ApiKeyNotFound; list filters by tenant."""
    a, _ = apikeys.create_key(session=session, tenant_id="acme", scopes=["jobs"])
    b, _ = apikeys.create_key(session=session, tenant_id="globex", scopes=["jobs"])
    for key_id, tenant in ((a.id, "globex"), ("nope", "acme"), ("x" * 100, None)):
        with pytest.raises(ApiKeyNotFound):
            apikeys.get_key(session=session, key_id=key_id, tenant_id=tenant)
    with pytest.raises(ApiKeyNotFound):
        apikeys.revoke_key(session=session, key_id=b.id, tenant_id="acme")
    assert b.revoked_at is None
    assert [k.id for k in apikeys.list_keys(session=session, tenant_id="acme")] == [a.id]
    assert {k.id for k in apikeys.list_keys(session=session, tenant_id=None)} == {a.id, b.id}


@pytest.mark.parametrize("scopes", [[], ["root"], ["jobs", "everything"]])
def test_unknown_or_no_scopes_are_refused(session: Session, scopes: list[str]) -> None:
    """Scopes must be a non-empty subset of jobs, models, admin."""
    with pytest.raises(ValidationFailed):
        apikeys.create_key(session=session, tenant_id="acme", scopes=scopes)


def test_scopes_are_deduplicated_in_canonical_order(session: Session) -> None:
    """Scopes are stored once each, in the order jobs, models, admin."""
    row, _ = apikeys.create_key(session=session, tenant_id="acme", scopes=["admin", "jobs", "admin"])
    assert row.scopes == ["jobs", "admin"]


@pytest.mark.parametrize("tenant", ["", "Acme", "a b", "a/b", "-x", "x" * 65])
def test_malformed_tenant_ids_are_refused(session: Session, tenant: str) -> None:
    """Tenant ids are 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit."""
    with pytest.raises(ValidationFailed):
        apikeys.create_key(session=session, tenant_id=tenant, scopes=["jobs"])


def test_last_use_is_written_at_most_once_per_interval(session: Session) -> None:
    """needs_touch()/touch() write last_used_at the first time and then only after the interval has passed."""
    row, _ = apikeys.create_key(session=session, tenant_id="acme", scopes=["jobs"])
    now = utcnow()
    assert apikeys.needs_touch(row, 60, now)
    assert apikeys.touch(session=session, key_id=row.id, min_interval_s=60, now=now)
    session.refresh(row)
    assert not apikeys.needs_touch(row, 60, now + timedelta(seconds=30))
    assert apikeys.needs_touch(row, 60, now + timedelta(seconds=61))
    assert not apikeys.touch(session=session, key_id=row.id, min_interval_s=60, now=now + timedelta(seconds=30))
    assert apikeys.touch(session=session, key_id=row.id, min_interval_s=60, now=now + timedelta(seconds=61))
    session.expire_all()
    assert session.get(ApiKey, row.id).last_used_at == now + timedelta(seconds=61)  # type: ignore[union-attr]


def test_key_cache_expires_forgets_and_can_be_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyCache: an entry lives ttl_s, `forget(key_id)` drops it at once, and ttl 0 remembers nothing."""
    from types import SimpleNamespace

    now = [100.0]
    monkeypatch.setattr(apikeys.time, "monotonic", lambda: now[0])
    cache = apikeys.KeyCache(2.0)
    principal = SimpleNamespace(key_id="abc")
    cache.put("iq_abc_secret", principal)
    assert cache.get("iq_abc_secret") is principal and cache.get("iq_abc_other") is None
    now[0] += 2.5
    assert cache.get("iq_abc_secret") is None
    cache.put("iq_abc_secret", principal)
    cache.forget("abc")
    assert cache.get("iq_abc_secret") is None
    off = apikeys.KeyCache(0)
    off.put("iq_abc_secret", principal)
    assert off.get("iq_abc_secret") is None
