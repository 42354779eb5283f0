"""Safe reading of uploaded dataset files (zip, tar, npy, npz, JSONL) into a normalized staging directory.

Every reader checks names, entry types, counts, declared sizes and compression ratios, and counts the bytes it
actually extracts; any violation raises a domain error and the caller removes the staging directory.
"""

from __future__ import annotations

import base64
import binascii
import json
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import numpy as np

from shared.config.errors import DatasetTooLarge, InvalidDataset, UnsafeArchive, UnsupportedDatasetFormat
from shared.config.settings import Settings

FORMATS = ("zip", "tar", "npy", "npz", "jsonl")
COPY_CHUNK = 1024 * 1024  # bytes read at a time when copying or extracting
ARRAY_ROWS = 4096  # images converted at a time when normalizing an array
RATIO_FLOOR_BYTES = 1024 * 1024  # ratios are only judged past this many expanded bytes (tiny files vary)
OFFSET_PAIR = struct.Struct("<qq")  # one row of offsets.bin: (index.jsonl offset, items.bin offset)
_FLOAT_KINDS = ("f",)


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass
class Staged:
    """What a reader wrote into the staging directory."""

    layout: str  # packed (items.bin + index.jsonl + offsets.bin) | array (images.npy [+ labels.npy])
    item_count: int = 0
    stored_bytes: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)


def detect_format(filename: str, head: bytes) -> str:
    """The dataset format, from the file name's suffix or else its first bytes (415 if neither tells)."""
    name = filename.lower()
    for suffix, fmt in ((".zip", "zip"), (".npz", "npz"), (".npy", "npy"), (".jsonl", "jsonl"), (".ndjson", "jsonl")):
        if name.endswith(suffix):
            return fmt
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")) or head[257:262] == b"ustar":
        return "tar"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    raise UnsupportedDatasetFormat(
        f"cannot tell the format of {filename!r}; send a .zip, .tar(.gz), .npy, .npz or .jsonl file"
    )


def read_into(fmt: str, src: Path, staging: Path, settings: Settings) -> Staged:
    """Validate `src` and write its normalized form under `staging` (raises before anything is kept)."""
    readers = {"zip": _read_zip, "tar": _read_tar, "npy": _read_npy, "npz": _read_npz, "jsonl": _read_jsonl}
    return readers[fmt](src, staging, settings)


# --- archives of image files --------------------------------------------------------------------------------


class _FileSink:
    """Writes items into one packed blob plus an index line each and their offsets, enforcing the limits.

    The packed form is `items.bin` (every item's bytes, back to back), `index.jsonl` (`{"id", "label"}` per item)
    and `offsets.bin` (N+1 little-endian int64 pairs: where item i's index line and bytes start), so a reader
    fetches items lo..hi-1 with three range reads whatever the dataset's size."""

    def __init__(self, staging: Path, settings: Settings, compressed_bytes: int) -> None:
        self.settings = settings
        self.compressed = max(compressed_bytes, 1)
        staging.mkdir(parents=True)
        self.items: IO[bytes] = open(staging / "items.bin", "wb")  # noqa: SIM115 - closed in close()
        self.index: IO[bytes] = open(staging / "index.jsonl", "wb")  # noqa: SIM115
        self.offsets: IO[bytes] = open(staging / "offsets.bin", "wb")  # noqa: SIM115
        self.index_pos = 0
        self.offsets.write(OFFSET_PAIR.pack(0, 0))
        self.staged = Staged(layout="packed")

    def add(self, name: str, label: str | None, stream: _Readable, declared: int | None = None) -> None:
        """Copy one entry, counting its real bytes against the declared size and the limits."""
        s, st = self.settings, self.staged
        if st.item_count >= s.dataset_max_items:
            raise DatasetTooLarge(f"more than {s.dataset_max_items} items (INFERQ_DATASET_MAX_ITEMS)")
        written = 0
        while block := stream.read(COPY_CHUNK):
            written += len(block)
            if declared is not None and written > declared:
                raise UnsafeArchive(f"entry {name!r} expands past its declared size of {declared} bytes")
            self._check_total(st.stored_bytes + written)
            self.items.write(block)
        st.stored_bytes += written
        line = (json.dumps({"id": name, "label": label}) + "\n").encode()
        self.index.write(line)
        self.index_pos += len(line)
        self.offsets.write(OFFSET_PAIR.pack(self.index_pos, st.stored_bytes))
        if label is not None:
            st.label_counts[label] = st.label_counts.get(label, 0) + 1
        st.item_count += 1

    def _check_total(self, total: int) -> None:
        s = self.settings
        if total > s.dataset_max_expanded_bytes:
            raise DatasetTooLarge(
                f"the dataset expands past {s.dataset_max_expanded_bytes} bytes (INFERQ_DATASET_MAX_EXPANDED_BYTES)"
            )
        if total > RATIO_FLOOR_BYTES and total / self.compressed > s.dataset_max_compression_ratio:
            raise UnsafeArchive(
                f"the archive expands more than {s.dataset_max_compression_ratio:g}x its size "
                "(INFERQ_DATASET_MAX_COMPRESSION_RATIO); refusing a possible zip bomb"
            )

    def close(self) -> Staged:
        for fh in (self.items, self.index, self.offsets):
            fh.close()
        return self.staged


