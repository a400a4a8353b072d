"""Creating jobs (a JSON body or a streamed JSONL upload) without one request-long transaction.

A prompt set that fits in one chunk is stored in one transaction. A larger one is stored in committed chunks
of `job_load_chunk_rows` items while its job is `loading` (listed as such, never claimed); the transaction
with the last chunk makes it queued and completes its Idempotency-Key. If anything fails on the way (a bad
line, a lost database, a delete), the job is deleted and its rows purged before the error goes back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.errors import ApiError
from app.jobs import repository
from app.jobs.lines import iter_lines
from app.jobs.schemas import GenerationParams, JobCreate, JobRead, PromptRecord
from app.jobs.service import (
    MAX_REPORTED_LINE_ERRORS,
    AsyncReadable,
    RecordChecker,
    aiter_records,
    check_kind_params,
    get_job,
    item_row,
    line_error,
    new_job,
    parse_line,
    to_reads,
)
from app.jobs.sweeping import let_writers_in, purge_now
from app.jobs.teacher_info import teacher_info_for
from app.models import Job, utcnow
from app.settings import Settings
from app.teachers.service import TeacherRegistry

IDEMPOTENCY_LOC: list[str | int] = ["header", "idempotency-key"]
LINES_PER_YIELD = 256  # parsing gives the event loop a turn this often, so other requests are not held up

# The project and Idempotency-Key a creation completes, if it has one.
KeyRef = tuple[uuid.UUID, str] | None


class JobLoader:
    """Stores one new job and its items: one transaction when they fit in a chunk, else committed chunks."""

    def __init__(self, database: Database, settings: Settings, job: Job, key: KeyRef) -> None:
        self.database = database
        self.settings = settings
        self.job = job
        self.key = key
        self.stored = False  # the job's row is committed (from then on, a failure must purge it)

    async def load(self, records: AsyncIterator[PromptRecord]) -> Job:
        """Store every record in order; the job as it is once queued."""
        return await self.load_rows(self._rows(records))

    async def _rows(self, records: AsyncIterator[PromptRecord]) -> AsyncIterator[dict[str, Any]]:
        seq = 0
        async for record in records:
            yield item_row(self.job, seq, record)
            seq += 1

    async def load_rows(self, rows: AsyncIterator[dict[str, Any]]) -> Job:
        """Store item rows (see item_row) in order; the job as it is once queued."""
        chunk: list[dict[str, Any]] = []
        try:
            async for row in rows:
                chunk.append(row)
                if len(chunk) >= self.settings.job_load_chunk_rows:
                    await self._store(chunk)
                    chunk = []
            return await self.database.run(lambda s: self._finish(s, chunk))
        except BaseException:
            if self.stored:
                await asyncio.shield(purge_now(self.database, self.settings, self.job.id))
            raise

    async def _store(self, rows: list[dict[str, Any]]) -> None:
        """One committed chunk: with the job's row (as loading) the first time, else counted into it."""
        started = time.monotonic()

        async def work(session: AsyncSession) -> None:
            if not self.stored:
                self.job.status, self.job.total_items, self.job.loaded_at = "loading", len(rows), utcnow()
                await repository.insert_job(session, self.job)
            elif not await repository.extend_loading_job(session, self.job.id, len(rows), utcnow()):
                raise _deleted_while_loading()
            await repository.insert_items(session, rows)

        await self.database.run(work)
        self.stored = True
        await let_writers_in(self.database, time.monotonic() - started)

    async def _finish(self, session: AsyncSession, rows: list[dict[str, Any]]) -> Job:
        """The last chunk, the job queued and its key completed, in one transaction."""
        if not self.stored:
            self.job.status, self.job.total_items = "queued", len(rows)
            await repository.insert_job(session, self.job)
        else:
            if not await repository.extend_loading_job(session, self.job.id, len(rows), utcnow()):
                raise _deleted_while_loading()
            await repository.finish_loading(session, self.job.id)
        await repository.insert_items(session, rows)
        if self.key is not None:
            await repository.complete_idempotency_key(session, self.key[0], self.key[1], self.job.id)
        await repository.notify_workers(session, self.job.teacher)
        job = await session.get(Job, self.job.id, populate_existing=True)
        assert job is not None
        return job


def _deleted_while_loading() -> ApiError:
    return ApiError(409, "the job was deleted while its prompts were loading", loc=["body"], type="conflict")


async def create_job(
    database: Database,
    registry: TeacherRegistry,
    settings: Settings,
    body: JobCreate,
    project_id: uuid.UUID,
    key: KeyRef = None,
) -> Job:
    """A job from a JSON body: every record is checked before anything is stored."""
    if len(body.prompts) > settings.max_prompts_per_job:
        raise ApiError(422, f"more than {settings.max_prompts_per_job} prompts in one job", loc=["body", "prompts"])
    check_kind_params(body.kind, body.params, ["body", "params"])
    checker = RecordChecker(settings, body.kind)
    for index, record in enumerate(body.prompts):
        problem = checker.check(record, f"prompts[{index}]")
        if problem is not None:
            raise ApiError(422, problem[1], loc=["body", "prompts", index, *problem[0]])
    info = await teacher_info_for(registry, body.teacher, body.params)
    job = new_job(project_id, body.teacher, body.params, info, body.kind, body.priority)
    return await JobLoader(database, settings, job, key).load(aiter_records(body.prompts))


