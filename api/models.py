"""/v1/models: the registry's models, versions, aliases and metrics."""

from __future__ import annotations

from collections import defaultdict

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from api.deps import db
from shared.errors import ModelNotFound
from shared.models import ModelVersion
from shared.registry import list_versions
from shared.schemas import ModelPublic, ModelsPublic, ModelVersionPublic, Problem

bp = APIBlueprint(
    "models", __name__, url_prefix="/v1/models", abp_tags=[Tag(name="models")], abp_responses={"404": Problem}
)


class ModelPath(BaseModel):
    name: str = Field(description="The model's name, e.g. mnist-cnn.")


def _group(versions: list[ModelVersion]) -> list[ModelPublic]:
    by_name: dict[str, list[ModelVersion]] = defaultdict(list)
    for mv in versions:
        by_name[mv.name].append(mv)
    return [
        ModelPublic(
            name=name,
            aliases={a.alias: mv.version for mv in mvs for a in mv.aliases},
            versions=[ModelVersionPublic.of(mv) for mv in mvs],
        )
        for name, mvs in by_name.items()
    ]


@bp.get("", summary="List models and their versions", responses={"200": ModelsPublic})
def list_models() -> Response:
    """Every model with its aliases and versions (newest first), each with its metrics."""
    return jsonify(ModelsPublic(data=_group(list_versions(db()))).model_dump(mode="json"))


@bp.get("/<name>", summary="Get one model", responses={"200": ModelPublic})
def get_model(path: ModelPath) -> Response:
    """One model's aliases and versions."""
    groups = _group(list_versions(db(), path.name))
    if not groups:
        raise ModelNotFound(f"model {path.name!r} does not exist; GET /v1/models lists the models")
    return jsonify(groups[0].model_dump(mode="json"))
