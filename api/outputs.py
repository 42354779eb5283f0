"""Parquet encoding of a score job's output and error files, streamed: one row group per scoring chunk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PARQUET_COMPRESSION = "zstd"


def _schema(errors: bool) -> Any:
    """The CSV's columns with native types (top_k as a list of {label, confidence}, warnings as a list of codes)."""
    import pyarrow as pa

    if errors:
        return pa.schema(
            [("custom_id", pa.string()), ("index", pa.int64()), ("error_type", pa.string()), ("error", pa.string())]
        )
    ranked = pa.list_(pa.struct([("label", pa.string()), ("confidence", pa.float64())]))
    return pa.schema(
        [
            ("custom_id", pa.string()),
            ("index", pa.int64()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("top_k", ranked),
            ("true_label", pa.string()),
            ("warnings", pa.list_(pa.string())),
        ]
    )


class _Drain:
    """A write-only file object that hands over what was written since the last take()."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        block = bytes(data)
        self.parts.append(block)
        self.position += len(block)
        return len(block)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def by_chunk(rows: Iterator[dict[str, Any]], chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    """Rows (in index order) grouped by the scoring chunk their index falls in."""
    group: list[dict[str, Any]] = []
    current = None
    for row in rows:
        chunk = int(row["index"]) // chunk_size
        if group and chunk != current:
            yield group
            group = []
        current = chunk
        group.append(row)
    if group:
        yield group


def parquet_stream(rows: Iterator[dict[str, Any]], *, errors: bool, chunk_size: int) -> Iterator[bytes]:
    """The rows as a Parquet file, written and handed over one row group (one scoring chunk) at a time, so the
    whole table is never held; an empty file still has the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(errors)
    sink = _Drain()
    with pq.ParquetWriter(sink, schema, compression=PARQUET_COMPRESSION) as writer:
        for group in by_chunk(rows, max(chunk_size, 1)):
            writer.write_table(pa.Table.from_pylist(group, schema=schema))
            yield sink.take()
    yield sink.take()
