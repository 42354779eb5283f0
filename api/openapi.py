"""Additions to the generated OpenAPI document that flask-openapi3 cannot infer from a signature."""

from __future__ import annotations

import copy
from typing import Any

from shared.schemas import JobCreate

MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": "One or more image files (PNG, JPEG, WebP, BMP, GIF). Any field name works."},
        "model": {"type": "string", "description": "'name', 'name:version' or 'name@alias'."},
        "top_k": {"type": "integer", "minimum": 1},
    },
}


def document_classify_body(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with POST /v1/jobs accepting multipart files or JSON, and problem+json error bodies."""
    spec = copy.deepcopy(spec)
    json_schema = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in json_schema.pop("$defs", {}).items():
        spec.setdefault("components", {}).setdefault("schemas", {}).setdefault(name, sub)
    spec["components"]["schemas"]["JobCreate"] = json_schema
    op = spec["paths"]["/v1/jobs"]["post"]
    op["requestBody"] = {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
        },
    }
    for path in spec["paths"].values():
        for operation in path.values():
            for code, resp in operation.get("responses", {}).items():
                content = resp.get("content", {})
                if code[0] in "45" and "application/json" in content:
                    content["application/problem+json"] = content.pop("application/json")
    return spec
