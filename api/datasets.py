"""/v1/datasets: upload a dataset (streamed to a temp file, validated, stored chunk-addressable), list, get, delete."""

from __future__ import annotations

import os
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from flask import Request, Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from api.auth import current_tenant
from api.deps import db, services
from api.openapi import QueryModel
from shared.config.errors import BadRequest, DatasetTooLarge
from shared.config.settings import Settings
from shared.db.models import Dataset
from shared.inputs import datasets as datastore
from shared.inputs.archives import COPY_CHUNK
from shared.schemas.public import Problem

MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing allowed on top of the file itself

bp = APIBlueprint(
    "datasets",
    __name__,
    url_prefix="/v1/datasets",
    abp_tags=[Tag(name="datasets")],
    abp_responses={"404": Problem, "422": Problem},
)


class DatasetPublic(BaseModel):
    """A stored dataset as clients see it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    format: str
    status: str
    item_count: int
    size_bytes: int = Field(description="Bytes of the uploaded file.")
    stored_bytes: int = Field(description="Bytes of the items as stored.")
    labelled: bool
    label_counts: dict[str, int]
    created_at: datetime

    @classmethod
    def of(cls, ds: Dataset) -> DatasetPublic:
        """Render a dataset row."""
        return cls.model_validate(ds)


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]


class DatasetPath(BaseModel):
    dataset_id: str = Field(description="The dataset's id (a UUID).")


class UploadQuery(QueryModel):
    filename: str | None = Field(None, max_length=255, description="Name of a raw-body upload (sets the format).")


class ListQuery(QueryModel):
    limit: int = Field(50, ge=1, le=500)


@bp.post(
    "",
    summary="Upload a dataset",
    responses={"201": DatasetPublic, "400": Problem, "413": Problem, "415": Problem},
)
def upload_dataset(query: UploadQuery) -> tuple[Response, int, dict[str, str]]:
    """Send the file as the raw body (`?filename=digits.npy`) or as one multipart file. Formats: a zip or
    tar(.gz) of images in class folders (`label/x.png`), a .npy/.npz array (N,H,W[,1]) uint8 or float with
    optional `y`, or a JSONL manifest of `{"custom_id", "image": <base64>, "label"}`. Refused uploads leave
    nothing behind."""
    settings = services().settings
    tmp, filename = receive(request, settings, query.filename)
    try:
        session = db()
        ds = datastore.ingest(
            session=session, settings=settings, src=tmp, filename=filename, tenant_id=current_tenant()
        )
        try:
            session.commit()
        except BaseException:
            session.rollback()
            datastore.remove_files(settings, ds.id)
            raise
    finally:
        tmp.unlink(missing_ok=True)
    return jsonify(DatasetPublic.of(ds).model_dump(mode="json")), 201, {"Location": f"/v1/datasets/{ds.id}"}


def receive(req: Request, settings: Settings, filename: str | None) -> tuple[Path, str]:
    """Stream the upload (raw body or the first multipart file) to a temp file in chunks, under the size limit."""
    limit = settings.dataset_max_upload_bytes
    if (req.content_length or 0) > limit + MULTIPART_SLACK:
        raise _too_large(limit)
    req.max_content_length = limit + MULTIPART_SLACK
    tmp_dir = settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    if req.mimetype == "multipart/form-data":
        if not req.files:
            raise BadRequest("the multipart upload has no file part")
        upload = next(iter(req.files.values()))
        stream: IO[bytes] = upload.stream
        filename = upload.filename or filename
    else:
        stream = req.stream
    if not filename:
        raise BadRequest("name the file: send it as a multipart file, or pass ?filename=digits.npy")
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    path, total = Path(name), 0
    try:
        with os.fdopen(fd, "wb") as out:
            while block := stream.read(COPY_CHUNK):
                total += len(block)
                if total > limit:
                    raise _too_large(limit)
                out.write(block)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if total == 0:
        path.unlink(missing_ok=True)
        raise BadRequest("the upload is empty")
    return path, os.path.basename(filename)


def _too_large(limit: int) -> DatasetTooLarge:
    return DatasetTooLarge(f"the upload is larger than {limit} bytes (INFERQ_DATASET_MAX_UPLOAD_BYTES)")


@bp.get("", summary="List datasets, newest first", responses={"200": DatasetsPublic})
def list_datasets(query: ListQuery) -> Response:
    """Item counts, sizes, label counts and status of the newest datasets."""
    rows = datastore.list_datasets(db(), tenant_id=current_tenant(), limit=query.limit)
    return jsonify(DatasetsPublic(data=[DatasetPublic.of(d) for d in rows]).model_dump(mode="json"))


@bp.get("/<dataset_id>", summary="Get a dataset", responses={"200": DatasetPublic})
def get_dataset(path: DatasetPath) -> Response:
    """Item count, size, label counts and status of one dataset."""
    ds = datastore.get_dataset(db(), path.dataset_id, tenant_id=current_tenant())
    body: dict[str, Any] = DatasetPublic.of(ds).model_dump(mode="json")
    return jsonify(body)


@bp.delete("/<dataset_id>", summary="Delete a dataset and its stored files", responses={"204": None, "409": Problem})
def delete_dataset(path: DatasetPath) -> tuple[str, int]:
    """Removes the dataset's row and every stored file (local or S3). Refused with `409 dataset-in-use` while a
    queued or running job (score or training) reads it: cancel it or wait. Finished score jobs keep their output
    and error files, without `true_label`."""
    session = db()
    ds = datastore.delete_dataset(session=session, dataset_id=path.dataset_id, tenant_id=current_tenant())
    session.commit()
    datastore.remove_files(services().settings, ds.id)
    return "", 204
