"""Datasets logic: check a build request against its jobs, select and split rows, write shards and the manifest.

A build reads each job's results in keyset chunks (each chunk in its own short read transaction), keeps the
rows that pass the filters (app/datasets/selection.py), assigns each prompt to train or validation by a hash
of its identity, and feeds the two shard sets; encoding and file writes run in a worker thread. Memory holds
one chunk and one row group per split, never the dataset; duplicate prompts are tracked in an on-disk ledger.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.datasets import repository
from app.datasets.build_locks import BuildLocks
from app.datasets.builder import ShardInfo, ShardSet, schema_text
from app.datasets.schemas import (
    SPLIT_HASH,
    DatasetCreate,
    DatasetManifest,
    DatasetPage,
    DatasetRead,
    DatasetStatus,
    DatasetSummary,
    FileEntry,
    JobLineage,
    SplitName,
    SplitStats,
)
from app.datasets.selection import SPLITS, RowSelector
from app.datasets.storage import DatasetStorage
from app.errors import ApiError, not_found
from app.exporters.rows import ExportRow
from app.fidelity.schemas import CodecComparison
from app.fidelity.service import codec_comparison
from app.models import Dataset, DatasetFile, Job, utcnow
from app.records.service import export_row, result_chunks
from app.settings import Settings

MANIFEST = "manifest.json"
FINGERPRINT_KEY = "tokenizer_fingerprint"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildPlan:
    """What a build needs once its request was accepted: the dataset row's identity and the jobs' lineage."""

    dataset_id: uuid.UUID
    project_id: uuid.UUID
    name: str
    created_at: datetime
    request: DatasetCreate
    top_k: int
    jobs: list[JobLineage]
    shard_rows: int | None
    shard_bytes: int | None

    @property
    def prefix(self) -> str:
        return f"{self.project_id}/{self.dataset_id}"


def _check_request(body: DatasetCreate) -> None:
    if body.shard_rows is not None and body.shard_bytes is not None:
        raise ApiError(422, "give shard_rows or shard_bytes, not both", loc=["body", "shard_bytes"])
    f = body.filters
    if f.min_tokens is not None and f.max_tokens is not None and f.min_tokens > f.max_tokens:
        raise ApiError(422, "max_tokens is below min_tokens", loc=["body", "filters", "max_tokens"])


def _check_jobs(body: DatasetCreate, found: Mapping[uuid.UUID, Job]) -> list[Job]:
    """The requested jobs in order; 404 for a missing one, 422 for a repeat or one that is not completed."""
    jobs: list[Job] = []
    for index, job_id in enumerate(body.jobs):
        loc: list[str | int] = ["body", "jobs", index]
        job = found.get(job_id)
        if job is None or job.status == "deleted":  # a deleted job is gone for the API, sweeper or not
            raise ApiError(404, f"job {job_id} not found", loc=loc, type="not_found")
        if job_id in body.jobs[:index]:
            raise ApiError(422, f"job {job_id} is listed twice", loc=loc)
        if job.status != "completed":
            raise ApiError(422, f"job {job_id} is {job.status}; only completed jobs make datasets", loc=loc)
        jobs.append(job)
    _check_fingerprints(jobs)
    return jobs


def _check_fingerprints(jobs: list[Job]) -> None:
    """Token ids from different tokenizers mean different things: all jobs must share one fingerprint
    (a job that recorded none differs from one that did)."""
    groups: dict[bytes, list[str]] = {}
    for index, job in enumerate(jobs):
        value = (job.teacher_info or {}).get(FINGERPRINT_KEY)
        groups.setdefault(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), []).append(f"jobs[{index}] {job.id}")
    if len(groups) > 1:
        parts = "; ".join(f"{key.decode()}: {', '.join(names)}" for key, names in groups.items())
        msg = f"the jobs' tokenizer fingerprints differ, so their token ids do not mix: {parts}"
        raise ApiError(422, msg, loc=["body", "jobs"])


def _top_k(body: DatasetCreate, jobs: list[Job]) -> int:
    """The requested k, at most every job's stored k; by default the smallest stored k."""
    if body.top_k is None:
        return min(job.top_logprobs for job in jobs)
    for index, job in enumerate(jobs):
        if body.top_k > job.top_logprobs:
            raise ApiError(
                422,
                f"top_k {body.top_k} exceeds the stored k {job.top_logprobs} of jobs[{index}] {job.id}",
                loc=["body", "top_k"],
            )
    return body.top_k


def _lineage(job: Job, fidelity: CodecComparison) -> JobLineage:
    return JobLineage(
        job_id=job.id,
        teacher=job.teacher,
        kind=job.kind,
        k=job.top_logprobs,
        teacher_info=job.teacher_info,
        params=job.params,
        created_at=job.created_at,
        fidelity=fidelity,
    )