def check_name(name: str) -> PurePosixPath:
    """An archive entry's path, refused if absolute or climbing out with `..`."""
    path = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"entry {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchive(f"entry {name!r} climbs out of the archive with '..'")
    return path


def _skipped(path: PurePosixPath) -> bool:
    """Metadata files archivers add (macOS forks, dot files) are not dataset items."""
    return any(p.startswith(".") or p == "__MACOSX" for p in path.parts)


def _label_of(path: PurePosixPath) -> str | None:
    """Class-folder layout: `label/file.png` is labelled by its folder; top-level files have no label."""
    return path.parent.name if len(path.parts) >= 2 else None


def _read_zip(src: Path, staging: Path, settings: Settings) -> Staged:
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDataset(f"the zip archive cannot be read ({exc})") from exc
    with zf:
        entries = _checked_zip_entries(zf, settings, src.stat().st_size)
        sink = _FileSink(staging, settings, src.stat().st_size)
        try:
            for info, path in entries:
                with zf.open(info) as stream:
                    sink.add(info.filename, _label_of(path), stream, declared=info.file_size)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise InvalidDataset(f"the zip archive is damaged ({exc})") from exc
        finally:
            staged = sink.close()
    return staged


def _checked_zip_entries(
    zf: zipfile.ZipFile, settings: Settings, compressed: int
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every file entry, after checking names, types, count, declared sizes and ratios (nothing extracted yet)."""
    out, declared = [], 0
    for info in zf.infolist():
        path = check_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchive(f"entry {info.filename!r} is a symbolic link")
        if info.is_dir() or _skipped(path):
            continue
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size / max(info.compress_size, 1) > (
            settings.dataset_max_compression_ratio
        ):
            raise UnsafeArchive(
                f"entry {info.filename!r} declares a compression ratio past "
                f"{settings.dataset_max_compression_ratio:g} (INFERQ_DATASET_MAX_COMPRESSION_RATIO)"
            )
        declared += info.file_size
        out.append((info, path))
    if len(out) > settings.dataset_max_items:
        raise DatasetTooLarge(f"{len(out)} entries; at most {settings.dataset_max_items} (INFERQ_DATASET_MAX_ITEMS)")
    if declared > settings.dataset_max_expanded_bytes:
        raise DatasetTooLarge(
            f"the entries declare {declared} bytes; at most {settings.dataset_max_expanded_bytes} "
            "(INFERQ_DATASET_MAX_EXPANDED_BYTES)"
        )
    if declared > RATIO_FLOOR_BYTES and declared / max(compressed, 1) > settings.dataset_max_compression_ratio:
        raise UnsafeArchive(
            f"the archive declares a compression ratio past {settings.dataset_max_compression_ratio:g} "
            "(INFERQ_DATASET_MAX_COMPRESSION_RATIO)"
        )
    if not out:
        raise InvalidDataset("the archive holds no files")
    return out


def _read_tar(src: Path, staging: Path, settings: Settings) -> Staged:
    try:
        tf = tarfile.open(src, mode="r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise InvalidDataset(f"the tar archive cannot be read ({exc})") from exc
    sink = _FileSink(staging, settings, src.stat().st_size)
    try:
        with tf:
            for member in tf:
                _add_tar_member(tf, member, sink)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidDataset(f"the tar archive is damaged ({exc})") from exc
    finally:
        staged = sink.close()
    if not staged.item_count:
        raise InvalidDataset("the archive holds no files")
    return staged


def _add_tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo, sink: _FileSink) -> None:
    """Check one tar member and copy it if it is a regular file."""
    path = check_name(member.name)
    if member.issym() or member.islnk():
        raise UnsafeArchive(f"entry {member.name!r} is a {'symbolic' if member.issym() else 'hard'} link")
    if member.isdir() or _skipped(path):
        return
    if not member.isfile():
        raise UnsafeArchive(f"entry {member.name!r} is not a regular file (device, fifo or other special file)")
    stream = tf.extractfile(member)
    if stream is None:
        raise UnsafeArchive(f"entry {member.name!r} cannot be extracted")
    with stream:
        sink.add(member.name, _label_of(path), stream, declared=member.size)


# --- arrays ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ArrayHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _read_header(fp: IO[bytes], what: str) -> _ArrayHeader:
    """Parse a .npy header without loading data (pickled object arrays are refused)."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except (ValueError, OSError, SyntaxError) as exc:
        raise InvalidDataset(f"{what} is not a .npy array ({exc})") from exc
    if fortran:
        raise InvalidDataset(f"{what} is stored in Fortran order; save it with np.save of a C-ordered array")
    return _ArrayHeader(tuple(int(d) for d in shape), np.dtype(dtype))


def _check_images_header(h: _ArrayHeader, settings: Settings) -> tuple[int, int, int]:
    """(N, H, W) of an image array; wrong shapes and dtypes are refused with what was expected."""
    shape = h.shape[:3] if len(h.shape) == 4 and h.shape[3] == 1 else h.shape
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidDataset(f"the image array has shape {h.shape}; expected (N, H, W) or (N, H, W, 1)")
    if h.dtype != np.uint8 and h.dtype.kind not in _FLOAT_KINDS:
        raise InvalidDataset(f"the image array has dtype {h.dtype}; expected uint8 or float")
    n, hh, ww = shape
    if n > settings.dataset_max_items:
        raise DatasetTooLarge(f"{n} images; at most {settings.dataset_max_items} (INFERQ_DATASET_MAX_ITEMS)")
    if hh * ww > settings.max_image_pixels:
        raise DatasetTooLarge(f"images of {hh}x{ww} pixels exceed INFERQ_MAX_IMAGE_PIXELS")
    if n * hh * ww * h.dtype.itemsize > settings.dataset_max_expanded_bytes:
        raise DatasetTooLarge("the array is larger than INFERQ_DATASET_MAX_EXPANDED_BYTES")
    return n, hh, ww


def _rows(fp: IO[bytes], h: _ArrayHeader, n: int, hh: int, ww: int) -> Iterator[np.ndarray]:
    """The array's images in blocks of ARRAY_ROWS, read straight from the stream."""
    row_bytes = hh * ww * h.dtype.itemsize
    for start in range(0, n, ARRAY_ROWS):
        count = min(ARRAY_ROWS, n - start)
        raw = fp.read(row_bytes * count)
        if len(raw) != row_bytes * count:
            raise InvalidDataset(f"the array is truncated: {n} images declared, data ends near image {start}")
        yield np.frombuffer(raw, dtype=h.dtype).reshape(count, hh, ww)


def _to_uint8(block: np.ndarray, scale: float) -> np.ndarray:
    if block.dtype == np.uint8:
        return block
    return np.clip(np.nan_to_num(block.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def _write_array(open_fp: Any, what: str, staging: Path, settings: Settings, labels: np.ndarray | None) -> Staged:
    """Normalize an image array to uint8 images.npy (two streaming passes: range, then copy)."""
    with open_fp() as fp:
        h = _read_header(fp, what)
        n, hh, ww = _check_images_header(h, settings)
        peak = 0.0 if h.dtype == np.uint8 else max(float(np.nanmax(b)) for b in _rows(fp, h, n, hh, ww))
    scale = 255.0 if h.dtype != np.uint8 and peak <= 1.0 else 1.0
    staging.mkdir(parents=True, exist_ok=True)
    # written block by block, not through a memmap: a memmap's dirty pages count in the API's RSS (a 784 MB
    # array raised it by ~770 MB); plain writes leave them to the page cache
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n, hh, ww)}
    with open_fp() as fp, open(staging / "images.npy", "wb") as out:
        _read_header(fp, what)
        np.lib.format.write_array_header_1_0(out, header)
        for block in _rows(fp, h, n, hh, ww):
            out.write(np.ascontiguousarray(_to_uint8(block, scale)).tobytes())
    staged = Staged(layout="array", item_count=n, stored_bytes=n * hh * ww)
    if labels is not None:
        if labels.shape != (n,):
            raise InvalidDataset(f"y has shape {labels.shape}; expected ({n},), one label per image")
        text = labels.astype(str)
        np.save(staging / "labels.npy", text, allow_pickle=False)
        values, counts = np.unique(text, return_counts=True)
        staged.label_counts = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
    return staged


def _read_npy(src: Path, staging: Path, settings: Settings) -> Staged:
    return _write_array(lambda: open(src, "rb"), "the .npy file", staging, settings, None)


def _read_npz(src: Path, staging: Path, settings: Settings) -> Staged:
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDataset(f"the .npz file cannot be read ({exc})") from exc
    with zf:
        entries = {info.filename: info for info, _ in _checked_zip_entries(zf, settings, src.stat().st_size)}
        key: str | None = next((k for k in ("x.npy", "X.npy", "images.npy", "x_test.npy") if k in entries), None)
        key = key or next((k for k in entries if k not in ("y.npy", "labels.npy")), None)
        if key is None:
            raise InvalidDataset("the .npz holds no image array; name it x (and the labels y)")
        labels = None
        ykey = next((k for k in ("y.npy", "labels.npy", "y_test.npy") if k in entries), None)
        if ykey is not None:
            with zf.open(entries[ykey]) as fp:
                yh = _read_header(fp, "y")
                if yh.dtype.kind not in "iuUS" or len(yh.shape) != 1 or yh.shape[0] > settings.dataset_max_items:
                    raise InvalidDataset(f"y has shape {yh.shape} and dtype {yh.dtype}; expected (N,) ints or strings")
                raw = fp.read(yh.shape[0] * yh.dtype.itemsize)
                labels = np.frombuffer(raw, dtype=yh.dtype)
        return _write_array(lambda: zf.open(entries[key]), f"array {key!r}", staging, settings, labels)


# --- JSONL manifests --------------------------------------------------------------------------------------------


def _read_jsonl(src: Path, staging: Path, settings: Settings) -> Staged:
    """One `{"custom_id": ..., "image": <base64>, "label": ...}` per line; bad lines are refused by number."""
    limit = settings.max_image_bytes * 4 // 3 + 64 * 1024
    sink = _FileSink(staging, settings, src.stat().st_size)
    try:
        with open(src, "rb") as fh:
            for lineno, line in enumerate(iter(lambda: fh.readline(limit + 1), b""), start=1):
                if len(line) > limit:
                    raise DatasetTooLarge(f"line {lineno} is longer than INFERQ_MAX_IMAGE_BYTES allows")
                if not line.strip():
                    continue
                custom_id, label, data = _parse_line(line, lineno, sink.staged.item_count)
                sink.add(custom_id, label, _BytesReader(data))
    finally:
        staged = sink.close()
    if not staged.item_count:
        raise InvalidDataset("the manifest has no lines")
    return staged


def _parse_line(line: bytes, lineno: int, idx: int) -> tuple[str, str | None, bytes]:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidDataset(f"line {lineno} is not JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("image"), str):
        raise InvalidDataset(f'line {lineno} has no "image" field holding a base64 string')
    try:
        data = base64.b64decode(row["image"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidDataset(f'line {lineno}: "image" is not valid base64') from exc
    label = row.get("label")
    return str(row.get("custom_id", idx))[:255], (None if label is None else str(label)[:100]), data


class _BytesReader:
    """A minimal readable over bytes (what _FileSink.add consumes)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        block, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return block
