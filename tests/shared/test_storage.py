"""Blob stores: local files (atomic, durable, keys cannot escape the root) and S3 on a real S3-compatible server
(moto's server mode over HTTP); every protocol test runs on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config.settings import Settings
from shared.inputs.storage import UPLOAD_PART_BYTES, BlobStore, FsspecBlobStore, LocalBlobStore, make_store
from tests.factories import make_settings
from tests.s3_server import MotoS3


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    """One moto S3 server for this module."""
    with MotoS3() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """A store of each kind: files under tmp_path, or a fresh bucket (and prefix) on the moto server."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    server: MotoS3 = request.getfixturevalue("moto")
    return make_store(server.settings(make_settings(tmp_path), server.new_bucket(), "root/prefix"))


@pytest.fixture
def local(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def test_roundtrip(blobs: BlobStore) -> None:
    """put then get returns the same bytes; exists tracks the key; delete removes it and is idempotent."""
    key = "inputs/3f2a/00001"
    assert not blobs.exists(key)
    assert blobs.put(key, b"\x89PNG data") == key
    assert blobs.exists(key) and blobs.get(key) == b"\x89PNG data"
    blobs.delete(key)
    assert not blobs.exists(key)
    blobs.delete(key)  # deleting twice is fine
    with pytest.raises(FileNotFoundError):
        blobs.get(key)


def test_put_overwrites(blobs: BlobStore) -> None:
    """A second put of a key replaces its bytes."""
    blobs.put("a/b", b"one")
    blobs.put("a/b", b"two")
    assert blobs.get("a/b") == b"two"


def test_empty_blob(blobs: BlobStore) -> None:
    """Zero bytes are stored and read back as zero bytes."""
    blobs.put("empty", b"")
    assert blobs.exists("empty") and blobs.get("empty") == b""


def test_files_live_under_root(local: LocalBlobStore, tmp_path: Path) -> None:
    """A key maps to a file of the same relative path under the root."""
    local.put("models/mnist-cnn/1.keras", b"x")
    assert (tmp_path / "blobs" / "models" / "mnist-cnn" / "1.keras").read_bytes() == b"x"


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "a/../../escape",
        "a/..",
        "..",
        "/etc/passwd",
        "/abs",
        "",
        ".hidden",
        "a//b/../../..",
        "a\\..\\b",
        "a b",
        "a\x00b",
        "~/x",
        "x" * 402,
    ],
)
@pytest.mark.parametrize("op", ["put", "get", "get_range", "delete", "delete_prefix", "exists"])
def test_bad_keys_are_refused(local: LocalBlobStore, tmp_path: Path, key: str, op: str) -> None:
    """Keys with '..', absolute paths or odd characters raise ValueError for every operation."""
    with pytest.raises(ValueError, match="invalid blob key"):
        if op == "put":
            local.put(key, b"x")
        elif op == "get_range":
            local.get_range(key, 0, 1)
        else:
            getattr(local, op)(key)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "", "a b"])
@pytest.mark.parametrize("op", ["put", "get", "delete", "exists", "delete_prefix"])
def test_s3_bad_keys_are_refused_before_any_request(moto: MotoS3, tmp_path: Path, key: str, op: str) -> None:
    """The S3 store checks keys the same way, so no key can leave its bucket prefix."""
    bucket = moto.new_bucket()
    store = make_store(moto.settings(make_settings(tmp_path), bucket))
    with pytest.raises(ValueError, match="invalid blob key"):
        store.put(key, b"x") if op == "put" else getattr(store, op)(key)
    assert moto.keys(bucket) == []


def test_write_leaves_no_temp_files(local: LocalBlobStore, tmp_path: Path) -> None:
    """After puts (including overwrites) only the final files remain, no .tmp- leftovers."""
    for i in range(3):
        local.put(f"inputs/job/{i:05d}", b"data" * i)
    local.put("inputs/job/00000", b"again")
    names = sorted(p.name for p in (tmp_path / "blobs" / "inputs" / "job").iterdir())
    assert names == ["00000", "00001", "00002"]


def test_failed_write_leaves_no_temp_file(local: LocalBlobStore, tmp_path: Path) -> None:
    """A write that fails midway removes its temp file and leaves the old value in place."""
    local.put("k", b"old")
    with pytest.raises(TypeError):
        local.put("k", "not bytes")  # type: ignore[arg-type]
    assert local.get("k") == b"old"
    assert [p.name for p in (tmp_path / "blobs").iterdir()] == ["k"]