async def start_build(
    database: Database, settings: Settings, body: DatasetCreate, project_id: uuid.UUID, dataset_id: uuid.UUID
) -> BuildPlan:
    """Check the request against the project's jobs and record the dataset as building (committed at once)."""
    _check_request(body)
    shard_rows, shard_bytes = body.shard_rows, body.shard_bytes
    if shard_rows is None and shard_bytes is None:
        shard_bytes = settings.dataset_shard_bytes

    async def work(session: AsyncSession) -> BuildPlan:
        jobs = _check_jobs(body, await repository.jobs_by_id(session, body.jobs, project_id))
        top_k = _top_k(body, jobs)
        dataset = Dataset(
            id=dataset_id,
            project_id=project_id,
            name=body.name,
            status="building",
            spec=body.model_dump(mode="json"),
            rows=0,
            tokens=0,
            created_at=utcnow(),
        )
        await repository.insert_dataset(session, dataset)
        return BuildPlan(
            dataset_id=dataset.id,
            project_id=project_id,
            name=body.name,
            created_at=dataset.created_at,
            request=body,
            top_k=top_k,
            jobs=[_lineage(job, await codec_comparison(session, job)) for job in jobs],
            shard_rows=shard_rows,
            shard_bytes=shard_bytes,
        )

    return await database.run(work)


@dataclass
class _Build:
    """The state of one running build: its selector, one shard set per split, and the codecs seen."""

    selector: RowSelector
    shard_sets: dict[SplitName, ShardSet]
    codecs: set[int] = field(default_factory=set)

    def feed(self, rows: list[ExportRow]) -> None:
        """Select and write one chunk (runs in a worker thread)."""
        for name, chosen in self.selector.select(rows).items():
            if chosen:
                self.shard_sets[name].add(chosen)

    def close(self) -> dict[SplitName, list[ShardInfo]]:
        return {name: self.shard_sets[name].close() for name in SPLITS}

    def abort(self) -> None:
        for shard_set in self.shard_sets.values():
            shard_set.abort()


def _parquet_lineage(plan: BuildPlan) -> dict[str, Any]:
    """What every shard's key-value metadata records: settings and jobs, nothing that differs between
    two builds with the same settings (so those give identical bytes)."""
    body = plan.request
    return {
        "kind": "dataset",
        "top_k": plan.top_k,
        "filters": body.filters.model_dump(mode="json"),
        "split_settings": body.split.model_dump(mode="json"),
        "split_hash": SPLIT_HASH,
        "jobs": [j.model_dump(mode="json") for j in plan.jobs],
    }


async def _write_shards(database: Database, storage: DatasetStorage, settings: Settings, plan: BuildPlan) -> _Build:
    chunk = settings.dataset_chunk_rows
    teachers = {j.job_id: j.teacher for j in plan.jobs}
    fingerprint = plan.jobs[0].teacher_info.get(FINGERPRINT_KEY)
    lineage = _parquet_lineage(plan)
    build = _Build(
        selector=RowSelector(plan.request.filters, plan.request.split),
        shard_sets={
            name: ShardSet(
                storage,
                plan.prefix,
                name,
                k=plan.top_k,
                teachers=teachers,
                fingerprint=None if fingerprint is None else str(fingerprint),
                lineage=lineage,
                row_group_rows=chunk,
                row_group_bytes=settings.chunk_bytes,
                shard_rows=plan.shard_rows,
                shard_bytes=plan.shard_bytes,
            )
            for name in SPLITS
        },
    )
    try:
        for job in plan.jobs:
            async for page in result_chunks(database, job.job_id, chunk_rows=chunk, chunk_bytes=settings.chunk_bytes):
                build.codecs.update(r.codec for r in page)
                rows = [export_row(job.job_id, r) for r in page]
                await asyncio.to_thread(build.feed, rows)
    except BaseException:
        await asyncio.to_thread(build.abort)
        raise
    finally:
        build.selector.close()
    return build


def _manifest(plan: BuildPlan, shards: dict[SplitName, list[ShardInfo]], codecs: set[int]) -> DatasetManifest:
    splits = {
        name: SplitStats(
            rows=sum(s.rows for s in written), tokens=sum(s.tokens for s in written), files=[s.name for s in written]
        )
        for name, written in shards.items()
    }
    files = [
        FileEntry(name=s.name, split=name, rows=s.rows, size=s.size, sha256=s.sha256)
        for name, written in shards.items()
        for s in written
    ]
    body = plan.request
    return DatasetManifest(
        id=plan.dataset_id,
        name=plan.name,
        created_at=plan.created_at,
        top_k=plan.top_k,
        codec_versions=sorted(codecs),
        splits=splits,
        parquet_schema=schema_text(plan.top_k),
        jobs=plan.jobs,
        filters=body.filters,
        split=body.split,
        shard_rows=plan.shard_rows,
        shard_bytes=plan.shard_bytes,
        files=files,
    )


