"""The shard writer: one split's rows into numbered Parquet shards in storage, with size and sha256 each.

Shards have the job export's columns (app/exporters/parquet.py), the teacher column per row (a dataset
mixes jobs) and top-k columns cut to the dataset's k. Rows are buffered into row groups of at most
`row_group_rows` rows and `row_group_bytes` bytes (app.exporters.rows.row_bytes; a larger row goes alone),
and shards rotate after `shard_rows` rows or once `shard_bytes` are written, so the same rows in the same
order always give the same bytes. Synchronous and CPU-bound: callers run it in a thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from app.codecs.topk import TopKArrays
from app.datasets.storage import DatasetStorage, StorageWriter
from app.exporters.parquet import ParquetExporter, parquet_schema
from app.exporters.rows import ExportRow, row_bytes


def schema_text(k: int) -> str:
    """The shards' Arrow schema as text, without the lineage metadata (for the manifest)."""
    return str(parquet_schema(k, {}).remove_metadata().to_string(show_schema_metadata=False))


def truncate(row: ExportRow, k: int) -> ExportRow:
    """The row with its top-k cut to the best k candidates (stored best first)."""
    a = row.arrays
    if a.k == k:
        return row
    if a.k < k:
        raise ValueError(f"row of item {row.item_id} has k={a.k}, fewer than the dataset's {k}")
    arrays = TopKArrays(a.token_ids, a.token_logprobs, a.topk_ids[:, :k], a.topk_logprobs[:, :k])
    return dataclasses.replace(row, arrays=arrays)


class _DatasetParquet(ParquetExporter):
    """The job export's Parquet encoder, with the teacher column filled per row from its job (the tokenizer
    fingerprint is one for all, since a dataset refuses to mix tokenizers)."""

    def __init__(
        self, *, k: int, teachers: Mapping[uuid.UUID, str], fingerprint: str | None, lineage: dict[str, Any]
    ) -> None:
        super().__init__(k=k, teacher="", lineage=lineage, fingerprint=fingerprint)
        self._teachers = teachers

    def table(self, rows: list[ExportRow]) -> pa.Table:
        table = super().table(rows)
        index = table.schema.get_field_index("teacher")
        teachers = pa.array([self._teachers[r.job_id] for r in rows], pa.string())
        return table.set_column(index, table.schema.field(index), teachers)


@dataclass(frozen=True)
class ShardInfo:
    name: str
    split: str
    rows: int
    tokens: int
    size: int
    sha256: str


class _Shard:
    """One shard being written: the encoder's bytes go to storage and into the checksum as they come."""

    def __init__(self, writer: StorageWriter, encoder: _DatasetParquet) -> None:
        self.writer = writer
        self.encoder = encoder
        self.digest = hashlib.sha256()
        self.size = 0
        self.rows = 0
        self.tokens = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            self.digest.update(data)
            self.size += len(data)

    def write(self, rows: list[ExportRow]) -> None:
        self._emit(self.encoder.write(rows))
        self.rows += len(rows)
        self.tokens += sum(r.arrays.num_tokens for r in rows)

    def finish(self) -> None:
        self._emit(self.encoder.close())
        self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()


class ShardSet:
    """Writes one split as `<split>-00000.parquet`, `<split>-00001.parquet`, ... under a storage prefix."""

    def __init__(
        self,
        storage: DatasetStorage,
        prefix: str,
        split: str,
        *,
        k: int,
        teachers: Mapping[uuid.UUID, str],
        fingerprint: str | None,
        lineage: dict[str, Any],
        row_group_rows: int,
        row_group_bytes: int,
        shard_rows: int | None,
        shard_bytes: int | None,
    ) -> None:
        self.storage = storage
        self.prefix = prefix
        self.split = split
        self.k = k
        self.teachers = teachers
        self.fingerprint = fingerprint
        self.lineage = {**lineage, "split": split}
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.shard_rows = shard_rows
        self.shard_bytes = shard_bytes
        self.shards: list[ShardInfo] = []
        self._buffer: list[ExportRow] = []
        self._buffered_bytes = 0
        self._current: _Shard | None = None

    def add(self, rows: list[ExportRow]) -> None:
        """Buffer rows; write each row group once it is full in rows, or the next row would pass its bytes."""
        for row in rows:
            row = truncate(row, self.k)
            size = row_bytes(row)
            if self._buffer and self._buffered_bytes + size > self.row_group_bytes:
                self._flush()
            self._buffer.append(row)
            self._buffered_bytes += size
            if len(self._buffer) >= self.row_group_rows:
                self._flush()

    def close(self) -> list[ShardInfo]:
        """Write what is buffered and finish the last shard; returns every shard written."""
        self._flush()
        if self._current is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Discard the shard in progress (finished shards are the caller's to delete)."""
        if self._current is not None:
            self._current.abort()
            self._current = None

    def _flush(self) -> None:
        if self._buffer:
            group, self._buffer, self._buffered_bytes = self._buffer, [], 0
            self._write(group)

    def _name(self) -> str:
        return f"{self.split}-{len(self.shards):05d}.parquet"

    def _write(self, rows: list[ExportRow]) -> None:
        while rows:
            if self._current is None:
                writer = self.storage.create(f"{self.prefix}/{self._name()}")
                encoder = _DatasetParquet(
                    k=self.k, teachers=self.teachers, fingerprint=self.fingerprint, lineage=self.lineage
                )
                self._current = _Shard(writer, encoder)
            shard = self._current
            room = len(rows) if self.shard_rows is None else self.shard_rows - shard.rows
            shard.write(rows[:room])
            rows = rows[room:]
            full_rows = self.shard_rows is not None and shard.rows >= self.shard_rows
            full_bytes = self.shard_bytes is not None and shard.size >= self.shard_bytes
            if full_rows or full_bytes:
                self._finish()

    def _finish(self) -> None:
        shard = self._current
        assert shard is not None
        name = self._name()
        shard.finish()
        self._current = None
        self.shards.append(ShardInfo(name, self.split, shard.rows, shard.tokens, shard.size, shard.digest.hexdigest()))
