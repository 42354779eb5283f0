"""Query-string models compute their JSON schema once (flask-openapi3 asks for it on every request)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import BaseModel, Field
from pydantic.json_schema import GenerateJsonSchema

from api.jobs import JobQuery, JobsQuery, ResultsQuery
from api.openapi import QueryModel
from tests.factories import png_bytes


class Plain(BaseModel):
    tags: list[str] | None = Field(None, description="Repeatable.")
    limit: int = Field(50, ge=1, le=500)


class Cached(QueryModel):
    tags: list[str] | None = Field(None, description="Repeatable.")
    limit: int = Field(50, ge=1, le=500)


@pytest.mark.parametrize("mode", ["validation", "serialization"])
def test_the_cached_schema_is_the_one_pydantic_generates(mode: str) -> None:
    for model in (JobQuery, JobsQuery, ResultsQuery):
        assert model.model_json_schema(mode=mode) == BaseModel.model_json_schema.__func__(model, mode=mode)  # type: ignore[attr-defined]
    assert Cached.model_json_schema(mode=mode) == Plain.model_json_schema(mode=mode) | {"title": "Cached"}
    assert Cached.model_json_schema(ref_template="#/components/schemas/{model}") == Plain.model_json_schema(
        ref_template="#/components/schemas/{model}"
    ) | {"title": "Cached"}


def test_a_caller_changing_its_copy_changes_nobody_elses() -> None:
    first = Cached.model_json_schema()
    first["properties"]["limit"]["maximum"] = 1
    first.clear()
    assert Cached.model_json_schema()["properties"]["limit"]["maximum"] == 500


def test_polling_a_job_generates_no_schema_after_the_first_request(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    resp = client.post("/v1/jobs", data={"images": (io.BytesIO(png_bytes()), "a.png")})
    assert resp.status_code == 202, resp.get_json()
    url = f"/v1/jobs/{resp.get_json()['id']}"
    assert client.get(url).status_code == 200
    assert client.get("/v1/jobs").status_code == 200
    generated: list[object] = []
    generate = GenerateJsonSchema.generate

    def counted(self: GenerateJsonSchema, *args: Any, **kwargs: Any) -> Any:
        generated.append(args)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerateJsonSchema, "generate", counted)
    for _ in range(5):
        assert client.get(url, query_string={"wait": 0}).status_code == 200
        assert client.get("/v1/jobs", query_string={"limit": 3}).status_code == 200
    assert generated == []  # before QueryModel: one generation per request
