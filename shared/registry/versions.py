"""Model registry: immutable versions, movable aliases, and resolving a job's `model` reference."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from shared.config.errors import ModelNotFound, ValidationFailed
from shared.db.models import PUBLIC_ALIAS, ModelAlias, ModelVersion

_NAME = r"[a-z0-9][a-z0-9._-]{0,99}"
_ALIAS = r"[a-z0-9][a-z0-9_-]{0,59}"
_REF = re.compile(rf"^(?P<name>{_NAME})(?::(?P<version>[0-9]{{1,9}})|@(?P<alias>{_ALIAS}))?$")
NAME_PATTERN = rf"^{_NAME}$"  # a model name on its own, as in URL paths
ALIAS_PATTERN = rf"^{_ALIAS}$"

MNIST_LABELS = [str(i) for i in range(10)]
MNIST_INPUT_SPEC = {
    "shape": [28, 28, 1],
    "dtype": "float32",
    "range": [0.0, 1.0],
    "polarity": "light-on-dark",
}


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: name, name:version or name@alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> ModelRef:
    """Parse 'name', 'name:version' or 'name@alias' (422 with the accepted forms otherwise)."""
    m = _REF.match(text.strip().lower())
    if not m:
        raise ValidationFailed(
            f"model {text!r} is not a model reference; use 'name', 'name:version' or 'name@alias' "
            "(lowercase letters, digits, '.', '_' and '-')"
        )
    version = int(m["version"]) if m["version"] else None
    return ModelRef(name=m["name"], version=version, alias=m["alias"])


def visible(tenant_id: str | None) -> ColumnElement[bool]:
    """SQL: a version the tenant may see and use (public ones, and its own); None sees public versions only."""
    public = ModelVersion.tenant_id.is_(None)
    return public if tenant_id is None else or_(public, ModelVersion.tenant_id == tenant_id)


def _alias_scopes(tenant_id: str | None) -> list[str]:
    """The alias scopes a tenant reads, its own first: an alias of its own hides the public one of that name."""
    return [PUBLIC_ALIAS] if tenant_id is None else [tenant_id, PUBLIC_ALIAS]


def resolve(session: Session, ref: ModelRef, *, default_alias: str, tenant_id: str | None = None) -> ModelVersion:
    """The version a reference points at now for this tenant (public versions and its own; its own alias before
    the public one); a bare name means its default alias, else its newest version."""
    if ref.version is not None:
        mv = session.scalar(
            select(ModelVersion).filter_by(name=ref.name, version=ref.version).where(visible(tenant_id))
        )
    else:
        alias = ref.alias or default_alias
        mv = session.scalar(
            select(ModelVersion)
            .join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
            .where(ModelAlias.name == ref.name, ModelAlias.alias == alias)
            .where(ModelAlias.tenant_id.in_(_alias_scopes(tenant_id)), visible(tenant_id))
            .order_by((ModelAlias.tenant_id == PUBLIC_ALIAS).asc())
            .limit(1)
        )
        if mv is None and ref.alias is None:
            mv = session.scalar(
                select(ModelVersion)
                .filter_by(name=ref.name)
                .where(visible(tenant_id))
                .order_by(ModelVersion.version.desc())
                .limit(1)
            )
    if mv is None:
        raise ModelNotFound(f"model {str(ref)!r} does not exist; GET /v1/models lists the models and versions")
    return mv


class KnownRefs:
    """Model references recently seen to resolve, per tenant, so a submission need not query the registry each time
    it checks that its model exists. Only successes are remembered, each for `ttl_s`: a new model is usable at once,
    and one removed within the last `ttl_s` may still be accepted (its job then fails with model-not-found in the
    worker, as it would had the model gone right after the check)."""

    def __init__(self, ttl_s: float, max_size: int = 1024) -> None:
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._until: dict[tuple[str, str | None], float] = {}

    def check(self, session: Session, ref: ModelRef, *, default_alias: str, tenant_id: str | None) -> None:
        """ModelNotFound unless `ref` resolves for the tenant (from memory when it did within `ttl_s`)."""
        key, now = (str(ref), tenant_id), time.monotonic()
        if self._until.get(key, 0.0) > now:
            return
        resolve(session, ref, default_alias=default_alias, tenant_id=tenant_id)
        if len(self._until) >= self.max_size:
            self._until = {k: t for k, t in self._until.items() if t > now}
            if len(self._until) >= self.max_size:
                self._until.clear()
        self._until[key] = now + self.ttl_s


def check_name_usable(session: Session, name: str, tenant_id: str | None) -> None:
    """ModelNotFound unless the tenant may add versions to `name`: a new name, a public model, or its own.
    Model names are global, so a name another tenant's private model holds is not available (as if absent)."""
    owners = set(session.scalars(select(ModelVersion.tenant_id).where(ModelVersion.name == name).distinct()))
    if owners and None not in owners and owners != {tenant_id}:
        raise ModelNotFound(f"model {name!r} is not available; choose another name for a new model")


