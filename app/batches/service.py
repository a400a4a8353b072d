"""Batches logic: validate an input file and run it as one job; read, list and cancel batches; find the
output and error files a batch's job makes (see output.py for their lines)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import repository, validation
from app.batches.lines import parse_line
from app.batches.schemas import (
    BATCH_PREFIX,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchObject,
    BatchPage,
    BatchStatus,
    BatchUsage,
    RequestCounts,
)
from app.database import Database
from app.datasets.build_locks import BuildLocks
from app.datasets.storage import LocalStorage
from app.errors import ApiError, not_found
from app.files import service as files_service
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs_service
from app.jobs.loading import JobLoader
from app.jobs.teacher_info import teacher_info_for
from app.models import Batch, Job, utcnow
from app.settings import Settings
from app.teachers.service import TeacherRegistry

COMPLETION_WINDOW = timedelta(hours=24)
OUTPUT_SUFFIX, ERRORS_SUFFIX = "-output", "-errors"


def public_id(batch_id: uuid.UUID) -> str:
    return BATCH_PREFIX + batch_id.hex


def parse_id(public: str) -> uuid.UUID | None:
    if not public.startswith(BATCH_PREFIX):
        return None
    try:
        return uuid.UUID(hex=public[len(BATCH_PREFIX) :])
    except ValueError:
        return None


def _ts(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


async def create_batch(
    database: Database,
    registry: TeacherRegistry,
    settings: Settings,
    storage: LocalStorage,
    body: BatchCreate,
    project_id: uuid.UUID,
) -> BatchObject:
    """Validate the input file; a valid one becomes a job (its lines its items, in order), an invalid one a
    failed batch with line-numbered errors and nothing else stored."""

    batch_id = uuid.uuid4()
    # Held from before the row exists until its status is final: a `validating` batch whose lock is free was
    # left by a process that died (see fail_orphaned_validations).
    with validation_locks(settings).building(batch_id):
        return await _create(database, registry, settings, storage, body, project_id, batch_id)


INTERRUPTED = BatchError(
    code="interrupted",
    message="the batch's validation was interrupted: the process reading its file stopped; create it again",
).model_dump()


def validation_locks(settings: Settings) -> BuildLocks:
    return BuildLocks(settings.resolved_files_dir / "batches")


async def _create(
    database: Database,
    registry: TeacherRegistry,
    settings: Settings,
    storage: LocalStorage,
    body: BatchCreate,
    project_id: uuid.UUID,
    batch_id: uuid.UUID,
) -> BatchObject:
    async def start(session: AsyncSession) -> tuple[Batch, Path]:
        source = await files_service.get_file(session, body.input_file_id, project_id)
        now = utcnow()
        batch = Batch(
            id=batch_id,
            project_id=project_id,
            input_file_id=source.id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            meta=body.metadata,
            status="validating",
            variant_logprobs=[],
            created_at=now,
            expires_at=now + COMPLETION_WINDOW,
        )
        await repository.insert_batch(session, batch)
        return batch, storage.path(source.storage_key)

    batch, path = await database.run(start)
    try:
        plan, errors = await validation.validate(path, registry, settings)
        if not errors:
            job = await _load(database, registry, settings, batch, plan, path)
    except ApiError as exc:
        detail = validation.first_detail(exc)
        errors = [BatchError(code=str(detail["type"]), message=str(detail["msg"]))]
    except BaseException:
        await database.run(lambda s: repository.set_batch(s, batch.id, status="failed", failed_at=utcnow()))
        raise
    if errors:
        failed = [e.model_dump() for e in errors]
        await database.run(
            lambda s: repository.set_batch(s, batch.id, status="failed", errors=failed, failed_at=utcnow())
        )
    else:
        asked = plan.asked or []
        await database.run(
            lambda s: repository.set_batch(s, batch.id, status=None, job_id=job.id, variant_logprobs=asked)
        )
    return await database.run(lambda s: read_batch(s, public_id(batch.id), project_id), readonly=True)


async def _load(
    database: Database, registry: TeacherRegistry, settings: Settings, batch: Batch, plan: validation.Plan, path: Path
) -> Job:
    """The job of a validated batch: k is the largest top-logprobs any line asked for; its lines stored in
    order, each with its parameter set (none recorded when all lines share one)."""
    assert plan.teacher is not None and plan.params is not None and plan.asked is not None
    k = max((a for a in plan.asked if a is not None), default=0)
    variants = [p.model_copy(update={"top_logprobs": k}) for p in plan.params]
    info = await teacher_info_for(registry, plan.teacher, variants[0])
    job = jobs_service.new_job(batch.project_id, plan.teacher, variants[0], info)
    several = len(variants) > 1
    if several:
        job.variants = [v.lineage() for v in variants]
    seen = validation.Plan(variants={}, params=[], asked=[])

    async def rows() -> AsyncIterator[dict[str, Any]]:
        seq = 0
        async for _, raw in validation.request_lines(path, settings):
            line = parse_line(raw)
            row = jobs_service.item_row(job, seq, line.record)
            if several:
                row["variant"] = seen.variant_of(line)
            seq += 1
            yield row

    return await JobLoader(database, settings, job, None).load_rows(rows())


async def fail_orphaned_validations(database: Database, settings: Settings, limit: int) -> int:
    """Fail every `validating` batch no live process validates (its lock is free): its process died between
    reading the file and recording the outcome. A job it had started loading is swept as any dead load is."""
    locks, failed = validation_locks(settings), 0
    for batch_id in await database.run(lambda s: repository.validating_batches(s, limit), readonly=True):
        with locks.orphaned(batch_id) as orphan:
            fail = functools.partial(repository.fail_if_validating, batch_id=batch_id, error=INTERRUPTED)
            if orphan and await database.run(fail):
                failed += 1
    return failed


async def expire_batches(session: AsyncSession, now: datetime, limit: int) -> int:
    """Batches past their 24 h window: their jobs cancelled (what is in flight finishes), the batches
    expired. Their unrun lines go to the error file as batch_expired."""
    due = await repository.batches_to_expire(session, now, limit)
    for batch_id, job_id in due:
        await jobs_repository.start_cancel(session, job_id)
        await repository.set_batch(session, batch_id, status="expired", expired_at=now)
    return len(due)


def _status(batch: Batch, job: Job | None) -> BatchStatus:
    if batch.status is not None:
        return cast(BatchStatus, batch.status)
    assert job is not None
    if job.status == "loading":
        return "validating"
    if job.status in ("completed", "failed"):
        return "completed"
    settled = job.done_items + job.failed_items + job.cancelled_items >= job.total_items
    if job.status == "cancelled":
        return "cancelled" if settled else "cancelling"
    return "cancelling" if batch.cancelling_at is not None else "in_progress"


def output_file_id(batch: Batch, errors: bool) -> str:
    return files_service.public_id(batch.id) + (ERRORS_SUFFIX if errors else OUTPUT_SUFFIX)


async def to_object(session: AsyncSession, batch: Batch, job: Job | None) -> BatchObject:
    status = _status(batch, job)
    counts = RequestCounts(total=0, completed=0, failed=0)
    finished = status in ("completed", "cancelled", "expired")
    usage = output_id = error_id = None
    if job is not None:
        counts = RequestCounts(total=job.total_items, completed=job.done_items, failed=job.failed_items)
        if finished:
            prompt = await repository.input_tokens(session, job.id)
            usage = BatchUsage(
                input_tokens=prompt, output_tokens=job.tokens_generated, total_tokens=prompt + job.tokens_generated
            )
            output_id = output_file_id(batch, False) if job.done_items else None
            error_id = output_file_id(batch, True) if job.failed_items + job.cancelled_items else None
    return BatchObject(
        id=public_id(batch.id),
        endpoint=batch.endpoint,
        model=job.teacher if job is not None else None,
        errors=BatchErrors(data=[BatchError(**e) for e in batch.errors]) if batch.errors else None,
        input_file_id=files_service.public_id(batch.input_file_id),
        completion_window=batch.completion_window,
        status=status,
        output_file_id=output_id,
        error_file_id=error_id,
        created_at=int(batch.created_at.timestamp()),
        in_progress_at=_ts(job.created_at) if job is not None else None,
        expires_at=_ts(batch.expires_at),
        completed_at=_ts(job.finished_at) if job is not None and status == "completed" else None,
        failed_at=_ts(batch.failed_at),
        expired_at=_ts(batch.expired_at),
        cancelling_at=_ts(batch.cancelling_at),
        cancelled_at=_ts(job.finished_at) if job is not None and status == "cancelled" else None,
        request_counts=counts,
        usage=usage,
        metadata=batch.meta,
        job_id=str(job.id) if job is not None else None,
    )


async def get_batch(session: AsyncSession, public: str, project_id: uuid.UUID) -> tuple[Batch, Job | None]:
    """The batch and its job; 404 for another project's batch, or one whose job was deleted."""
    batch_id = parse_id(public)
    batch = None if batch_id is None else await repository.get_batch(session, batch_id, project_id)
    if batch is None:
        raise not_found("batch", ["path", "batch_id"])
    if batch.job_id is None and batch.status is not None:  # validating or failed: no job yet, or never
        return batch, None
    job = None if batch.job_id is None else (await repository.jobs_of(session, [batch.job_id])).get(batch.job_id)
    if job is None:  # deleted, or purged (its id then set to NULL)
        raise not_found("batch (its job was deleted)", ["path", "batch_id"])
    return batch, job


