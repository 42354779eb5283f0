"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import text

from api.deps import services
from shared.schemas.public import Health

bp = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])


@bp.get("/healthz", summary="The process is up", responses={"200": Health})
def healthz() -> Response:
    """Always 200 while the process serves requests."""
    return jsonify(Health(status="ok").model_dump())


@bp.get("/readyz", summary="The database and Redis are reachable", responses={"200": Health, "503": Health})
def readyz() -> tuple[Response, int]:
    """200 when both the database and the broker answer, else 503 naming what failed."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with svc.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.client.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return jsonify(Health(status="ok" if ok else "unavailable", checks=checks).model_dump()), 200 if ok else 503