def register_version(
    session: Session,
    *,
    name: str,
    format: str,
    artifact_uri: str,
    size_bytes: int,
    aliases: tuple[str, ...] = (),
    variant: str = "float32",
    parent_id: int | None = None,
    labels: list[str] | None = None,
    input_spec: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    tenant_id: str | None = None,
) -> ModelVersion:
    """Add the next version of `name` (public, or private to `tenant_id`) and point `aliases` at it (the caller
    commits); version numbers count across tenants, so they stay unique per name."""
    check_name_usable(session, name, tenant_id)
    newest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0
    mv = ModelVersion(
        name=name,
        version=newest + 1,
        tenant_id=tenant_id,
        format=format,
        variant=variant,
        parent_id=parent_id,
        artifact_uri=artifact_uri,
        size_bytes=size_bytes,
        labels=labels or MNIST_LABELS,
        input_spec=input_spec or MNIST_INPUT_SPEC,
        metrics=metrics or {},
        params=params or {},
    )
    session.add(mv)
    session.flush()
    for alias in aliases:
        set_alias(session, name=name, alias=alias, version=mv, tenant_id=tenant_id)
    return mv


def set_alias(session: Session, *, name: str, alias: str, version: ModelVersion, tenant_id: str | None = None) -> None:
    """Point `name@alias` at `version` (creating or moving the alias), publicly or for one tenant only; a public
    alias never points at a private version."""
    if tenant_id is None and version.tenant_id is not None:
        raise ValidationFailed(f"{version.ref} is private to one tenant; a public alias cannot point at it")
    scope = PUBLIC_ALIAS if tenant_id is None else tenant_id
    row = session.get(ModelAlias, (name, alias, scope))
    if row is None:
        session.add(ModelAlias(name=name, alias=alias, tenant_id=scope, version_id=version.id))
    else:
        row.version_id = version.id
    session.flush()


def list_versions(session: Session, name: str | None = None, *, tenant_id: str | None = None) -> list[ModelVersion]:
    """Every version the tenant may see, grouped by model name, newest first within a name."""
    q = select(ModelVersion).where(visible(tenant_id)).order_by(ModelVersion.name, ModelVersion.version.desc())
    if name:
        q = q.where(ModelVersion.name == name)
    return list(session.scalars(q))


def aliases_of(session: Session, name: str, *, tenant_id: str | None = None) -> dict[str, int]:
    """alias -> version id of a model as the tenant sees it (its own aliases over the public ones)."""
    q = (
        select(ModelAlias.alias, ModelAlias.version_id)
        .join(ModelVersion, ModelAlias.version_id == ModelVersion.id)
        .where(ModelAlias.name == name, ModelAlias.tenant_id.in_(_alias_scopes(tenant_id)), visible(tenant_id))
        .order_by((ModelAlias.tenant_id == PUBLIC_ALIAS).desc())  # public first, so the tenant's own win below
    )
    return {alias: version_id for alias, version_id in session.execute(q)}


def get_version(session: Session, name: str, version: int, *, tenant_id: str | None = None) -> ModelVersion:
    """One version of a model the tenant may see, or ModelNotFound naming what exists."""
    mv = session.scalar(select(ModelVersion).filter_by(name=name, version=version).where(visible(tenant_id)))
    if mv is None:
        known = "no versions" if not list_versions(session, name, tenant_id=tenant_id) else "other versions"
        raise ModelNotFound(f"model {name}:{version} does not exist ({name} has {known}); GET /v1/models/{name}")
    return mv


def move_alias(session: Session, *, name: str, alias: str, version: int, tenant_id: str | None = None) -> ModelVersion:
    """Promote or roll back: point `name@alias` at an existing version (404 if the tenant cannot see it); with a
    tenant the alias is that tenant's own, which hides a public alias of the same name for it alone."""
    mv = get_version(session, name, version, tenant_id=tenant_id)
    set_alias(session, name=name, alias=alias, version=mv, tenant_id=tenant_id)
    return mv
