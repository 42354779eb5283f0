"""Additions to the generated OpenAPI document that flask-openapi3 cannot infer from a signature."""

from __future__ import annotations

import copy
import functools
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode

from shared.config.settings import Settings
from shared.registry.model_jobs import REALWORLD_CORRUPTIONS, UPLOAD_SUFFIXES
from shared.schemas.public import DEADLINE_DOC, DEADLINE_HEADER, PRIORITY_DOC, JobCreate
from shared.webhooks.outbox import WebhookEvent


class QueryModel(BaseModel):
    """A route's query-string model. flask-openapi3 asks for its JSON schema on every request (to find its list
    fields), and pydantic generates it anew each time (GET /v1/jobs/{id} took 3.4 ms of CPU in-process with that,
    2.35 without). Here each class computes it once per set of arguments and hands out copies."""

    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool | None = None,
        ref_template: str = DEFAULT_REF_TEMPLATE,
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: JsonSchemaMode = "validation",
        *,
        union_format: Literal["any_of", "primitive_type_array"] = "any_of",
    ) -> dict[str, Any]:
        generator: Any = schema_generator  # a class: hashable by identity, whatever its instances do
        return copy.deepcopy(_json_schema(cls, by_alias, ref_template, generator, mode, union_format))


@functools.cache
def _json_schema(  # noqa: PLR0913 - pydantic's arguments, as the cache key
    model: type[BaseModel],
    by_alias: bool | None,
    ref_template: str,
    schema_generator: type[GenerateJsonSchema],
    mode: JsonSchemaMode,
    union_format: Literal["any_of", "primitive_type_array"],
) -> dict[str, Any]:
    return BaseModel.model_json_schema.__func__(  # type: ignore[attr-defined]
        model, by_alias, ref_template, schema_generator, mode, union_format=union_format
    )


# What the API's own checks enforce, stated so that a schema-driven client does not send what will be refused.
# (Whether bytes decode as an image, dataset or model, or a URL's host resolves to a public address, no schema can
# say: those stay 4xx problems of their own type.)
WEBHOOK_URL = {"type": "string", "pattern": r"^https?://\S+$", "maxLength": 2048}
OPTIONAL_WEBHOOK_URL = {  # "" or null: no webhook
    "anyOf": [{"type": "string", "pattern": r"^(|https?://\S+)$", "maxLength": 2048}, {"type": "null"}]
}
EVENTS = [e.value for e in WebhookEvent]
_EVENT = "(" + "|".join(EVENTS) + ")"
EVENTS_TEXT = rf"^$|^[\s,]*{_EVENT}([\s,]*,[\s,]*{_EVENT})*[\s,]*$"  # "start, completed" ("" = none)
BASE64 = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"  # what base64.b64decode(validate=True) reads
# webhook_events_filter without a webhook URL is refused (it would filter nothing)
FILTER_NEEDS_WEBHOOK = {
    "if": {
        "required": ["webhook_events_filter"],
        "properties": {"webhook_events_filter": {"not": {"enum": [None, ""]}}},
    },
    "then": {"required": ["webhook"], "properties": {"webhook": WEBHOOK_URL}},
}

MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "format": "binary", "minLength": 1},
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
        "webhook": {
            "type": "string",
            "pattern": r"^(|https?://\S+)$",
            "maxLength": 2048,
            "description": "URL that receives this job's events, signed.",
        },
        "webhook_events_filter": {"type": "string", "description": "Comma-separated: start, progress, completed."},
        "deadline_s": {"type": "number", "exclusiveMinimum": 0, "description": DEADLINE_DOC},
        "priority": {"type": "integer", "minimum": 0, "maximum": 2, "description": PRIORITY_DOC},
    },
}


