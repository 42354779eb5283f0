"""/v1/models: the registry's models, versions, aliases and metrics."""

from __future__ import annotations

from collections import defaultdict

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.auth import current_tenant
from api.deps import db
from shared.config.errors import ModelNotFound
from shared.db.models import ModelVersion
from shared.registry.versions import NAME_PATTERN, aliases_of, list_versions
from shared.schemas.public import ModelPublic, ModelsPublic, ModelVersionPublic, Problem

bp = APIBlueprint(
    "models", __name__, url_prefix="/v1/models", abp_tags=[Tag(name="models")], abp_responses={"404": Problem}
)


class ModelPath(BaseModel):
    name: str = Field(description="The model's name, e.g. mnist-cnn.", pattern=NAME_PATTERN)


def model_public(session: Session, name: str, versions: list[ModelVersion], tenant_id: str) -> ModelPublic:
    """One model as the tenant sees it: its visible versions, each with the aliases that point at it for the
    tenant (the tenant's own aliases over the public ones; another tenant's are never shown)."""
    aliases = aliases_of(session, name, tenant_id=tenant_id)  # alias -> version id
    numbers = {mv.id: mv.version for mv in versions}
    by_version: dict[int, list[str]] = defaultdict(list)
    for alias, version_id in aliases.items():
        by_version[version_id].append(alias)
    return ModelPublic(
        name=name,
        aliases={alias: numbers[vid] for alias, vid in aliases.items() if vid in numbers},
        versions=[ModelVersionPublic.of(mv, by_version[mv.id]) for mv in versions],
    )


def _group(session: Session, versions: list[ModelVersion], tenant_id: str) -> list[ModelPublic]:
    by_name: dict[str, list[ModelVersion]] = defaultdict(list)
    for mv in versions:
        by_name[mv.name].append(mv)
    return [model_public(session, name, mvs, tenant_id) for name, mvs in by_name.items()]


@bp.get("", summary="List models and their versions", responses={"200": ModelsPublic})
def list_models() -> Response:
    """Every model with its aliases and versions (newest first), each with its metrics."""
    session, tenant = db(), current_tenant()
    models = _group(session, list_versions(session, tenant_id=tenant), tenant)
    return jsonify(ModelsPublic(data=models).model_dump(mode="json"))


@bp.get("/<name>", summary="Get one model", responses={"200": ModelPublic})
def get_model(path: ModelPath) -> Response:
    """One model's aliases and versions."""
    session, tenant = db(), current_tenant()
    groups = _group(session, list_versions(session, path.name, tenant_id=tenant), tenant)
    if not groups:
        raise ModelNotFound(f"model {path.name!r} does not exist; GET /v1/models lists the models")
    return jsonify(groups[0].model_dump(mode="json"))