async def run_build(database: Database, storage: DatasetStorage, settings: Settings, plan: BuildPlan) -> None:
    """Write the shards and manifest.json, then mark the dataset ready; on any error delete what was written
    and mark it failed."""
    try:
        build = await _write_shards(database, storage, settings, plan)
        manifest = _manifest(plan, await asyncio.to_thread(build.close), build.codecs)
        data = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n"
        await asyncio.to_thread(storage.put, f"{plan.prefix}/{MANIFEST}", data)
        files: list[dict[str, Any]] = [f.model_dump() for f in manifest.files]
        files.append({"name": MANIFEST, "split": None, "rows": 0, "size": len(data), "sha256": _sha256(data)})
        await database.run(
            lambda session: repository.mark_ready(
                session,
                plan.dataset_id,
                manifest=manifest.model_dump(mode="json"),
                rows=sum(s.rows for s in manifest.splits.values()),
                tokens=sum(s.tokens for s in manifest.splits.values()),
                files=files,
            )
        )
    except Exception as exc:
        log.exception("dataset %s failed to build", plan.dataset_id)
        await asyncio.to_thread(storage.delete_prefix, plan.prefix)
        message = f"{type(exc).__name__}: {exc}"
        await database.run(lambda session: repository.mark_failed(session, plan.dataset_id, message))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def create_dataset(
    database: Database, storage: DatasetStorage, settings: Settings, body: DatasetCreate, project_id: uuid.UUID
) -> DatasetRead:
    """Accept the request, build the dataset in this request, and return it (ready, or failed with its error).
    The build lock is taken before the row exists, so the row never looks orphaned (see build_locks)."""
    dataset_id = uuid.uuid4()
    with BuildLocks(settings.resolved_datasets_dir).building(dataset_id):
        plan = await start_build(database, settings, body, project_id, dataset_id)
        await run_build(database, storage, settings, plan)

    async def read(session: AsyncSession) -> DatasetRead:
        return to_read(await get_dataset(session, plan.dataset_id, project_id))

    return await database.run(read, readonly=True)


async def get_dataset(session: AsyncSession, dataset_id: uuid.UUID, project_id: uuid.UUID) -> Dataset:
    dataset = await repository.get_dataset(session, dataset_id, project_id)
    if dataset is None:
        raise not_found("dataset", ["path", "dataset_id"])
    return dataset


def to_summary(dataset: Dataset) -> DatasetSummary:
    return DatasetSummary(
        id=dataset.id,
        name=dataset.name,
        status=cast(DatasetStatus, dataset.status),
        error=dataset.error,
        rows=dataset.rows,
        tokens=dataset.tokens,
        created_at=dataset.created_at,
        finished_at=dataset.finished_at,
    )


def to_read(dataset: Dataset) -> DatasetRead:
    manifest = None if dataset.manifest is None else DatasetManifest.model_validate(dataset.manifest)
    return DatasetRead(**to_summary(dataset).model_dump(), manifest=manifest)


async def list_datasets(session: AsyncSession, project_id: uuid.UUID, *, limit: int, cursor: str | None) -> DatasetPage:
    after = _decode_cursor(cursor) if cursor else None
    rows = await repository.list_datasets(session, project_id, limit=limit + 1, after=after)
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return DatasetPage(datasets=[to_summary(d) for d in rows[:limit]], next_cursor=next_cursor)


def _encode_cursor(dataset: Dataset) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([dataset.created_at.isoformat(), str(dataset.id)])).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, dataset_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), uuid.UUID(dataset_id)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "malformed cursor", loc=["query", "cursor"]) from exc


@dataclass(frozen=True)
class StoredFile:
    """A downloadable file: its storage key, size and checksum."""

    key: str
    name: str
    size: int
    sha256: str


async def get_file(session: AsyncSession, dataset_id: uuid.UUID, name: str, project_id: uuid.UUID) -> StoredFile:
    """A file of one of the project's datasets; 404 for another project's dataset or an unknown name."""
    dataset = await get_dataset(session, dataset_id, project_id)
    row: DatasetFile | None = await repository.get_file(session, dataset.id, name)
    if row is None:
        raise not_found("file", ["path", "name"])
    return StoredFile(key=f"{project_id}/{dataset.id}/{row.name}", name=row.name, size=row.size, sha256=row.sha256)
