"""/v1/keys: a tenant's API keys (scope admin): create (the key is shown once), list, get, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from api.auth import current_principal
from api.deps import db, services
from shared.config.errors import InsufficientScope
from shared.db.tenancy_models import ApiKey
from shared.schemas.public import Problem
from shared.tenancy import apikeys

bp = APIBlueprint(
    "keys",
    __name__,
    url_prefix="/v1/keys",
    abp_tags=[Tag(name="keys")],
    abp_responses={"404": Problem, "422": Problem},
)


Scope = Literal["jobs", "models", "admin"]  # the enum of the request schema (api.auth.ALL_SCOPES)
_JOBS_ONLY: list[Scope] = ["jobs"]


class KeyCreate(BaseModel):
    """A new key of the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100, description="What the key is for (shown in listings).")
    scopes: list[Scope] = Field(
        default_factory=lambda: _JOBS_ONLY.copy(),
        min_length=1,
        description="Any of jobs, models, admin; at most the scopes of the key that creates it.",
    )


class KeyPublic(BaseModel):
    """A key as listings show it: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The key's visible prefix: the key reads iq_<id>_<secret>.")
    tenant_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyPublic:
        """Render a key row."""
        return cls.model_validate(key)


class KeyWithSecret(KeyPublic):
    key: str = Field(description="The full key, shown only in this answer: store it now.")


class KeysPublic(BaseModel):
    data: list[KeyPublic]


class KeyPath(BaseModel):
    key_id: str = Field(description="The key's id (its prefix).")


@bp.post("", summary="Create an API key", responses={"201": KeyWithSecret, "403": Problem})
def create_key(body: KeyCreate) -> tuple[Response, int, dict[str, str]]:
    """A key of the caller's tenant with the given scopes (no more than the caller's own); the full key is in
    this answer only, the server keeps just a hash of it."""
    principal = current_principal()
    scopes = apikeys.check_scopes(body.scopes)
    extra = sorted(set(scopes) - principal.scopes)
    if extra:
        raise InsufficientScope(f"a key cannot grant scopes it does not have: {', '.join(extra)}")
    session = db()
    key, secret = apikeys.create_key(session=session, tenant_id=principal.tenant_id, scopes=scopes, name=body.name)
    session.commit()
    out = KeyWithSecret(**KeyPublic.of(key).model_dump(), key=secret)
    return jsonify(out.model_dump(mode="json")), 201, {"Location": f"/v1/keys/{key.id}"}


@bp.get("", summary="List the tenant's API keys", responses={"200": KeysPublic})
def list_keys() -> Response:
    """Every key of the caller's tenant, revoked ones too; secrets are never shown again."""
    rows = apikeys.list_keys(session=db(), tenant_id=current_principal().tenant_id)
    return jsonify(KeysPublic(data=[KeyPublic.of(k) for k in rows]).model_dump(mode="json"))


@bp.get("/<key_id>", summary="Get an API key", responses={"200": KeyPublic})
def get_key(path: KeyPath) -> Response:
    """One key of the caller's tenant, without its secret."""
    key = apikeys.get_key(session=db(), key_id=path.key_id, tenant_id=current_principal().tenant_id)
    return jsonify(KeyPublic.of(key).model_dump(mode="json"))


@bp.delete("/<key_id>", summary="Revoke an API key", responses={"204": None})
def revoke_key(path: KeyPath) -> tuple[str, int]:
    """The key stops working at once in this API process (401 from the next request) and within
    INFERQ_API_KEY_CACHE_S in the others; it stays listed with its revoked_at."""
    session = db()
    apikeys.revoke_key(session=session, key_id=path.key_id, tenant_id=current_principal().tenant_id)
    session.commit()
    services().keys.forget(path.key_id)
    return "", 204