DATASET_BODY = {
    "required": True,
    "description": "The dataset file as the raw body (name it with ?filename=) or as one multipart file.",
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary", "minLength": 1}},
            }
        },
    },
}
MODEL_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "labels"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "minLength": 1,
                        "description": "The model; its file name ends in " + ", ".join(UPLOAD_SUFFIXES) + ".",
                    },
                    "labels": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "description": 'A JSON list of non-empty strings, one per output class: ["0", "1", ...].',
                    },
                    "input_spec": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "description": "JSON; default MNIST 28x28x1 in [0, 1].",
                    },
                },
            }
        }
    },
}


def document_constraints(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The spec with the constraints the API checks beyond its pydantic models: the limits that are settings,
    webhook URLs and events, known corruption names, non-empty images, and the dataset and model upload bodies."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    _json_schema_bounds(schemas)
    for name in ("JobCreate", "TrainingCreate"):
        props = schemas[name]["properties"]
        props["webhook"] = {**OPTIONAL_WEBHOOK_URL, "description": props["webhook"].get("description", "")}
        for option in props["webhook_events_filter"]["anyOf"]:
            if option.get("type") == "array":
                option.update(minItems=1, items={"type": "string", "enum": EVENTS})
            elif option.get("type") == "string":
                option["pattern"] = EVENTS_TEXT
        schemas[name].update(FILTER_NEEDS_WEBHOOK)
    schemas["ImageIn"]["properties"]["data"].update(minLength=1, pattern=BASE64)
    _set_maximum(schemas["JobCreate"]["properties"]["top_k"], settings.max_top_k)
    multipart = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    multipart["schema"]["properties"]["top_k"]["maximum"] = settings.max_top_k
    multipart["schema"]["properties"]["deadline_s"]["maximum"] = settings.max_deadline_s
    spec["paths"]["/v1/jobs"]["post"].setdefault("parameters", []).append(
        {
            "name": DEADLINE_HEADER,
            "in": "header",
            "required": False,
            "description": "deadline_s as a request header; a deadline_s in the body wins (both are checked).",
            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": settings.max_deadline_s},
        }
    )
    spec["paths"]["/v1/jobs"]["post"]["parameters"].append(
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": f"`wait=N` (RFC 7240): wait up to N seconds (at most {settings.max_wait_s:g}, "
            "INFERQ_MAX_WAIT_S; a bare `wait` means that) for the classify job to finish. Finished: 201 with the "
            "predictions, saving the poll; not yet: the usual 202. `Preference-Applied` echoes the wait honoured.",
            "schema": {"type": "string", "example": "wait=10"},
        }
    )
    for option in schemas["JobCreate"]["properties"]["deadline_s"]["anyOf"]:
        if option.get("type") == "number":  # a JsonFloat's bound keeps pydantic's name: JSON Schema's is below
            option["maximum"] = settings.max_deadline_s
    train = schemas["TrainingCreate"]["properties"]
    train["epochs"]["maximum"] = settings.train_max_epochs
    train["batch_size"]["maximum"] = settings.train_max_batch_size
    corruptions = schemas["EvaluateCreate"]["properties"]["corruptions"]["anyOf"][0]
    corruptions["items"] = {"type": "string", "enum": list(REALWORLD_CORRUPTIONS)}
    schemas["EndpointCreate"]["properties"]["url"].update(WEBHOOK_URL)
    spec["paths"]["/v1/datasets"]["post"]["requestBody"] = DATASET_BODY
    spec["paths"]["/v1/models/{name}/uploads"]["post"]["requestBody"] = MODEL_UPLOAD_BODY
    return spec


def _set_maximum(schema: dict[str, Any], maximum: int) -> None:
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            option["maximum"] = maximum


# pydantic leaves the bounds of a JsonInt / JsonFloat (a number behind a BeforeValidator) under its own names
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _json_schema_bounds(node: Any) -> None:
    """Rename pydantic's ge/le/gt/lt to JSON Schema's keywords in every numeric schema under `node`."""
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            for ours, theirs in _BOUNDS.items():
                if ours in node:
                    node[theirs] = node.pop(ours)
        for value in node.values():
            _json_schema_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _json_schema_bounds(value)


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
