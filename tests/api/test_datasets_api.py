"""/v1/datasets uploads and score jobs over HTTP: formats, refusals, chunk messages, streamed files."""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from api.app import create_app
from shared.db.models import Dataset, Job, JobItem
from shared.runtime.celery_app import SCORE_CHUNK_TASK
from tests.api.conftest import AppFactory
from tests.dataset_factories import class_folder_entries, digits, npy_bytes, npz_bytes, zip_bytes
from tests.factories import (
    SentTasks,
    add_model_version,
    assert_problem,
    b64,
    db_session,
    png_bytes,
    services_of,
    settings_of,
)


def upload(client: FlaskClient, name: str, data: bytes, multipart: bool = False) -> Any:
    if multipart:
        return client.post("/v1/datasets", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")
    return client.post(f"/v1/datasets?filename={name}", data=data, content_type="application/octet-stream")


def dataset_rows(app: Flask) -> int:
    with db_session(app) as s:
        return s.scalar(select(func.count()).select_from(Dataset)) or 0


def test_upload_raw_npy_then_list_and_get(client: FlaskClient) -> None:
    """A raw-body .npy upload is stored; list and get show its item count, size and status."""
    resp = upload(client, "d.npy", npy_bytes(digits(20)[0]))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert (body["item_count"], body["status"], body["format"], body["labelled"]) == (20, "ready", "npy", False)
    assert client.get(f"/v1/datasets/{body['id']}").get_json()["item_count"] == 20
    assert [d["id"] for d in client.get("/v1/datasets").get_json()["data"]] == [body["id"]]


def test_upload_multipart_zip_with_labels(client: FlaskClient) -> None:
    """A multipart zip in class folders reports its label counts."""
    resp = upload(client, "digits.zip", zip_bytes(class_folder_entries(2)), multipart=True)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["label_counts"] == {"1": 2, "7": 2}


def test_bad_archive_is_a_problem_leaving_nothing(app: Flask, client: FlaskClient) -> None:
    """An archive with a `..` entry is refused with a stable problem type; no row, no stored files."""
    resp = upload(client, "evil.zip", zip_bytes([("../../x.png", b"x")]))
    assert_problem(resp, 422, "unsafe-archive")
    assert dataset_rows(app) == 0
    root = settings_of(app).blob_dir / "datasets"
    assert not root.exists() or list(root.iterdir()) == []
    assert list((settings_of(app).data_dir / "tmp").iterdir()) == []


def test_upload_past_the_size_limit(make_app: AppFactory) -> None:
    """An upload larger than INFERQ_DATASET_MAX_UPLOAD_BYTES is a 413 problem."""
    app = make_app(dataset_max_upload_bytes=4096)
    assert_problem(upload(app.test_client(), "d.npy", npy_bytes(digits(20)[0])), 413, "dataset-too-large")
    assert dataset_rows(app) == 0


def test_unknown_dataset_and_format(client: FlaskClient) -> None:
    """An unknown id is a 404 problem; an unrecognizable file is a 415 problem."""
    assert_problem(client.get(f"/v1/datasets/{uuid.uuid4()}"), 404, "dataset-not-found")
    assert_problem(upload(client, "x.bin", b"\x00\x01\x02"), 415, "unsupported-dataset-format")


def test_score_job_sends_one_message_per_chunk(make_app: AppFactory) -> None:
    """A score job is accepted with 202, counts the dataset's items, and publishes ids-only chunk messages."""
    app = make_app(chunk_size=8, array_chunk_size=8)
    client = app.test_client()
    ds = upload(client, "d.npy", npy_bytes(digits(20)[0])).get_json()
    resp = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"], "model": "mnist-cnn", "top_k": 2})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = resp.get_json()
    assert job["kind"] == "score" and job["dataset"] == ds["id"]
    assert job["request_counts"] == {"total": 20, "completed": 0, "failed": 0, "expired": 0}
    sent = services_of(app).celery
    assert isinstance(sent, SentTasks)
    assert [(n, a) for n, a, _ in sent.sent] == [(SCORE_CHUNK_TASK, [job["id"], i]) for i in range(3)]


def test_chunks_of_digit_arrays_are_larger_than_chunks_of_pictures(make_app: AppFactory) -> None:
    """An array of 28x28 digits (scored as one block, no per-item decoding) is split by INFERQ_ARRAY_CHUNK_SIZE;
    an array of other sizes and a zip of pictures (preprocessed one by one) by INFERQ_CHUNK_SIZE. The job records
    its chunk size, which the workers and the output files follow."""
    app = make_app(chunk_size=8, array_chunk_size=16)
    client = app.test_client()
    sent = services_of(app).celery
    assert isinstance(sent, SentTasks)
    wide = np.zeros((20, 32, 32), np.uint8)
    wide[:, 8:24, 14:18] = 255
    for name, data, size in [
        ("digits.npy", npy_bytes(digits(20)[0]), 16),
        ("digits4d.npy", npy_bytes(digits(20)[0][..., None]), 16),
        ("wide.npy", npy_bytes(wide), 8),
        ("pictures.zip", zip_bytes(class_folder_entries(per_class=10)), 8),
    ]:
        ds = upload(client, name, data).get_json()
        sent.sent.clear()
        resp = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"], "model": "mnist-cnn"})
        assert resp.status_code == 202, resp.get_data(as_text=True)
        job_id = resp.get_json()["id"]
        with app.app_context():
            session = services_of(app).sessions()
            assert session.get(Job, uuid.UUID(job_id)).params["chunk_size"] == size, name
            session.close()
        assert [a for _, a, _ in sent.sent] == [[job_id, i] for i in range(-(-20 // size))], name


def test_score_job_refusals(client: FlaskClient) -> None:
    """A score job naming an unknown dataset is a 404; unknown fields are a 422."""
    assert_problem(
        client.post("/v1/jobs", json={"kind": "score", "dataset": str(uuid.uuid4())}), 404, "dataset-not-found"
    )
    assert_problem(client.post("/v1/jobs", json={"kind": "score", "dataset": "x", "bogus": 1}), 422, "validation-error")


def _score_job_with_rows(app: Flask) -> str:
    """A finished score job over a labelled npz, with one succeeded and one failed row per pair of items."""
    client = app.test_client()
    x, y = digits(6)
    ds = upload(client, "d.npz", npz_bytes(x=x, y=y)).get_json()
    job_id = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}).get_json()["id"]
    with db_session(app) as s:
        for i in range(6):
            ok = i % 2 == 0
            s.add(
                JobItem(
                    job_id=uuid.UUID(job_id),
                    idx=i,
                    filename=str(i),
                    status="succeeded" if ok else "failed",
                    label=str(y[i]) if ok else None,
                    confidence=0.9 if ok else None,
                    top_k=[{"label": str(y[i]), "confidence": 0.9}] if ok else None,
                    error_type=None if ok else "invalid-image",
                    error=None if ok else "bad",
                )
            )
        s.commit()
    return job_id


def test_output_and_errors_stream_as_csv_and_jsonl(app: Flask) -> None:
    """The output file has one row per scored item with the true label; the error file the rest."""
    client = app.test_client()
    job_id = _score_job_with_rows(app)
    out = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{job_id}/output?format=csv").get_data(as_text=True))))
    assert [r["index"] for r in out] == ["0", "2", "4"]
    assert all(r["label"] == r["true_label"] for r in out)
    lines = client.get(f"/v1/jobs/{job_id}/errors?format=jsonl").get_data(as_text=True).splitlines()
    assert [json.loads(line)["index"] for line in lines] == [1, 3, 5]


def test_output_files_carry_warnings(app: Flask) -> None:
    """Every output format has a warnings column: a list of codes (JSON text in CSV), empty when nothing was noticed,
    and a null label beside `no-ink`."""
    client = app.test_client()
    x, y = digits(3)
    ds = upload(client, "d.npz", npz_bytes(x=x, y=y)).get_json()
    job_id = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}).get_json()["id"]
    top = [{"label": "3", "confidence": 0.4}]
    with db_session(app) as s:
        for idx, label, conf, ranked, warned in [
            (0, "3", 0.4, top, ["low-confidence"]),
            (1, None, None, None, ["no-ink"]),
            (2, "3", 0.4, top, []),
        ]:
            s.add(
                JobItem(
                    job_id=uuid.UUID(job_id),
                    idx=idx,
                    filename=str(idx),
                    status="succeeded",
                    label=label,
                    confidence=conf,
                    top_k=ranked,
                    warnings=warned,
                )
            )
        s.commit()
    want = [["low-confidence"], ["no-ink"], []]
    out = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{job_id}/output?format=csv").get_data(as_text=True))))
    assert list(out[0])[-1] == "warnings" and [json.loads(r["warnings"]) for r in out] == want
    assert (out[1]["label"], out[1]["confidence"], out[1]["top_k"]) == ("", "", "")
    lines = client.get(f"/v1/jobs/{job_id}/output?format=jsonl").get_data(as_text=True).splitlines()
    assert [json.loads(line)["warnings"] for line in lines] == want
    assert json.loads(lines[1])["label"] is None
    table = read_parquet(client.get(f"/v1/jobs/{job_id}/output?format=parquet")).read()
    assert table.column("warnings").to_pylist() == want


