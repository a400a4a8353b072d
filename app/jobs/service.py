"""Jobs logic: validate prompt records, read jobs and progress, cancel, retry, delete (creation: loading.py)."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import datetime
from typing import Any, Protocol

import orjson
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ApiError, not_found
from app.jobs import repository
from app.jobs.schemas import (
    CoreParams,
    FailurePage,
    GenerationParams,
    ItemFailure,
    JobCounts,
    JobPage,
    JobRead,
    PromptRecord,
)
from app.models import Job
from app.settings import Settings

INSERT_CHUNK = 1000
DEFAULT_BATCH_ROWS = Settings.model_fields["job_sweep_batch_rows"].default
MAX_REPORTED_LINE_ERRORS = 100
RATE_WINDOW_BUCKETS = 3
PROGRESS_SPARE_BUCKETS = 6


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...
    async def seek(self, offset: int) -> None: ...


def new_job(
    project_id: uuid.UUID,
    teacher: str,
    params: GenerationParams,
    info: dict[str, Any],
    kind: str = "generate",
    priority: int = 0,
) -> Job:
    return Job(
        priority=priority,
        id=uuid.uuid4(),
        project_id=project_id,
        teacher=teacher,
        kind=kind,
        status="queued",
        params=params.lineage(),
        top_logprobs=params.top_logprobs,
        num_samples=params.n,
        teacher_info=info,
        total_items=0,
        done_items=0,
        failed_items=0,
        cancelled_items=0,
        tokens_generated=0,
    )


def item_row(job: Job, seq: int, record: PromptRecord) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "seq": seq,
        "teacher": job.teacher,
        "custom_id": record.custom_id,
        "prompt": record.prompt,
        "messages": [m.model_dump() for m in record.messages] if record.messages else None,
        "response": record.response,
        "meta": record.metadata,
        "status": "queued",
        "attempts": 0,
    }


async def _insert_records(session: AsyncSession, job: Job, records: AsyncIterable[PromptRecord]) -> int:
    """Insert items in chunks of INSERT_CHUNK rows, numbering them in order."""
    rows: list[dict[str, Any]] = []
    count = 0
    async for record in records:
        rows.append(item_row(job, count, record))
        count += 1
        if len(rows) >= INSERT_CHUNK:
            await repository.insert_items(session, rows)
            rows = []
    await repository.insert_items(session, rows)
    return count


def upload_params(core: dict[str, Any], sampling: str | None) -> GenerationParams:
    """An upload's parameters: its flat form fields and the JSON object in its `sampling` field."""
    extra: Any = {}
    if sampling:
        try:
            extra = orjson.loads(sampling)
        except orjson.JSONDecodeError as exc:
            raise ApiError(422, f"not JSON: {exc}", loc=["body", "sampling"]) from None
        if not isinstance(extra, dict):
            raise ApiError(422, "must be a JSON object", loc=["body", "sampling"])
        if flat := sorted(set(extra) & set(CoreParams.model_fields)):
            raise ApiError(422, f"give {', '.join(flat)} as form fields of their own", loc=["body", "sampling"])
    try:
        return GenerationParams.model_validate({**core, **extra})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ["body", "sampling"] if error["loc"] and error["loc"][0] in extra else ["body"]
        raise ApiError(422, error["msg"], loc=[*where, *error["loc"]]) from None


def check_kind_params(kind: str, params: GenerationParams, loc: list[str | int]) -> None:
    """A scoring job scores one given response per record: no samples to draw."""
    if kind == "score" and params.n != 1:
        raise ApiError(422, "a scoring job has exactly one response per record: n must be 1", loc=[*loc, "n"])
    if kind == "score" and (shaping := sorted(params.lineage().keys() - set(CoreParams.model_fields))):
        raise ApiError(422, f"a scoring job generates nothing: {', '.join(shaping)} would not apply", loc=loc)


