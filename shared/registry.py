"""Model registry: immutable versions, movable aliases, and resolving a job's `model` reference."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import ModelNotFound, ValidationFailed
from shared.models import ModelAlias, ModelVersion

_NAME = r"[a-z0-9][a-z0-9._-]{0,99}"
_REF = re.compile(rf"^(?P<name>{_NAME})(?::(?P<version>[0-9]{{1,9}})|@(?P<alias>[a-z0-9][a-z0-9_-]{{0,59}}))?$")

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


def resolve(session: Session, ref: ModelRef, *, default_alias: str) -> ModelVersion:
    """The version a reference points at now; a bare name means its default alias, else its newest version."""
    if ref.version is not None:
        mv = session.scalar(select(ModelVersion).filter_by(name=ref.name, version=ref.version))
    else:
        alias = ref.alias or default_alias
        mv = session.scalar(
            select(ModelVersion)
            .join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
            .where(ModelAlias.name == ref.name, ModelAlias.alias == alias)
        )
        if mv is None and ref.alias is None:
            mv = session.scalar(
                select(ModelVersion).filter_by(name=ref.name).order_by(ModelVersion.version.desc()).limit(1)
            )
    if mv is None:
        raise ModelNotFound(f"model {str(ref)!r} does not exist; GET /v1/models lists the models and versions")
    return mv


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
) -> ModelVersion:
    """Add the next version of `name` and point `aliases` at it (the caller commits)."""
    newest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0
    mv = ModelVersion(
        name=name,
        version=newest + 1,
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
        set_alias(session, name=name, alias=alias, version=mv)
    return mv


def set_alias(session: Session, *, name: str, alias: str, version: ModelVersion) -> None:
    """Point `name@alias` at `version` (creating or moving the alias)."""
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        session.add(ModelAlias(name=name, alias=alias, version_id=version.id))
    else:
        row.version_id = version.id
    session.flush()


def list_versions(session: Session, name: str | None = None) -> list[ModelVersion]:
    """Every version, grouped by model name, newest first within a name."""
    q = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())
    if name:
        q = q.where(ModelVersion.name == name)
    return list(session.scalars(q))


def get_version(session: Session, name: str, version: int) -> ModelVersion:
    """One version of a model, or ModelNotFound naming what exists."""
    mv = session.scalar(select(ModelVersion).filter_by(name=name, version=version))
    if mv is None:
        known = "no versions" if not list_versions(session, name) else "other versions"
        raise ModelNotFound(f"model {name}:{version} does not exist ({name} has {known}); GET /v1/models/{name}")
    return mv


def move_alias(session: Session, *, name: str, alias: str, version: int) -> ModelVersion:
    """Promote or roll back: point `name@alias` at an existing version (404 if it does not exist)."""
    mv = get_version(session, name, version)
    set_alias(session, name=name, alias=alias, version=mv)
    return mv
