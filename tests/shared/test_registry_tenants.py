"""The registry per tenant: public and private versions, a tenant's own aliases over public ones, names."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from shared.config.errors import ModelNotFound, ValidationFailed
from shared.registry.versions import (
    aliases_of,
    check_name_usable,
    get_version,
    list_versions,
    move_alias,
    parse_ref,
    resolve,
    set_alias,
)
from tests.factories import add_model_version


def _resolve(session: Session, ref: str, tenant: str | None) -> int:
    return resolve(session, parse_ref(ref), default_alias="production", tenant_id=tenant).version


def test_private_versions_are_seen_by_their_tenant_only(session: Session) -> None:
    """mnist-cnn:1 is public; :2 is acme's: acme sees both, globex and the public view only :1."""
    add_model_version(session)
    add_model_version(session, aliases=(), tenant_id="acme")
    assert [mv.version for mv in list_versions(session, "mnist-cnn", tenant_id="acme")] == [2, 1]
    assert [mv.version for mv in list_versions(session, "mnist-cnn", tenant_id="globex")] == [1]
    assert [mv.version for mv in list_versions(session, "mnist-cnn")] == [1]
    assert get_version(session, "mnist-cnn", 2, tenant_id="acme").tenant_id == "acme"
    for tenant in ("globex", None):
        with pytest.raises(ModelNotFound):
            get_version(session, "mnist-cnn", 2, tenant_id=tenant)
        with pytest.raises(ModelNotFound):
            _resolve(session, "mnist-cnn:2", tenant)


def test_a_tenants_alias_hides_the_public_one_for_it_alone(session: Session) -> None:
    """acme moving production to its :2 changes what acme resolves; globex still gets the public :1."""
    add_model_version(session)
    add_model_version(session, aliases=(), tenant_id="acme")
    move_alias(session, name="mnist-cnn", alias="production", version=2, tenant_id="acme")
    assert _resolve(session, "mnist-cnn", "acme") == 2 and _resolve(session, "mnist-cnn@production", "acme") == 2
    assert _resolve(session, "mnist-cnn", "globex") == 1 and _resolve(session, "mnist-cnn", None) == 1
    ids = {mv.version: mv.id for mv in list_versions(session, "mnist-cnn", tenant_id="acme")}
    assert aliases_of(session, "mnist-cnn", tenant_id="acme") == {"production": ids[2]}
    assert aliases_of(session, "mnist-cnn", tenant_id="globex") == {"production": ids[1]}


def test_a_bare_name_falls_back_to_the_newest_visible_version(session: Session) -> None:
    """Without a production alias, a bare name is the newest version the tenant may see."""
    add_model_version(session, name="m", aliases=())
    add_model_version(session, name="m", aliases=(), tenant_id="acme")
    assert _resolve(session, "m", "acme") == 2 and _resolve(session, "m", "globex") == 1


def test_a_public_alias_cannot_point_at_a_private_version(session: Session) -> None:
    """A public alias never points at acme's version: not found through move_alias, refused by set_alias."""
    add_model_version(session)
    private = add_model_version(session, aliases=(), tenant_id="acme")
    with pytest.raises(ModelNotFound):
        move_alias(session, name="mnist-cnn", alias="production", version=2, tenant_id=None)
    with pytest.raises(ValidationFailed):
        set_alias(session, name="mnist-cnn", alias="production", version=private)


def test_names_are_public_own_new_or_unavailable(session: Session) -> None:
    """A tenant may add versions to a public name, its own or a new one; another tenant's name is not found."""
    add_model_version(session)
    add_model_version(session, name="acme-only", aliases=(), tenant_id="acme")
    for name, tenant in (("mnist-cnn", "globex"), ("acme-only", "acme"), ("brand-new", "globex")):
        check_name_usable(session, name, tenant)
    with pytest.raises(ModelNotFound):
        check_name_usable(session, "acme-only", "globex")
    with pytest.raises(ModelNotFound):
        add_model_version(session, name="acme-only", aliases=(), tenant_id="globex")
    assert [mv.version for mv in list_versions(session, "acme-only", tenant_id="globex")] == []