async def create_job_from_upload(
    database: Database,
    registry: TeacherRegistry,
    settings: Settings,
    teacher: str,
    params: GenerationParams,
    upload: AsyncReadable,
    project_id: uuid.UUID,
    kind: str = "generate",
    priority: int = 0,
    key: KeyRef = None,
) -> Job:
    """A job from a JSONL upload, read once: records are stored as they are checked; a bad line stops the
    storing, the rest of the file is still checked (every bad line is reported), and nothing stays stored."""
    check_kind_params(kind, params, ["body"])
    info = await teacher_info_for(registry, teacher, params)
    job = new_job(project_id, teacher, params, info, kind, priority)
    return await JobLoader(database, settings, job, key).load(checked_lines(upload, settings, kind))


async def checked_lines(upload: AsyncReadable, settings: Settings, kind: str) -> AsyncIterator[PromptRecord]:
    """The upload's records, each checked; after the first bad line none is yielded, and once the whole file
    is read a 422 names every bad line (up to MAX_REPORTED_LINE_ERRORS)."""
    errors: list[dict[str, Any]] = []
    bad = 0
    checker = RecordChecker(settings, kind)
    async for lineno, line in iter_lines(upload, max_line_bytes=settings.max_upload_line_bytes):
        if lineno % LINES_PER_YIELD == 0:
            await asyncio.sleep(0)
        if not line.strip():
            continue
        try:
            record = parse_line(line)
        except ValidationError as exc:
            problem: dict[str, Any] | None = line_error(lineno, exc)
        else:
            found = checker.check(record, f"line {lineno}")
            problem = (
                None
                if found is None
                else {
                    "loc": ["body", "file", "line", lineno, *found[0]],
                    "msg": f"line {lineno}: {found[1]}",
                    "type": "invalid",
                }
            )
        if problem is None:
            if not bad:
                yield record
            continue
        bad += 1
        if len(errors) < MAX_REPORTED_LINE_ERRORS:
            errors.append(problem)
    if bad:
        if bad > len(errors):
            errors.append({"loc": ["body", "file"], "msg": f"{bad} bad lines in all", "type": "invalid"})
        raise ApiError(422, "invalid lines", details=errors)
    if checker.count == 0:
        raise ApiError(422, "the file holds no prompt records", loc=["body", "file"], type="empty")


async def claim_idempotency_key(
    database: Database, settings: Settings, project_id: uuid.UUID, key: str, request_hash: str
) -> uuid.UUID | None:
    """Take the key for this request (committed at once, so a racing request sees it). Returns the job
    an earlier identical request created, or None when this request is to create it. 422 when the key
    was used with a different request; 409 while another request with it is still running (or loading)."""

    async def work(session: AsyncSession) -> uuid.UUID | None:
        now = utcnow()
        if await repository.insert_idempotency_key(session, project_id, key, request_hash, now):
            return None
        row = await repository.get_idempotency_key(session, project_id, key)
        if row is not None and row.request_hash != request_hash:
            raise ApiError(422, "this Idempotency-Key was used with a different request", loc=IDEMPOTENCY_LOC)
        if row is not None and row.job_id is not None:
            return row.job_id
        stale_before = now - timedelta(seconds=settings.idempotency_pending_ttl_s)
        if row is not None and await repository.take_over_idempotency_key(session, project_id, key, now, stale_before):
            return None
        raise ApiError(409, "a request with this Idempotency-Key is in progress", loc=IDEMPOTENCY_LOC, type="conflict")

    return await database.run(work)


async def create_idempotently(
    database: Database,
    settings: Settings,
    project_id: uuid.UUID,
    idempotency_key: str | None,
    request_hash: str,
    create: Callable[[KeyRef], Awaitable[Job]],
) -> tuple[JobRead, bool]:
    """Run `create` (which completes the key in the transaction that makes the job queued) at most once per
    Idempotency-Key. Returns (job, replayed)."""
    if idempotency_key is not None:
        original = await claim_idempotency_key(database, settings, project_id, idempotency_key, request_hash)
        if original is not None:

            async def replay(session: AsyncSession) -> JobRead:
                return (await to_reads(session, [await get_job(session, original, project_id)]))[0]

            return await database.run(replay, readonly=True), True
    try:
        job = await create((project_id, idempotency_key) if idempotency_key is not None else None)
    except BaseException:
        if idempotency_key is not None:
            await database.run(lambda s: repository.delete_pending_idempotency_key(s, project_id, idempotency_key))
        raise
    return (await database.run(lambda s: to_reads(s, [job]), readonly=True))[0], False