def test_range_reads(blobs: BlobStore) -> None:
    """get_range returns exactly the asked bytes, fewer at the end, none for a zero length; absent is an error."""
    blobs.put("d/items.bin", bytes(range(100)))
    assert blobs.get_range("d/items.bin", 10, 5) == bytes(range(10, 15))
    assert blobs.get_range("d/items.bin", 95, 50) == bytes(range(95, 100))
    assert blobs.get_range("d/items.bin", 40, 0) == b""
    with pytest.raises(FileNotFoundError):
        blobs.get_range("d/absent", 0, 10)


def test_open_read_streams_lines(blobs: BlobStore) -> None:
    """open_read gives a file object that iterates the blob's lines in order."""
    blobs.put("d/index.jsonl", b"".join(b'{"id": %d}\n' % i for i in range(1000)))
    with blobs.open_read("d/index.jsonl") as fh:
        lines = list(fh)
    assert len(lines) == 1000 and lines[0] == b'{"id": 0}\n' and lines[-1] == b'{"id": 999}\n'


def test_move_in_consumes_the_local_file(blobs: BlobStore, tmp_path: Path) -> None:
    """A local file larger than one upload part is stored whole (multipart on S3) and the local copy is gone."""
    data = bytes(range(256)) * (UPLOAD_PART_BYTES // 256 + 4096)
    src = tmp_path / "staging" / "items.bin"
    src.parent.mkdir()
    src.write_bytes(data)
    blobs.move_in("datasets/x/items.bin", src)
    assert not src.exists()
    assert blobs.get("datasets/x/items.bin") == data
    assert blobs.get_range("datasets/x/items.bin", UPLOAD_PART_BYTES - 2, 4) == data[UPLOAD_PART_BYTES - 2 :][:4]


def test_delete_prefix_removes_only_that_prefix(blobs: BlobStore) -> None:
    """delete_prefix removes every blob under it, none of a sibling prefix, and is fine when already empty."""
    for key in ("datasets/a/x", "datasets/a/y/z", "datasets/ab/x", "datasets/b/x"):
        blobs.put(key, b"1")
    blobs.delete_prefix("datasets/a")
    assert [blobs.exists(k) for k in ("datasets/a/x", "datasets/a/y/z", "datasets/ab/x", "datasets/b/x")] == [
        False,
        False,
        True,
        True,
    ]
    blobs.delete_prefix("datasets/a")


def test_make_store_follows_the_storage_url(moto: MotoS3, tmp_path: Path) -> None:
    """Empty INFERQ_STORAGE_URL means files under data_dir/blobs; s3://bucket/prefix puts objects in that bucket."""
    settings = make_settings(tmp_path)
    local = make_store(settings)
    assert isinstance(local, LocalBlobStore) and local.root == settings.blob_dir.resolve()
    bucket = moto.new_bucket()
    s3 = make_store(moto.settings(settings, bucket, "team/inferq"))
    assert isinstance(s3, FsspecBlobStore) and s3.url == f"s3://{bucket}/team/inferq"
    s3.put("inputs/j/00000", b"png")
    assert moto.keys(bucket) == ["team/inferq/inputs/j/00000"]
    assert not settings.blob_dir.exists()


def test_s3_credentials_from_the_standard_aws_variables(
    moto: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no INFERQ_S3_* credentials the store uses AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the env."""
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = moto.new_bucket()
    settings = moto.settings(make_settings(tmp_path), bucket).model_copy(
        update={"s3_access_key_id": "", "s3_secret_access_key": Settings().s3_secret_access_key}
    )
    store = make_store(settings)
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert isinstance(store, FsspecBlobStore) and store.fs.key is None
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("url", ["file:///tmp/x", "s3://", "s3://Bad_Bucket/x", "gs://bucket", "/srv/blobs"])
def test_storage_url_must_be_s3_or_empty(url: str) -> None:
    """INFERQ_STORAGE_URL is empty or s3://bucket[/prefix]; anything else is refused at start-up."""
    with pytest.raises(ValidationError, match="INFERQ_STORAGE_URL"):
        Settings(storage_url=url)


def test_storage_url_trailing_slash_is_dropped() -> None:
    """s3://bucket/prefix/ and s3://bucket/prefix name the same place."""
    assert Settings(storage_url="s3://bucket/prefix/").storage_url == "s3://bucket/prefix"
