"""View models for the console's pages, built from the jobs, records and teachers services."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import not_found
from app.jobs import service as jobs_service
from app.jobs.repository import PROGRESS_BUCKET_S
from app.jobs.schemas import ItemFailure, JobRead
from app.records import repository as records_repository
from app.records import service as records_service
from app.records.schemas import Record
from app.teachers.service import TeacherRegistry
from app.ui import repository
from app.ui.tokens import TokenStrings

LIVE = ("loading", "queued", "running")
JOB_STATUSES = ("loading", "queued", "running", "completed", "failed", "cancelled")
MAX_LISTED_JOBS = 200


@dataclass
class JobsView:
    jobs: list[JobRead]
    teachers: list[str]
    status: str | None
    teacher: str | None

    @property
    def live(self) -> bool:
        return any(j.status in LIVE for j in self.jobs)


async def jobs_view(
    session: AsyncSession, project_id: uuid.UUID, *, status: str | None, teacher: str | None
) -> JobsView:
    jobs = await repository.filtered_jobs(
        session, project_id, status=status or None, teacher=teacher or None, limit=MAX_LISTED_JOBS
    )
    reads = await jobs_service.to_reads(session, jobs)
    return JobsView(reads, await repository.teachers_of(session, project_id), status, teacher)


def progress_percent(job: JobRead) -> float:
    """The share of the job's prompts that are through (done, failed or cancelled)."""
    total = job.counts.total
    through = job.counts.done + job.counts.failed + job.counts.cancelled
    return 100.0 * through / total if total else 0.0


@dataclass
class JobView:
    job: JobRead
    failures: list[ItemFailure]
    rate_points: list[tuple[float, float]]  # (unix time of the bucket's start, tokens/s in it)
    records: list[Record]
    records_next: str | None

    @property
    def live(self) -> bool:
        return self.job.status in LIVE


async def job_view(
    session: AsyncSession, project_id: uuid.UUID, job_id: uuid.UUID, *, cursor: str | None, max_bytes: int
) -> JobView:
    job = await jobs_service.get_job(session, job_id, project_id)
    (read,) = await jobs_service.to_reads(session, [job])
    failures = (await jobs_service.list_failures(session, job_id, project_id, cursor=None, limit=50)).failures
    buckets = await repository.progress_buckets(session, job_id)
    points = [(float(b * PROGRESS_BUCKET_S), bucket_rate(b, t, read)) for b, t in buckets]
    page = await records_service.record_page(session, job, cursor=cursor, limit=50, max_bytes=max_bytes)
    return JobView(read, failures, points, page.records, page.next_cursor)


def bucket_rate(bucket: int, tokens: int, job: JobRead) -> float:
    """Tokens/s in one 10-s bucket, over the part of it the job was running (its first and last buckets are
    partial: 144 tokens in the job's only 0.4 s are not 14 tok/s)."""
    start, end = bucket * PROGRESS_BUCKET_S, (bucket + 1) * PROGRESS_BUCKET_S
    if job.started_at is not None:
        start = max(start, int(job.started_at.timestamp()))
    if job.finished_at is not None:
        end = min(end, int(job.finished_at.timestamp()) + 1)
    return tokens / max(end - start, 1)


async def job_summary(session: AsyncSession, project_id: uuid.UUID, job_id: uuid.UUID) -> JobRead:
    job = await jobs_service.get_job(session, job_id, project_id)
    return (await jobs_service.to_reads(session, [job]))[0]


# --- the completion viewer --------------------------------------------------------------------------------


@dataclass
class Candidate:
    token_id: int
    text: str | None
    logprob: float | None

    @property
    def prob(self) -> float:
        return 0.0 if self.logprob is None else math.exp(self.logprob)


@dataclass
class TokenView:
    """One generated position: the sampled token and the teacher's top-k there."""

    index: int
    token_id: int
    text: str | None
    logprob: float | None
    candidates: list[Candidate]
    in_topk: bool

    @property
    def prob(self) -> float | None:
        return None if self.logprob is None else math.exp(self.logprob)

    @property
    def tail_mass(self) -> float:
        """What the top-k leave to the rest of the vocabulary."""
        return max(0.0, 1.0 - sum(c.prob for c in self.candidates))

    @property
    def entropy(self) -> float:
        """Entropy (nats) of the top-k with the tail as one more outcome: a lower bound of the true entropy."""
        probs = [c.prob for c in self.candidates] + [self.tail_mass]
        return -sum(p * math.log(p) for p in probs if p > 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.token_id,
            "t": self.text,
            "lp": self.logprob,
            "in": self.in_topk,
            "c": [[c.token_id, c.text, c.logprob] for c in self.candidates],
        }


@dataclass
class RecordView:
    job: JobRead
    item_id: int
    sample_index: int
    seq: int
    custom_id: str | None
    prompt: str | None
    messages: list[dict[str, Any]] | None
    finish_reason: str | None
    k: int
    tokens: list[TokenView]
    strings_known: bool
    neighbours: dict[str, str] = field(default_factory=dict)


async def record_view(
    session: AsyncSession,
    registry: TeacherRegistry,
    strings: TokenStrings,
    project_id: uuid.UUID,
    job_id: uuid.UUID,
    item_id: int,
    sample_index: int,
) -> RecordView:
    """One record of a job with each generated token decoded by the teacher's tokenizer."""
    job = await jobs_service.get_job(session, job_id, project_id)
    (read,) = await jobs_service.to_reads(session, [job])
    rows = await records_repository.result_page(session, job.id, after=(item_id, sample_index - 1), limit=1)
    if not rows or (rows[0].item_id, rows[0].sample_index) != (item_id, sample_index):
        raise not_found("record", ["path", "record"])
    row = records_service.export_row(job.id, rows[0])
    a = row.arrays
    ids = a.token_ids.tolist()
    topk_ids = a.topk_ids.tolist()
    wanted = set(ids).union(*topk_ids) if topk_ids else set(ids)
    texts = await strings.strings(registry, job.teacher, job.teacher_info.get("tokenizer_fingerprint"), wanted)
    tokens = []
    for i, token_id in enumerate(ids):
        lp = float(a.token_logprobs[i])
        cands = [
            Candidate(c, None if texts is None else texts.get(c), _finite(float(a.topk_logprobs[i][j])))
            for j, c in enumerate(topk_ids[i] if topk_ids else [])
            if c >= 0
        ]
        tokens.append(
            TokenView(
                index=i,
                token_id=token_id,
                text=None if texts is None else texts.get(token_id),
                logprob=_finite(lp),
                candidates=cands,
                in_topk=any(c.token_id == token_id for c in cands),
            )
        )
    return RecordView(
        job=read,
        item_id=row.item_id,
        sample_index=row.sample_index,
        seq=row.seq,
        custom_id=row.custom_id,
        prompt=row.prompt,
        messages=row.messages,
        finish_reason=row.finish_reason,
        k=job.top_logprobs,
        tokens=tokens,
        strings_known=texts is not None,
    )


def _finite(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else value