async def read_batch(session: AsyncSession, public: str, project_id: uuid.UUID) -> BatchObject:
    return await to_object(session, *await get_batch(session, public, project_id))


async def list_batches(session: AsyncSession, project_id: uuid.UUID, *, after: str | None, limit: int) -> BatchPage:
    """Newest first; `after` is the last id of the previous page. Batches whose job was deleted are left out."""
    cursor = None
    if after is not None:
        last, _ = await get_batch(session, after, project_id)
        cursor = (last.created_at, last.id)
    rows = await repository.list_batches(session, project_id, limit=limit + 1, after=cursor)
    jobs = await repository.jobs_of(session, [b.job_id for b in rows[:limit] if b.job_id is not None])
    shown = [b for b in rows[:limit] if (b.job_id in jobs if b.job_id is not None else b.status is not None)]
    data = [await to_object(session, b, jobs.get(b.job_id) if b.job_id else None) for b in shown]
    return BatchPage(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(rows) > limit,
    )


async def cancel_batch(session: AsyncSession, public: str, project_id: uuid.UUID, *, batch_rows: int) -> BatchObject:
    """Cancel the batch's job (nothing more of it is sent); it is cancelled once what was in flight is back."""
    batch, job = await get_batch(session, public, project_id)
    if job is None or batch.status is not None:
        raise ApiError(
            409, f"a batch that is {_status(batch, job)} cannot be cancelled", loc=["path", "batch_id"], type="conflict"
        )
    if job.status in ("queued", "running", "loading"):
        job = await jobs_service.cancel_job(session, job.id, project_id, batch_rows=batch_rows)
        batch.cancelling_at = utcnow()
        await session.flush()
    return await to_object(session, batch, job)


async def batch_file(session: AsyncSession, public: str, project_id: uuid.UUID) -> tuple[Batch, Job, bool] | None:
    """(batch, job, is the error file) for a batch's output or error file id, or None for any other id;
    404 while the batch has not finished (the file does not exist yet)."""
    for suffix, errors in ((OUTPUT_SUFFIX, False), (ERRORS_SUFFIX, True)):
        if public.endswith(suffix):
            file_id = files_service.parse_id(public[: -len(suffix)])
            if file_id is None:
                return None
            batch, job = await get_batch(session, public_id(file_id), project_id)
            made = await to_object(session, batch, job)
            if job is None or public not in (made.output_file_id, made.error_file_id):
                raise not_found("file", ["path", "file_id"])
            return batch, job, errors
    return None
