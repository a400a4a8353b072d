"""ParquetExporter: one row per (prompt, sample), list columns for ids and top-k, zstd, streamed.

Top-k columns are list<fixed_size_list<k>>: int32 ids and float16 logprobs exactly as stored (sampled
token logprobs are float32), with
BYTE_STREAM_SPLIT on those leaves. Lineage (job, teacher identity, params, codec) goes in the file's
key-value metadata under b"distillery"; job_id, item_id, custom_id, teacher and the teacher's tokenizer
fingerprint are also columns on every row. `answer_start` (null without a reasoning boundary) is the index in
token_ids of the first answer token after the teacher's end-of-reasoning token.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from app.exporters.rows import ExportRow

METADATA_KEY = b"distillery"


def parquet_schema(k: int, lineage: dict[str, Any]) -> pa.Schema:
    """The export's columns; with k = 0 there are no candidate columns (Arrow has no fixed-size list of 0)."""
    fields = [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("tokenizer_fingerprint", pa.string()),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("custom_id", pa.string()),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("messages", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string()),
        pa.field("prompt_token_ids", pa.list_(pa.int32())),
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("token_logprobs", pa.list_(pa.float32()), nullable=False),
        pa.field("answer_start", pa.int32()),
    ]
    if k > 0:
        fields.append(pa.field("topk_ids", pa.list_(pa.list_(pa.int32(), k)), nullable=False))
        fields.append(pa.field("topk_logprobs", pa.list_(pa.list_(pa.float16(), k)), nullable=False))
    return pa.schema(fields, metadata={METADATA_KEY: orjson.dumps(lineage)})


class _Sink(io.RawIOBase):
    """A write-only file that hands over what was written since the last drain."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _split_columns(k: int) -> list[str]:
    """The float and id leaves that compress better byte-split (written as Parquet paths)."""
    leaves = ["token_logprobs.list.element"]
    if k > 0:
        leaves += ["topk_ids.list.element.list.element", "topk_logprobs.list.element.list.element"]
    return leaves


def _offsets(lengths: list[int]) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32))


def _json_or_none(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class ParquetExporter:
    media_type = "application/vnd.apache.parquet"
    extension = "parquet"

    def __init__(
        self,
        *,
        k: int,
        teacher: str,
        lineage: dict[str, Any],
        fingerprint: str | None = None,
        compression_level: int = 3,
    ) -> None:
        self.k = k
        self.teacher = teacher
        self.fingerprint = fingerprint
        self.schema = parquet_schema(k, lineage)
        self._sink = _Sink()
        self._writer = pq.ParquetWriter(
            self._sink,
            self.schema,
            compression="zstd",
            compression_level=compression_level,
            use_dictionary=["job_id", "teacher", "tokenizer_fingerprint", "finish_reason"],
            column_encoding={name: "BYTE_STREAM_SPLIT" for name in _split_columns(k)},
        )

    def table(self, rows: list[ExportRow]) -> pa.Table:
        k = self.k
        lengths = [r.arrays.num_tokens for r in rows]
        offsets = _offsets(lengths)

        def flat(name: str, dtype: Any) -> np.ndarray:
            parts = [getattr(r.arrays, name).reshape(-1) for r in rows]
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)

        prompt_ids = pa.array(
            [None if r.prompt_token_ids is None else r.prompt_token_ids for r in rows],
            type=pa.list_(pa.int32()),
        )
        columns = [
            pa.array([str(r.job_id) for r in rows], pa.string()),
            pa.array([self.teacher] * len(rows), pa.string()),
            pa.array([self.fingerprint] * len(rows), pa.string()),
            pa.array([r.item_id for r in rows], pa.int64()),
            pa.array([r.seq for r in rows], pa.int64()),
            pa.array([r.custom_id for r in rows], pa.string()),
            pa.array([r.sample_index for r in rows], pa.int32()),
            pa.array([r.prompt for r in rows], pa.string()),
            pa.array([_json_or_none(r.messages) for r in rows], pa.string()),
            pa.array([_json_or_none(r.metadata) for r in rows], pa.string()),
            pa.array([r.text for r in rows], pa.string()),
            pa.array([r.finish_reason for r in rows], pa.string()),
            prompt_ids,
            pa.ListArray.from_arrays(offsets, pa.array(flat("token_ids", np.int32))),
            pa.ListArray.from_arrays(offsets, pa.array(flat("token_logprobs", np.float32))),
            pa.array([r.answer_start for r in rows], pa.int32()),
        ]
        if k > 0:
            topk_ids = pa.FixedSizeListArray.from_arrays(pa.array(flat("topk_ids", np.int32)), k)
            topk_lps = pa.FixedSizeListArray.from_arrays(pa.array(flat("topk_logprobs", np.float16)), k)
            columns += [pa.ListArray.from_arrays(offsets, topk_ids), pa.ListArray.from_arrays(offsets, topk_lps)]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def write(self, rows: list[ExportRow]) -> bytes:
        if rows:
            self._writer.write_table(self.table(rows))
        return self._sink.drain()

    def close(self) -> bytes:
        self._writer.close()
        return self._sink.drain()