class RecordChecker:
    """Per-record checks beyond the schema: the configured size limits and custom_id uniqueness.
    Remembers only the custom_ids seen, never the records."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self.settings = settings
        self.kind = kind
        self.seen: dict[str, int | str] = {}
        self.count = 0

    def check(self, record: PromptRecord, where: int | str) -> tuple[list[str | int], str] | None:
        """(location within the record, message) of the first problem, or None."""
        limits = self.settings
        self.count += 1
        if self.count > limits.max_prompts_per_job:
            return [], f"more than {limits.max_prompts_per_job} prompts in one job"
        if record.prompt is not None and len(record.prompt) > limits.max_prompt_chars:
            return ["prompt"], f"prompt longer than {limits.max_prompt_chars} characters"
        if record.messages is not None:
            if len(record.messages) > limits.max_messages_per_prompt:
                return ["messages"], f"more than {limits.max_messages_per_prompt} messages"
            if sum(len(m.content) for m in record.messages) > limits.max_prompt_chars:
                return ["messages"], f"messages longer than {limits.max_prompt_chars} characters in all"
        if self.kind == "score":
            if record.prompt is not None and record.response is None:
                return ["response"], "a scoring job needs the response to score"
            if record.messages is not None and record.response is not None:
                return ["response"], "chat records to score end with the assistant turn instead of a response"
            if record.messages is not None and record.messages[-1].role != "assistant":
                return ["messages"], "chat records to score must end with the assistant turn to score"
        elif record.response is not None:
            return ["response"], "only scoring jobs (kind 'score') take a response"
        if record.response is not None and len(record.response) > limits.max_prompt_chars:
            return ["response"], f"response longer than {limits.max_prompt_chars} characters"
        if record.metadata is not None:
            try:
                size = len(orjson.dumps(record.metadata))
            except TypeError:  # orjson refuses integers past 64 bits, and so would every reader of the export
                return ["metadata"], "metadata holds an integer outside the 64-bit range"
            if size > limits.max_metadata_bytes:
                return ["metadata"], f"metadata larger than {limits.max_metadata_bytes} bytes as JSON"
        if record.custom_id is not None:
            if record.custom_id in self.seen:
                return ["custom_id"], f"custom_id {record.custom_id!r} repeats {self.seen[record.custom_id]}"
            self.seen[record.custom_id] = where
        return None


def parse_line(line: bytes) -> PromptRecord:
    return PromptRecord.model_validate_json(line)


def line_error(lineno: int, exc: ValidationError) -> dict[str, Any]:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"])
    msg = f"line {lineno}: {field + ': ' if field else ''}{first['msg']}"
    return {"loc": ["body", "file", "line", lineno, *first["loc"]], "msg": msg, "type": first["type"]}


async def aiter_records(records: Iterable[PromptRecord]) -> AsyncIterator[PromptRecord]:
    for record in records:
        yield record


async def get_job(session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID) -> Job:
    job = await repository.get_job(session, job_id, project_id)
    if job is None:
        raise not_found("job", ["path", "job_id"])
    return job


async def cancel_job(
    session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID, *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Job:
    """Cancel at once: the job's row first (from then on no claim takes its items, see claim_job_items),
    then one bounded batch of its queued items, skipping any another transaction holds; the sweep does the
    rest. Items in flight finish as they are; one that comes back to the queue is cancelled there."""
    job = await get_job(session, job_id, project_id)
    _refuse_loading(job)
    if await repository.start_cancel(session, job_id):
        await repository.cancel_queued_batch(session, job_id, batch_rows, skip_locked=True)
        await session.refresh(job)
    return job


async def retry_failed(
    session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID, *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Job:
    """Re-queue a job's failed items: the job runs again at once with the first batch re-queued, the sweep
    re-queues the rest. A cancelled job stays cancelled: 409."""
    job = await get_job(session, job_id, project_id)
    _refuse_loading(job)
    if job.status == "cancelled":
        raise ApiError(
            409, "the job is cancelled; its items are not dispatched again", loc=["path", "job_id"], type="conflict"
        )
    if await repository.start_retry(session, job_id):
        if await repository.requeue_failed_batch(session, job_id, batch_rows, skip_locked=True):
            await repository.notify_workers(session, job.teacher)
        await session.refresh(job)
    return job


async def delete_job(session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID) -> None:
    """Delete a job of any state: it leaves the API and dispatch at once (a running job is in effect
    cancelled: what is in flight finishes and is dropped), the sweep purges its items, results and progress
    rows. Datasets already built from it keep their files; while one is being built from it: 409."""
    job = await get_job(session, job_id, project_id)
    building = await repository.building_datasets_of(session, project_id, job.id)
    if building:
        raise ApiError(
            409,
            f"dataset {building[0]} is being built from this job; delete the job once the build has ended",
            loc=["path", "job_id"],
            type="conflict",
        )
    await repository.mark_deleted(session, [job.id])


def _refuse_loading(job: Job) -> None:
    if job.status == "loading":
        raise ApiError(
            409,
            "the job is still loading its prompts; cancel or retry it once it is queued (or delete it)",
            loc=["path", "job_id"],
            type="conflict",
        )


async def list_failures(
    session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID, *, cursor: str | None, limit: int
) -> FailurePage:
    await get_job(session, job_id, project_id)
    try:
        after = int(cursor) if cursor else None
    except ValueError:
        raise ApiError(422, "malformed cursor", loc=["query", "cursor"]) from None
    items = await repository.failed_items(session, job_id, after=after, limit=limit)
    failures = [
        ItemFailure(item_id=i.id, seq=i.seq, custom_id=i.custom_id, attempts=i.attempts, error=i.error) for i in items
    ]
    return FailurePage(failures=failures, next_cursor=str(items[-1].id) if len(items) == limit else None)


def _bucket_now() -> int:
    return int(time.time()) // repository.PROGRESS_BUCKET_S


def progress_horizon() -> int:
    """The oldest progress bucket the tokens/s figure may still read (to_reads), with a minute to spare for
    clocks that differ between processes; older buckets can go."""
    return _bucket_now() - RATE_WINDOW_BUCKETS - PROGRESS_SPARE_BUCKETS


def tokens_per_second(
    tokens: int, window_start: float, now: float, started_at: datetime | None, finished_at: datetime | None
) -> float:
    """Tokens stored since `window_start` over the part of [window_start, now] the job was running: a job
    that started 3 s ago and made 3,600 tokens runs at 1,200 tok/s, not 3,600 over the whole window."""
    start = max(window_start, started_at.timestamp()) if started_at is not None else window_start
    end = min(now, finished_at.timestamp()) if finished_at is not None else now
    # A floor of one second: a job's first tokens are not divided by a few milliseconds.
    running_s = max(end - start, 1.0)
    return round(tokens / running_s, 1) if tokens else 0.0


async def to_reads(session: AsyncSession, jobs: list[Job]) -> list[JobRead]:
    """JobRead for each job, with tokens/s over the last RATE_WINDOW_BUCKETS full buckets (and the bucket under
    way), divided by the part of that window the job was running."""
    now_bucket = _bucket_now()
    since = now_bucket - RATE_WINDOW_BUCKETS
    live = [j.id for j in jobs if j.status not in ("loading", "queued")]
    recent = await repository.recent_tokens(session, live, since_bucket=since)
    now = time.time()
    window_start = since * repository.PROGRESS_BUCKET_S
    return [
        JobRead(
            id=j.id,
            teacher=j.teacher,
            kind=j.kind,
            status=j.status,
            priority=j.priority,
            params=GenerationParams.model_validate(j.params),
            counts=JobCounts(
                total=j.total_items,
                done=j.done_items,
                failed=j.failed_items,
                cancelled=j.cancelled_items,
                pending=j.total_items - j.done_items - j.failed_items - j.cancelled_items,
            ),
            tokens_generated=j.tokens_generated,
            tokens_per_second=tokens_per_second(recent.get(j.id, 0), window_start, now, j.started_at, j.finished_at),
            teacher_info=j.teacher_info,
            created_at=j.created_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
        )
        for j in jobs
    ]


async def list_jobs(session: AsyncSession, project_id: uuid.UUID, *, limit: int, cursor: str | None) -> JobPage:
    after = _decode_cursor(cursor) if cursor else None
    jobs = await repository.list_jobs(session, project_id, limit=limit + 1, after=after)
    next_cursor = _encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return JobPage(jobs=await to_reads(session, jobs[:limit]), next_cursor=next_cursor)


def _encode_cursor(job: Job) -> str:
    raw = orjson.dumps([job.created_at.isoformat(), str(job.id)])
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, job_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "malformed cursor", loc=["query", "cursor"]) from exc


def request_digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


async def upload_digest(upload: AsyncReadable, form: bytes) -> str:
    """A hash of the form fields and the whole file, read in chunks; the file is rewound afterwards."""
    digest = hashlib.sha256(form)
    while chunk := await upload.read(1 << 20):
        digest.update(chunk)
    await upload.seek(0)
    return digest.hexdigest()
