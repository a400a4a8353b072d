"""Jobs logic: validate and create prompt sets (JSON or streamed JSONL), read progress, cancel."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.errors import ApiError, not_found
from app.jobs import repository
from app.jobs.lines import iter_lines
from app.jobs.schemas import (
    CoreParams,
    FailurePage,
    GenerationParams,
    ItemFailure,
    JobCounts,
    JobCreate,
    JobPage,
    JobRead,
    PromptRecord,
)
from app.models import Job, utcnow
from app.settings import Settings
from app.teachers.service import TeacherRegistry

INSERT_CHUNK = 1000
MAX_REPORTED_LINE_ERRORS = 100
RATE_WINDOW_BUCKETS = 3
PROGRESS_SPARE_BUCKETS = 6
LINEAGE_FIELDS = (
    "served_model",
    "model_root",
    "max_model_len",
    "max_logprobs",
    "vllm_version",
    "logprobs_mode",
    "tokenizer_fingerprint",
    "chat_template_fingerprint",
)


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...
    async def seek(self, offset: int) -> None: ...


async def teacher_info_for(registry: TeacherRegistry, teacher: str, params: GenerationParams) -> dict[str, Any]:
    """Check the teacher exists and accepts k; return its identity to record on the job."""
    if registry.configured(teacher) is None:
        known = ", ".join(s.name for s in registry.states())
        raise ApiError(422, f"unknown teacher {teacher!r}; configured: {known}", loc=["body", "teacher"])
    state = registry.state(teacher)
    if state is None or state.served_model is None:
        await registry.refresh(teacher)
        state = registry.state(teacher)
    if state is None or state.served_model is None:
        raise ApiError(
            503,
            f"teacher {teacher!r} has not answered yet, so its limits are unknown; try again shortly",
            loc=["body", "teacher"],
            type="teacher_unavailable",
            headers={"Retry-After": "10"},
        )
    if state.max_logprobs is not None and params.top_logprobs > state.max_logprobs:
        raise ApiError(
            422,
            f"top_logprobs {params.top_logprobs} exceeds teacher {teacher!r}'s max_logprobs {state.max_logprobs}",
            loc=["body", "params", "top_logprobs"],
        )
    info = state.model_dump(include=set(LINEAGE_FIELDS), mode="json")
    info["name"] = teacher
    return info


def _new_job(
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


def _item_row(job: Job, seq: int, record: PromptRecord) -> dict[str, Any]:
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
        rows.append(_item_row(job, count, record))
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


async def create_job(
    session: AsyncSession, registry: TeacherRegistry, settings: Settings, body: JobCreate, project_id: uuid.UUID
) -> Job:
    if len(body.prompts) > settings.max_prompts_per_job:
        raise ApiError(422, f"more than {settings.max_prompts_per_job} prompts in one job", loc=["body", "prompts"])
    check_kind_params(body.kind, body.params, ["body", "params"])
    checker = RecordChecker(settings, body.kind)
    for index, record in enumerate(body.prompts):
        problem = checker.check(record, f"prompts[{index}]")
        if problem is not None:
            raise ApiError(422, problem[1], loc=["body", "prompts", index, *problem[0]])
    info = await teacher_info_for(registry, body.teacher, body.params)
    job = _new_job(project_id, body.teacher, body.params, info, body.kind, body.priority)
    job = await repository.insert_job(session, job)
    job.total_items = await _insert_records(session, job, aiter_records(body.prompts))
    await session.flush()
    await repository.notify_workers(session, job.teacher)
    return job


def _parse_line(line: bytes) -> PromptRecord:
    return PromptRecord.model_validate_json(line)


def _line_error(lineno: int, exc: ValidationError) -> dict[str, Any]:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"])
    msg = f"line {lineno}: {field + ': ' if field else ''}{first['msg']}"
    return {"loc": ["body", "file", "line", lineno, *first["loc"]], "msg": msg, "type": first["type"]}


async def create_job_from_upload(
    session: AsyncSession,
    registry: TeacherRegistry,
    settings: Settings,
    teacher: str,
    params: GenerationParams,
    upload: AsyncReadable,
    project_id: uuid.UUID,
    kind: str = "generate",
    priority: int = 0,
) -> Job:
    """Validate every line first (nothing written), then insert in chunks on a second read."""
    check_kind_params(kind, params, ["body"])
    info = await teacher_info_for(registry, teacher, params)
    errors: list[dict[str, Any]] = []
    bad = 0
    checker = RecordChecker(settings, kind)
    async for lineno, line in iter_lines(upload, max_line_bytes=settings.max_upload_line_bytes):
        if not line.strip():
            continue
        try:
            record = _parse_line(line)
        except ValidationError as exc:
            problem: dict[str, Any] | None = _line_error(lineno, exc)
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
        if problem is not None:
            bad += 1
            if len(errors) < MAX_REPORTED_LINE_ERRORS:
                errors.append(problem)
    if bad:
        if bad > len(errors):
            errors.append({"loc": ["body", "file"], "msg": f"{bad} bad lines in all", "type": "invalid"})
        raise ApiError(422, "invalid lines", details=errors)
    if checker.count == 0:
        raise ApiError(422, "the file holds no prompt records", loc=["body", "file"], type="empty")
    checker.seen.clear()
    await upload.seek(0)
    job = await repository.insert_job(session, _new_job(project_id, teacher, params, info, kind, priority))
    job.total_items = await _insert_records(session, job, _records_of(upload, settings.max_upload_line_bytes))
    await session.flush()
    await repository.notify_workers(session, job.teacher)
    return job


async def _records_of(upload: AsyncReadable, max_line_bytes: int) -> AsyncIterator[PromptRecord]:
    async for _, line in iter_lines(upload, max_line_bytes=max_line_bytes):
        if line.strip():
            yield _parse_line(line)


async def aiter_records(records: Iterable[PromptRecord]) -> AsyncIterator[PromptRecord]:
    for record in records:
        yield record


async def get_job(session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID) -> Job:
    job = await repository.get_job(session, job_id, project_id)
    if job is None:
        raise not_found("job", ["path", "job_id"])
    return job


async def cancel_job(session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID) -> Job:
    """Items first, then the job row: the order workers lock them in, so the two never deadlock."""
    job = await get_job(session, job_id, project_id)
    if job.status in ("queued", "running"):
        cancelled = await repository.cancel_queued_items(session, job_id)
        await repository.mark_job_cancelled(session, job_id, cancelled)
        await session.refresh(job)
    return job


async def retry_failed(session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID) -> Job:
    """Re-queue a job's failed items. A cancelled job stays cancelled: 409."""
    job = await get_job(session, job_id, project_id)
    if job.status == "cancelled":
        raise ApiError(
            409, "the job is cancelled; its items are not dispatched again", loc=["path", "job_id"], type="conflict"
        )
    if await repository.requeue_failed_items(session, job_id):
        await repository.notify_workers(session, job.teacher)
        await session.refresh(job)
    return job


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


