"""Dataset builds bounded in bytes, on the real teacher and both databases: each chunk read and each Parquet
row group stays within chunk_bytes (a larger row alone), and the shards hold the same rows as an unbounded
build."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.database import Database
from app.datasets import service as datasets
from app.datasets.schemas import DatasetCreate
from app.datasets.storage import LocalStorage
from app.exporters.rows import row_bytes
from app.models import Job
from app.records.service import export_row
from app.settings import Settings
from tests.conftest import Service
from tests.helpers import submit, wait_done

TOP_K = 3
PROMPTS = [
    {"custom_id": f"c{i}", "prompt": f"{i} " + "dolor sit amet " * (i * i), "metadata": {"i": i, "pad": "x" * i * 40}}
    for i in range(12)
]
UNBOUNDED = 1 << 40


def row_group_sizes(path: Path) -> list[list[int]]:
    """Each row group's row sizes as chunk_bytes counts them, from the columns written."""
    groups = []
    parquet = pq.ParquetFile(path)
    for index in range(parquet.num_row_groups):
        sizes = []
        for row in parquet.read_row_group(index).to_pylist():
            sizes.append(
                len(row["token_ids"]) * (TOP_K + 1) * 8
                + len(row["prompt_token_ids"] or []) * 4
                + len(row["text"].encode())
                + len(row["prompt"].encode())
                + len(row["metadata"].encode())
            )
        groups.append(sizes)
    return groups


class Built:
    """One build of the job: its shards by split and the row sizes of every chunk read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks: list[list[int]] = []
        self.shards: dict[str, list[Path]] = {}


def build(service: Service, job_id: str, root: Path, chunk_bytes: int, monkeypatch: pytest.MonkeyPatch) -> Built:
    built = Built(root)
    settings = Settings(database_url=service.database_url, data_dir=root, chunk_bytes=chunk_bytes)
    storage = LocalStorage(root / "datasets")
    read_chunks = datasets.result_chunks

    async def recorded(database: Database, jid: uuid.UUID, **bounds: int) -> AsyncIterator[Any]:
        async for rows in read_chunks(database, jid, **bounds):
            built.chunks.append([row_bytes(export_row(jid, r)) for r in rows])
            yield rows

    monkeypatch.setattr(datasets, "result_chunks", recorded)

    async def go() -> None:
        database = Database(service.database_url)
        try:
            async with database.transaction(readonly=True) as session:
                job = await session.get(Job, uuid.UUID(job_id))
                assert job is not None
                project_id = job.project_id
            body = DatasetCreate(name="bounded", jobs=[uuid.UUID(job_id)], top_k=TOP_K)
            dataset = await datasets.create_dataset(database, storage, settings, body, project_id)
            assert dataset.status == "ready", dataset.error
        finally:
            await database.dispose()

    asyncio.run(go())
    for split in ("train", "validation"):
        paths = sorted(root.glob(f"datasets/**/{split}-*.parquet"))
        if paths:
            built.shards[split] = paths
    return built


def table(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths])


def test_build_chunks_and_row_groups_stay_within_the_bound(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service.client() as api:
        job = wait_done(api, submit(api, PROMPTS, max_tokens=10, top_logprobs=5, n=2, seed=4)["id"])
    assert job["status"] == "completed" and job["counts"]["failed"] == 0, job

    whole = build(service, job["id"], tmp_path / "whole", UNBOUNDED, monkeypatch)
    assert len(whole.chunks) == 1 and len(whole.chunks[0]) == 2 * len(PROMPTS)
    sizes = whole.chunks[0]
    bound = 3 * sorted(sizes)[len(sizes) // 2]
    bounded = build(service, job["id"], tmp_path / "bounded", bound, monkeypatch)

    assert [s for chunk in bounded.chunks for s in chunk] == sizes
    assert len(bounded.chunks) > 2
    for chunk in bounded.chunks:
        assert len(chunk) == 1 or sum(chunk) <= bound, (chunk, bound)
    groups = 0
    assert bounded.shards.keys() == whole.shards.keys() and bounded.shards
    for split in bounded.shards:
        assert table(bounded.shards[split]).equals(table(whole.shards[split])), "the same rows, in the same order"
        for path in bounded.shards[split]:
            for group in row_group_sizes(path):
                groups += 1
                assert len(group) == 1 or sum(group) <= bound, (group, bound)
    assert groups > 2
