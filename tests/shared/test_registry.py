"""Model registry: parsing references, resolving them, numbering versions and moving aliases."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from shared.config.errors import ModelNotFound, ValidationFailed
from shared.registry.versions import ModelRef, list_versions, parse_ref, resolve, set_alias
from tests.factories import add_model_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mnist-cnn", ModelRef("mnist-cnn")),
        ("mnist-cnn:1", ModelRef("mnist-cnn", version=1)),
        ("mnist-cnn:42", ModelRef("mnist-cnn", version=42)),
        ("mnist-cnn@production", ModelRef("mnist-cnn", alias="production")),
        ("mnist_cnn.v2@canary-1", ModelRef("mnist_cnn.v2", alias="canary-1")),
        ("  MNIST-CNN@Production ", ModelRef("mnist-cnn", alias="production")),
        ("0", ModelRef("0")),
    ],
)
def test_parse_ref_accepts_the_three_forms(text: str, expected: ModelRef) -> None:
    """parse_ref reads 'name', 'name:version' and 'name@alias' (case-insensitive, trimmed)."""
    assert parse_ref(text) == expected


@pytest.mark.parametrize("ref", ["mnist-cnn", "mnist-cnn:3", "mnist-cnn@canary"])
def test_model_ref_str_roundtrips(ref: str) -> None:
    """str() of a parsed reference gives the reference back."""
    assert str(parse_ref(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "mnist-cnn:",
        "mnist-cnn@",
        "mnist-cnn:v1",
        "mnist-cnn:-1",
        "mnist-cnn:1@production",
        "mnist-cnn@prod@x",
        "-mnist",
        ".hidden",
        "../etc/passwd",
        "a/b",
        "mnist cnn",
        "mnist-cnn:1234567890",
        "a" * 101,
        "mnist-cnn@" + "a" * 61,
        "mnist-cnn@prod.1",
    ],
)
def test_parse_ref_rejects_bad_references(text: str) -> None:
    """Anything else is a 422 that names the accepted forms."""
    with pytest.raises(ValidationFailed) as info:
        parse_ref(text)
    assert info.value.status == 422 and "name:version" in info.value.detail


def test_register_version_numbers_versions_in_order(session: Session) -> None:
    """Each registration of a name gets the next version number, independently per name."""
    assert [add_model_version(session, aliases=()).version for _ in range(3)] == [1, 2, 3]
    assert add_model_version(session, name="other", aliases=()).version == 1
    assert [mv.version for mv in list_versions(session, "mnist-cnn")] == [3, 2, 1]
    refs = [mv.ref for mv in list_versions(session)]
    assert refs == ["mnist-cnn:3", "mnist-cnn:2", "mnist-cnn:1", "other:1"]


def test_register_version_defaults_to_mnist_metadata(session: Session) -> None:
    """Without labels or input_spec a version gets the MNIST ones."""
    mv = add_model_version(session)
    assert mv.labels == [str(i) for i in range(10)]
    assert mv.input_spec["shape"] == [28, 28, 1]


def test_resolve_by_version_alias_and_bare_name(session: Session) -> None:
    """A version number, an alias, and a bare name (its default alias) each resolve to the right version."""
    v1 = add_model_version(session, aliases=("production",))
    v2 = add_model_version(session, aliases=("canary",))
    add_model_version(session, aliases=())
    assert resolve(session, parse_ref("mnist-cnn:2"), default_alias="production").id == v2.id
    assert resolve(session, parse_ref("mnist-cnn@canary"), default_alias="production").id == v2.id
    assert resolve(session, parse_ref("mnist-cnn@production"), default_alias="production").id == v1.id
    assert resolve(session, parse_ref("mnist-cnn"), default_alias="production").id == v1.id


def test_bare_name_without_default_alias_is_newest(session: Session) -> None:
    """A bare name whose default alias is not set resolves to the newest version."""
    add_model_version(session, aliases=("canary",))
    v2 = add_model_version(session, aliases=())
    assert resolve(session, parse_ref("mnist-cnn"), default_alias="production").id == v2.id


@pytest.mark.parametrize("ref", ["unknown", "unknown:1", "mnist-cnn:9", "mnist-cnn@staging"])
def test_unresolvable_reference_is_model_not_found(session: Session, ref: str) -> None:
    """An unknown name, version or alias raises ModelNotFound (404); an unknown alias does not fall back."""
    add_model_version(session, aliases=("production",))
    with pytest.raises(ModelNotFound) as info:
        resolve(session, parse_ref(ref), default_alias="production")
    assert info.value.status == 404


def test_set_alias_moves_the_alias(session: Session) -> None:
    """set_alias points an existing alias at another version, leaving one alias row."""
    v1 = add_model_version(session, aliases=("production",))
    v2 = add_model_version(session, aliases=())
    set_alias(session, name="mnist-cnn", alias="production", version=v2)
    session.expire_all()
    assert resolve(session, parse_ref("mnist-cnn@production"), default_alias="production").id == v2.id
    versions = {mv.version: sorted(a.alias for a in mv.aliases) for mv in list_versions(session, "mnist-cnn")}
    assert versions == {2: ["production"], 1: []}
    assert v1.id != v2.id


def test_register_with_existing_alias_moves_it(session: Session) -> None:
    """Registering a new version with an alias already in use moves that alias to the new version."""
    add_model_version(session, aliases=("production", "canary"))
    v2 = add_model_version(session, aliases=("production",))
    session.expire_all()
    aliases = {mv.version: sorted(a.alias for a in mv.aliases) for mv in list_versions(session, "mnist-cnn")}
    assert aliases == {2: ["production"], 1: ["canary"]}
    assert resolve(session, parse_ref("mnist-cnn"), default_alias="production").id == v2.id


def test_known_refs_remember_successes_for_their_ttl(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference that resolved is not queried again within the TTL; a missing one is never remembered, so a model
    registered right after a 404 is usable at once; past the TTL the registry is asked again."""
    from shared.registry import versions as registry
    from shared.registry.versions import KnownRefs

    calls: list[str] = []
    real = registry.resolve
    monkeypatch.setattr(registry, "resolve", lambda s, ref, **kw: calls.append(str(ref)) or real(s, ref, **kw))
    clock = [100.0]
    monkeypatch.setattr(registry.time, "monotonic", lambda: clock[0])
    known = KnownRefs(ttl_s=1.0)
    ref = parse_ref("mnist-cnn@production")
    with pytest.raises(ModelNotFound):
        known.check(session, ref, default_alias="production", tenant_id=None)
    add_model_version(session)
    known.check(session, ref, default_alias="production", tenant_id=None)
    known.check(session, ref, default_alias="production", tenant_id=None)
    known.check(session, ref, default_alias="production", tenant_id="acme")  # per tenant
    assert calls == ["mnist-cnn@production"] * 3
    clock[0] += 1.5
    known.check(session, ref, default_alias="production", tenant_id=None)
    assert len(calls) == 4
