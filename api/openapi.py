"""Additions to the generated OpenAPI document that flask-openapi3 cannot infer from a signature."""

from __future__ import annotations

import copy
from typing import Any

from shared.schemas import JobCreate

MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "format": "binary"},
            "description": "One or more image files (PNG, JPEG, WebP, BMP, GIF). Any field name works.",
        },
        "model": {"type": "string", "description": "'name', 'name:version' or 'name@alias'."},
        "top_k": {"type": "integer", "minimum": 1},
        "explain": {
            "type": "string",
            "enum": ["true", "false"],
            "description": "Return each picture as the model saw it and a saliency map (a form field is text: "
            "the word true or false).",
        },
        "webhook": {"type": "string", "description": "URL that receives this job's events, signed."},
        "webhook_events_filter": {"type": "string", "description": "Comma-separated: start, progress, completed."},
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
            _problem_error_bodies(operation.get("responses", {}))
    spec["components"]["schemas"].pop("ValidationErrorModel", None)
    return spec


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _problem_error_bodies(responses: dict[str, Any]) -> None:
    """Error bodies are Problem objects served as application/problem+json (flask-openapi3's default 422 too)."""
    for code, resp in responses.items():
        content = resp.get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if code[0] not in "45" or schema is None:
            continue
        if code == "422" and schema.get("type") == "array":  # flask-openapi3's ValidationErrorModel list
            schema = PROBLEM_REF
        if schema == PROBLEM_REF:
            content.pop("application/json")
            content["application/problem+json"] = {"schema": PROBLEM_REF}