def read_parquet(resp: Any) -> Any:
    """The body of a Parquet download as a pyarrow ParquetFile (after checking the media type)."""
    import pyarrow.parquet as pq

    assert resp.status_code == 200, resp.get_data()
    assert resp.mimetype == "application/vnd.apache.parquet"
    return pq.ParquetFile(io.BytesIO(resp.get_data()))


def test_parquet_output_has_the_csv_columns(app: Flask) -> None:
    """format=parquet streams the same columns and rows as the CSV, with top_k as a list of structs."""
    client = app.test_client()
    job_id = _score_job_with_rows(app)
    out = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{job_id}/output?format=csv").get_data(as_text=True))))
    table = read_parquet(client.get(f"/v1/jobs/{job_id}/output?format=parquet")).read()
    assert table.column_names == list(out[0].keys())
    rows = table.to_pylist()
    assert [r["index"] for r in rows] == [int(r["index"]) for r in out] == [0, 2, 4]
    assert [r["true_label"] for r in rows] == [r["true_label"] for r in out]
    assert rows[0]["top_k"] == [{"label": rows[0]["label"], "confidence": 0.9}] and rows[0]["confidence"] == 0.9
    errors = read_parquet(client.get(f"/v1/jobs/{job_id}/errors?format=parquet")).read().to_pylist()
    assert [(e["index"], e["error_type"]) for e in errors] == [
        (1, "invalid-image"),
        (3, "invalid-image"),
        (5, "invalid-image"),
    ]


