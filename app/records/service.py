"""Records logic: decode stored blobs into API records, and stream exports chunk by chunk."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from app.codecs.topk import PackedTopK, codec_for, unpack_ids
from app.database import Database
from app.errors import ApiError
from app.exporters.jsonl import JsonlExporter
from app.exporters.parquet import ParquetExporter
from app.exporters.rows import Exporter, ExportRow
from app.models import Job
from app.observability.metrics import EXPORT_BYTES, EXPORT_ROWS
from app.records import repository
from app.records.schemas import ExportFormat, Record, RecordPage, Usage


def export_row(job_id: uuid.UUID, row: Row[Any]) -> ExportRow:
    decoder = codec_for(row.codec)
    packed = PackedTopK(
        row.codec, row.num_tokens, row.k, row.token_ids, row.token_logprobs, row.topk_ids, row.topk_logprobs
    )
    return ExportRow(
        job_id=job_id,
        item_id=row.item_id,
        seq=row.seq,
        custom_id=row.custom_id,
        sample_index=row.sample_index,
        prompt=row.prompt,
        messages=row.messages,
        metadata=row.metadata,
        text=row.text,
        finish_reason=row.finish_reason,
        prompt_token_ids=None if row.prompt_token_ids is None else unpack_ids(row.prompt_token_ids),
        arrays=decoder.decode(packed),
        answer_start=row.answer_start,
    )


def _finite(values: Any) -> list[Any]:
    return [None if math.isinf(v) else v for v in values.astype("float32").tolist()]


def to_record(row: ExportRow, prompt_tokens: int) -> Record:
    a = row.arrays
    return Record(
        item_id=row.item_id,
        seq=row.seq,
        custom_id=row.custom_id,
        sample_index=row.sample_index,
        metadata=row.metadata,
        text=row.text,
        finish_reason=row.finish_reason,
        token_ids=a.token_ids.tolist(),
        token_logprobs=_finite(a.token_logprobs),
        top_logprobs_ids=a.topk_ids.tolist(),
        top_logprobs=[_finite(r) for r in a.topk_logprobs],
        prompt_token_ids=None if row.prompt_token_ids is None else row.prompt_token_ids.tolist(),
        answer_start=row.answer_start,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=a.num_tokens),
    )


def encode_cursor(item_id: int, sample_index: int) -> str:
    return f"{item_id}.{sample_index}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        item_id, sample_index = cursor.split(".")
        return int(item_id), int(sample_index)
    except ValueError:
        raise ApiError(422, "malformed cursor", loc=["query", "cursor"]) from None


async def record_page(session: AsyncSession, job: Job, *, cursor: str | None, limit: int, max_bytes: int) -> RecordPage:
    """At most `limit` records after the cursor, fewer if they would pass `max_bytes` (but at least one); a
    next cursor while more follow."""
    after = decode_cursor(cursor) if cursor else None
    rows, more = await repository.bounded_result_page(session, job.id, after=after, limit=limit, max_bytes=max_bytes)
    records = [to_record(export_row(job.id, r), r.prompt_tokens) for r in rows]
    next_cursor = encode_cursor(records[-1].item_id, records[-1].sample_index) if more else None
    return RecordPage(records=records, next_cursor=next_cursor)


def exporter_for(fmt: ExportFormat, job: Job) -> Exporter:
    lineage = {
        "job_id": str(job.id),
        "teacher": job.teacher_info,
        "params": job.params,
        "kind": job.kind,
        "created_at": job.created_at.isoformat(),
    }
    fingerprint = job.teacher_info.get("tokenizer_fingerprint")
    if fmt is ExportFormat.parquet:
        return ParquetExporter(k=job.top_logprobs, teacher=job.teacher, lineage=lineage, fingerprint=fingerprint)
    return JsonlExporter(k=job.top_logprobs, teacher=job.teacher, lineage=lineage, fingerprint=fingerprint)


async def result_chunks(
    database: Database, job_id: uuid.UUID, *, chunk_rows: int, chunk_bytes: int
) -> AsyncIterator[list[Row[Any]]]:
    """The job's results in keyset chunks of at most `chunk_rows` rows and `chunk_bytes` bytes (at least one
    row), each read in its own short transaction."""
    after: tuple[int, int] | None = None
    more = True
    while more:
        async with database.transaction(readonly=True) as session:
            rows, more = await repository.bounded_result_page(
                session, job_id, after=after, limit=chunk_rows, max_bytes=chunk_bytes
            )
        if not rows:
            break
        yield rows
        after = (rows[-1].item_id, rows[-1].sample_index)


def export_headers(job: Job) -> dict[str, str]:
    """The job's state as an export starts: a file of a job not yet final is a snapshot, not the dataset."""
    pending = job.total_items - job.done_items - job.failed_items - job.cancelled_items
    return {
        "x-distillery-job-status": job.status,
        "x-distillery-items-total": str(job.total_items),
        "x-distillery-items-done": str(job.done_items),
        "x-distillery-items-pending": str(pending),
    }


async def stream_export(
    database: Database, job_id: uuid.UUID, exporter: Exporter, *, chunk_rows: int, chunk_bytes: int
) -> AsyncIterator[bytes]:
    """Read the job's results in bounded chunks and encode them as they come (counted in the metrics)."""
    sent_bytes, sent_rows = EXPORT_BYTES.labels(exporter.extension), EXPORT_ROWS.labels(exporter.extension)
    async for rows in result_chunks(database, job_id, chunk_rows=chunk_rows, chunk_bytes=chunk_bytes):
        data = exporter.write([export_row(job_id, r) for r in rows])
        sent_rows.inc(len(rows))
        if data:
            sent_bytes.inc(len(data))
            yield data
    tail = exporter.close()
    if tail:
        sent_bytes.inc(len(tail))
        yield tail
