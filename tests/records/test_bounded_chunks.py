"""Record pages and export chunks bounded in bytes, on the real teacher and both databases: a page of large
rows is shorter than its limit, a row over the bound goes alone, and walking the cursor or the chunks gives
every record once, in order, exactly as without the bound."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import orjson
import pyarrow.parquet as pq
import pytest

from app.database import Database
from app.exporters.jsonl import JsonlExporter
from app.exporters.parquet import ParquetExporter
from app.exporters.rows import Exporter, ExportRow, row_bytes
from app.models import Job
from app.records import service as records
from tests.conftest import Service
from tests.helpers import all_records, submit, wait_done

K = 5
# Prompts from a few bytes to 1.5 kB, so rows differ in size by far more than their completions do.
PROMPTS = [{"prompt": f"{i} " + "lorem ipsum " * (i * i)} for i in range(12)]
UNBOUNDED = 1 << 40

T = TypeVar("T")


class Walked:
    """One completed job (2 samples per prompt) and its records as the API pages them by rows only."""

    def __init__(self, service: Service, api: httpx.Client) -> None:
        job = wait_done(api, submit(api, PROMPTS, max_tokens=12, top_logprobs=K, n=2, seed=3)["id"])
        assert job["status"] == "completed" and job["counts"]["failed"] == 0, job
        self.database_url = service.database_url
        self.job_id = uuid.UUID(job["id"])
        self.records = all_records(api, job["id"], limit=1000)
        assert len(self.records) == 2 * len(PROMPTS)

    def size(self, record: dict[str, Any]) -> int:
        """The record's size as the bound counts it, worked out from what the API returns."""
        prompt = PROMPTS[record["seq"]]["prompt"]
        usage = record["usage"]
        return (
            usage["completion_tokens"] * (K + 1) * 8
            + usage["prompt_tokens"] * 4
            + len(record["text"].encode())
            + len(prompt.encode())
        )

    def run(self, work: Callable[[Database], Awaitable[T]]) -> T:
        async def go() -> T:
            database = Database(self.database_url)
            try:
                return await work(database)
            finally:
                await database.dispose()

        return asyncio.run(go())


@pytest.fixture(scope="module")
def walked(service: Service) -> Walked:
    with service.client() as api:
        return Walked(service, api)


def keys(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(r["item_id"], r["sample_index"]) for r in records]


def check_bounded(sizes: list[int], bound: int, limit: int) -> None:
    assert len(sizes) <= limit
    assert len(sizes) == 1 or sum(sizes) <= bound, (sizes, bound)


def test_record_pages_stop_at_the_byte_bound_and_the_cursor_loses_nothing(walked: Walked) -> None:
    sizes = [walked.size(r) for r in walked.records]
    bound, limit = 3 * sorted(sizes)[len(sizes) // 2], 10

    async def walk(database: Database) -> list[list[dict[str, Any]]]:
        pages, cursor = [], None
        while True:
            async with database.transaction(readonly=True) as session:
                job = await session.get(Job, walked.job_id)
                assert job is not None
                page = await records.record_page(session, job, cursor=cursor, limit=limit, max_bytes=bound)
            pages.append([r.model_dump(mode="json") for r in page.records])
            cursor = page.next_cursor
            if cursor is None:
                return pages

    pages = walked.run(walk)
    walked_records = [r for page in pages for r in page]
    assert walked_records == walked.records, "every record once, in order, as the unbounded pages give them"
    assert any(len(page) < limit for page in pages[:-1]), "some page of large rows is cut short of the limit"
    position = 0
    for page in pages:
        page_sizes = [walked.size(r) for r in page]
        check_bounded(page_sizes, bound, limit)
        position += len(page)
        if position < len(walked.records) and len(page) < limit:
            assert sum(page_sizes) + sizes[position] > bound, "a page stops only where the next row would pass"


def test_a_row_over_the_bound_goes_alone(walked: Walked) -> None:
    async def first_pages(database: Database) -> list[int]:
        lengths, cursor = [], None
        async with database.transaction(readonly=True) as session:
            job = await session.get(Job, walked.job_id)
            assert job is not None
            for _ in range(3):
                page = await records.record_page(session, job, cursor=cursor, limit=100, max_bytes=1)
                lengths.append(len(page.records))
                cursor = page.next_cursor
        return lengths

    assert walked.run(first_pages) == [1, 1, 1]


class RecordingExporter:
    """Passes chunks to a real exporter and keeps each chunk's row sizes."""

    def __init__(self, inner: Exporter) -> None:
        self.inner = inner
        self.media_type = inner.media_type
        self.extension = inner.extension
        self.chunks: list[list[int]] = []

    def write(self, rows: list[ExportRow]) -> bytes:
        self.chunks.append([row_bytes(r) for r in rows])
        return self.inner.write(rows)

    def close(self) -> bytes:
        return self.inner.close()


def export(walked: Walked, inner: Exporter, chunk_bytes: int) -> tuple[bytes, list[list[int]]]:
    exporter = RecordingExporter(inner)

    async def read(database: Database) -> bytes:
        stream = records.stream_export(database, walked.job_id, exporter, chunk_rows=512, chunk_bytes=chunk_bytes)
        return b"".join([part async for part in stream])

    return walked.run(read), exporter.chunks


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_chunks_stay_within_the_bound_and_the_output_is_unchanged(walked: Walked, fmt: str) -> None:
    def exporter() -> Exporter:
        if fmt == "jsonl":
            return JsonlExporter(k=K, teacher="tiny", lineage={})
        return ParquetExporter(k=K, teacher="tiny", lineage={})

    whole, whole_chunks = export(walked, exporter(), UNBOUNDED)
    assert len(whole_chunks) == 1
    sizes = whole_chunks[0]
    bound = 3 * sorted(sizes)[len(sizes) // 2]
    data, chunks = export(walked, exporter(), bound)
    assert [s for chunk in chunks for s in chunk] == sizes
    assert len(chunks) > 2
    for chunk in chunks:
        check_bounded(chunk, bound, 512)
    if fmt == "jsonl":
        assert data == whole
        assert [(r["item_id"], r["sample_index"]) for r in map(orjson.loads, data.splitlines())] == keys(walked.records)
    else:
        bounded_file = pq.ParquetFile(io.BytesIO(data))
        assert bounded_file.metadata.num_row_groups == len(chunks)
        assert bounded_file.read().equals(pq.read_table(io.BytesIO(whole)))