def test_parquet_writes_one_row_group_per_chunk(make_app: AppFactory) -> None:
    """Rows are written (and streamed) one row group per scoring chunk, never as one whole table."""
    import pyarrow.parquet as pq

    app = make_app(chunk_size=2, array_chunk_size=2)
    job_id = _score_job_with_rows(app)
    resp = app.test_client().get(f"/v1/jobs/{job_id}/output?format=parquet", buffered=False)
    parts = [bytes(p) for p in resp.response if p]
    pf = pq.ParquetFile(io.BytesIO(b"".join(parts)))
    assert pf.metadata.num_rows == 3 and pf.metadata.num_row_groups == 3  # items 0, 2, 4 fall in chunks 0, 1, 2
    assert len(parts) == 4  # header + first group, two more groups, then the footer


def test_parquet_of_a_job_without_rows_is_an_empty_table(app: Flask) -> None:
    """A job with no failed item still gives a readable Parquet error file with the columns and no rows."""
    client = app.test_client()
    ds = upload(client, "d.npy", npy_bytes(digits(3)[0])).get_json()
    job_id = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}).get_json()["id"]
    pf = read_parquet(client.get(f"/v1/jobs/{job_id}/errors?format=parquet"))
    assert pf.metadata.num_rows == 0 and pf.schema_arrow.names == ["custom_id", "index", "error_type", "error"]


def test_delete_dataset_removes_row_and_files(app: Flask, client: FlaskClient) -> None:
    """DELETE answers 204, removes the row and the stored files; then the dataset is a 404 everywhere."""
    ds = upload(client, "digits.zip", zip_bytes(class_folder_entries(2))).get_json()
    root = settings_of(app).blob_dir / "datasets" / ds["id"]
    assert sorted(p.name for p in root.iterdir()) == ["index.jsonl", "items.bin", "offsets.bin"]
    resp = client.delete(f"/v1/datasets/{ds['id']}")
    assert resp.status_code == 204 and resp.get_data() == b""
    assert dataset_rows(app) == 0 and not root.exists()
    assert_problem(client.get(f"/v1/datasets/{ds['id']}"), 404, "dataset-not-found")
    assert_problem(client.delete(f"/v1/datasets/{ds['id']}"), 404, "dataset-not-found")
    assert_problem(client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}), 404, "dataset-not-found")