async def to_reads(session: AsyncSession, jobs: list[Job]) -> list[JobRead]:
    """JobRead for each job, with tokens/s over the last RATE_WINDOW_BUCKETS full buckets."""
    now_bucket = _bucket_now()
    since = now_bucket - RATE_WINDOW_BUCKETS
    live = [j.id for j in jobs if j.status != "queued"]
    recent = await repository.recent_tokens(session, live, since_bucket=since)
    window_s = RATE_WINDOW_BUCKETS * repository.PROGRESS_BUCKET_S + time.time() % repository.PROGRESS_BUCKET_S
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
            tokens_per_second=round(recent.get(j.id, 0) / window_s, 1) if window_s > 0 else 0.0,
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


IDEMPOTENCY_LOC: list[str | int] = ["header", "idempotency-key"]


async def claim_idempotency_key(
    database: Database, settings: Settings, project_id: uuid.UUID, key: str, request_hash: str
) -> uuid.UUID | None:
    """Take the key for this request (committed at once, so a racing request sees it). Returns the job
    an earlier identical request created, or None when this request is to create it. 422 when the key
    was used with a different request; 409 while another request with it is still running."""

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
    create: Callable[[AsyncSession], Awaitable[Job]],
) -> tuple[JobRead, bool]:
    """Run `create` in its own transaction, at most once per Idempotency-Key. Returns (job, replayed)."""
    if idempotency_key is not None:
        original = await claim_idempotency_key(database, settings, project_id, idempotency_key, request_hash)
        if original is not None:

            async def replay(session: AsyncSession) -> JobRead:
                return (await to_reads(session, [await get_job(session, original, project_id)]))[0]

            return await database.run(replay, readonly=True), True

    async def work(session: AsyncSession) -> JobRead:
        job = await create(session)
        if idempotency_key is not None:
            await repository.complete_idempotency_key(session, project_id, idempotency_key, job.id)
        return (await to_reads(session, [job]))[0]

    try:
        return await database.run(work), False
    except BaseException:
        if idempotency_key is not None:
            await database.run(lambda s: repository.delete_pending_idempotency_key(s, project_id, idempotency_key))
        raise


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
