"""Blob storage for job inputs, uploaded models and datasets: local files by default (fsync before answering), or
any S3-compatible object store (fsspec + s3fs) when INFERQ_STORAGE_URL is s3://bucket[/prefix]."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shared.config.settings import Settings

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,400}$")
UPLOAD_PART_BYTES = 8 * 1024 * 1024  # multipart part size when moving a large file into S3 (bounds memory)
STREAM_BLOCK_BYTES = 4 * 1024 * 1024  # read-ahead of a sequential S3 read (open_read)


class BlobStore(Protocol):
    """What every store does; keys are relative paths such as `datasets/<id>/items.bin`."""

    url: str

    def put(self, key: str, data: bytes) -> str: ...
    def get(self, key: str) -> bytes: ...
    def get_range(self, key: str, start: int, length: int) -> bytes: ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def move_in(self, key: str, path: Path) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def exists(self, key: str) -> bool: ...


def check_key(key: str) -> str:
    """The key itself, or ValueError if it could escape the store's root or holds odd characters."""
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid blob key {key!r}")
    return key


class LocalBlobStore:
    """Blobs as files under one root; a write is atomic and durable (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key` durably; returns the key."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        """The bytes stored under `key` (FileNotFoundError if absent)."""
        return self._path(key).read_bytes()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of `key` from offset `start` (fewer at the end of the blob)."""
        with open(self._path(key), "rb") as fh:
            fh.seek(start)
            return fh.read(max(length, 0))

    def open_read(self, key: str) -> IO[bytes]:
        """A binary file object reading `key` sequentially (the caller closes it)."""
        return open(self._path(key), "rb")  # noqa: SIM115 - returned to the caller

    def move_in(self, key: str, path: Path) -> None:
        """Store the local file `path` under `key`, consuming it (fsync, then rename; a copy across devices)."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(path, dest)
        except OSError:
            shutil.copyfile(path, dest)
            path.unlink()

    def delete(self, key: str) -> None:
        """Remove `key` if present."""
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob under `prefix/` (nothing if there is none)."""
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        return self._path(key).is_file()


class FsspecBlobStore:
    """Blobs as objects under `root` (`bucket/prefix`) of an fsspec filesystem, such as S3 via s3fs.

    A put is one PUT (an object appears whole or not at all); a large file moves in by multipart upload;
    a range read is one ranged GET, so a chunk task fetches only its own bytes."""

    def __init__(self, fs: Any, root: str, scheme: str = "s3") -> None:
        self.fs = fs
        self.root = root.strip("/")
        self.url = f"{scheme}://{self.root}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key`; returns the key."""
        self.fs.pipe_file(self._path(key), bytes(data))
        return key

    def get(self, key: str) -> bytes:
        """The bytes stored under `key` (FileNotFoundError if absent)."""
        data: bytes = self.fs.cat_file(self._path(key))
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of `key` from offset `start` (fewer at the end of the blob), in one ranged GET."""
        path = self._path(key)
        if length <= 0:
            return b""
        data: bytes = self.fs.cat_file(path, start=start, end=start + length)
        return data

    def open_read(self, key: str) -> IO[bytes]:
        """A binary file object reading `key` sequentially with read-ahead (the caller closes it)."""
        fh: IO[bytes] = self.fs.open(self._path(key), "rb", block_size=STREAM_BLOCK_BYTES, cache_type="readahead")
        return fh

    def move_in(self, key: str, path: Path) -> None:
        """Upload the local file `path` under `key` (multipart past UPLOAD_PART_BYTES), then remove it."""
        self.fs.put_file(str(path), self._path(key), chunksize=UPLOAD_PART_BYTES)
        path.unlink()

    def delete(self, key: str) -> None:
        """Remove `key` if present."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix/` (nothing if there is none)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(prefix) + "/", recursive=True)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        return bool(self.fs.isfile(self._path(key)))


def make_store(settings: Settings) -> BlobStore:
    """The configured store: files under data_dir/blobs, or the bucket and prefix of INFERQ_STORAGE_URL.

    Cheap to call: fsspec keeps one S3 filesystem per configuration and process (rebuilt after a fork)."""
    if not settings.storage_url:
        return LocalBlobStore(settings.blob_dir)
    return FsspecBlobStore(s3_filesystem(settings), settings.storage_url.removeprefix("s3://"))


def s3_filesystem(settings: Settings) -> Any:
    """An s3fs filesystem from the INFERQ_S3_* settings; unset ones fall back to botocore's standard chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, ~/.aws, an instance role)."""
    import s3fs

    secret = settings.s3_secret_access_key.get_secret_value()
    return s3fs.S3FileSystem(
        key=settings.s3_access_key_id or None,
        secret=secret or None,
        endpoint_url=settings.s3_endpoint_url or None,
        client_kwargs={"region_name": settings.s3_region} if settings.s3_region else {},
        use_listings_cache=False,  # other processes write too: never answer from a stale listing
    )