def test_delete_dataset_in_use_is_409(app: Flask, client: FlaskClient) -> None:
    """While a score job on it is queued or running, DELETE is a 409 dataset-in-use naming the job; after cancel
    it succeeds, and the finished job's output still downloads (without true labels)."""
    x, y = digits(4)
    ds = upload(client, "d.npz", npz_bytes(x=x, y=y)).get_json()
    job_id = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"]}).get_json()["id"]
    body = assert_problem(client.delete(f"/v1/datasets/{ds['id']}"), 409, "dataset-in-use")
    assert body["jobs"] == [job_id] and job_id in body["detail"]
    assert dataset_rows(app) == 1
    with db_session(app) as s:
        s.add(JobItem(job_id=uuid.UUID(job_id), idx=0, filename="0", status="succeeded", label="3", confidence=0.5))
        s.commit()
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    out = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{job_id}/output").get_data(as_text=True))))
    assert [(r["index"], r["label"], r["true_label"]) for r in out] == [("0", "3", "")]


def test_a_dataset_that_an_optimize_or_evaluate_job_reads_cannot_be_deleted(app: Flask, client: FlaskClient) -> None:
    """Optimizing or evaluating a version trained on an uploaded dataset reads its test split again: while such a
    job is unfinished, DELETE is a 409 naming it; once the jobs are canceled the dataset goes."""
    ds = upload(client, "digits.zip", zip_bytes(class_folder_entries(2))).get_json()
    with db_session(app) as s:
        add_model_version(s, name="own", aliases=(), params={"dataset_request": ds["id"]})
        s.commit()
    jobs = [
        client.post("/v1/models/own/versions/1/optimize", json={"method": "float16"}).get_json()["id"],
        client.post("/v1/models/own/versions/1/evaluate", json={"per_corruption": 10}).get_json()["id"],
    ]
    body = assert_problem(client.delete(f"/v1/datasets/{ds['id']}"), 409, "dataset-in-use")
    assert body["jobs"] == jobs
    for job_id in jobs:
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204


def test_delete_route_is_documented(app: Flask) -> None:
    """The OpenAPI document lists DELETE /v1/datasets/{dataset_id} with its 204, 404 and 409 answers."""
    op = app.api_doc["paths"]["/v1/datasets/{dataset_id}"]["delete"]
    assert {"204", "404", "409"} <= set(op["responses"])


def test_classify_job_has_no_score_fields(app: Flask) -> None:
    """Classify jobs render without the score-only fields (they stay null)."""
    with db_session(app) as s:
        job = Job(kind="classify", model_ref="mnist-cnn", params={"top_k": 1})
        s.add(job)
        s.commit()
        job_id = job.id
    body = app.test_client().get(f"/v1/jobs/{job_id}").get_json()
    assert body["request_counts"] is None and body["eta_seconds"] is None


def test_create_app_registers_dataset_routes(tmp_path: Any) -> None:
    """The dataset and file routes are part of the OpenAPI document."""
    from tests.factories import make_settings

    app = create_app(make_settings(tmp_path))
    paths = app.api_doc["paths"]
    assert "/v1/datasets" in paths and "/v1/jobs/{job_id}/output" in paths
    services_of(app).engine.dispose()


def test_score_job_takes_a_webhook(make_app: AppFactory) -> None:
    """A score job accepts `webhook` and `webhook_events_filter` like a classify job and stores them."""
    app = make_app(chunk_size=8, array_chunk_size=8, webhook_allow_cidrs="127.0.0.0/8")
    client = app.test_client()
    ds = upload(client, "d.npy", npy_bytes(digits(4)[0])).get_json()
    body = {
        "kind": "score",
        "dataset": ds["id"],
        "webhook": "http://127.0.0.1:9/hook",
        "webhook_events_filter": ["completed"],
    }
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    with db_session(app) as s:
        job = s.get(Job, uuid.UUID(resp.get_json()["id"]))
        assert job is not None and job.params["webhook"] == {"url": "http://127.0.0.1:9/hook", "events": ["completed"]}


def test_score_job_refuses_an_internal_webhook(make_app: AppFactory) -> None:
    """A score job whose webhook points at a loopback address is refused before anything is written."""
    client = make_app(chunk_size=8, array_chunk_size=8).test_client()
    ds = upload(client, "d.npy", npy_bytes(digits(4)[0])).get_json()
    resp = client.post("/v1/jobs", json={"kind": "score", "dataset": ds["id"], "webhook": "http://127.0.0.1/x"})
    assert_problem(resp, 422, "webhook-url-refused")


def test_only_score_jobs_have_files(client: FlaskClient) -> None:
    """Output and error files of a classify job: a 409 job-has-no-files (the job exists; it is of another kind)."""
    job_id = client.post("/v1/jobs", json={"images": [{"data": b64(png_bytes())}]}).get_json()["id"]
    for which in ("output", "errors"):
        body = assert_problem(client.get(f"/v1/jobs/{job_id}/{which}"), 409, "job-has-no-files")
        assert "classify job" in body["detail"]
