"""Leases on both databases: expiry re-queues, only the lease holder's write lands, one result per sample."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import numpy as np
from sqlalchemy import func, select

from app.auth.repository import insert_project
from app.codecs.topk import TopKArrays
from app.database import Database
from app.jobs.schemas import GenerationParams, PromptRecord
from app.jobs.service import _insert_records, aiter_records, new_job
from app.models import Item, Job, Result, utcnow
from app.settings import Settings, TeacherConfig
from app.teachers.parsing import ParsedCompletion
from app.worker import repository
from app.worker.schemas import Claim, ItemOutcome
from app.worker.service import Worker

TEACHER = "lease-test"  # never served, so the test service's worker leaves these items alone
IDENTITY = (None, None, None, 20)  # what make_job records: only max_logprobs is known


def settings(lease_s: float, teacher: str = TEACHER, **more: object) -> Settings:
    config = TeacherConfig.model_validate({"name": teacher, "base_url": "http://127.0.0.1:9", "model": "m"})
    return Settings(teachers=[config], worker_lease_s=lease_s, **more)  # type: ignore[arg-type]


async def make_job(db: Database, count: int, teacher: str = TEACHER) -> uuid.UUID:
    params = GenerationParams(top_logprobs=2)
    async with db.transaction() as session:
        project = await insert_project(session, f"lease-{uuid.uuid4().hex[:8]}")
        job = new_job(project.id, teacher, params, {"max_logprobs": 20})
        session.add(job)
        await session.flush()
        job.total_items = await _insert_records(
            session, job, aiter_records([PromptRecord(prompt=f"p{i}") for i in range(count)])
        )
    return job.id


def outcome_for(item: object, n: int = 1) -> ItemOutcome:
    arrays = TopKArrays(
        np.array([5, 6], np.int32),
        np.array([-0.1, -0.2], np.float32),
        np.array([[5, 7], [6, 7]], np.int32),
        np.array([[-0.1, -2.0], [-0.2, -3.0]], np.float32),
    )
    completions = [ParsedCompletion(0, s, "ab", "length", arrays, [1, 2]) for s in range(n)]
    return ItemOutcome(item, completions=completions)  # type: ignore[arg-type]


async def claim_from(worker: Worker, limit: int, teacher: str = TEACHER) -> Claim:
    return await worker.claim(teacher, IDENTITY, lambda spec, pending: limit)


async def counts(db: Database, job_id: uuid.UUID) -> tuple[int, int, str]:
    async with db.transaction(readonly=True) as session:
        results = await session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
        job = await session.get(Job, job_id)
        assert job is not None
        return int(results or 0), job.done_items, job.status


async def test_expired_lease_goes_to_the_next_worker_and_the_stale_write_is_a_no_op(database: Database) -> None:
    job_id = await make_job(database, 3)
    a = Worker(database, settings(lease_s=0.2), worker_id="worker-a")
    b = Worker(database, settings(lease_s=60), worker_id="worker-b")
    claim_a = await claim_from(a, 10)
    assert [i.attempts for i in claim_a.items] == [1, 1, 1]
    assert (await claim_from(b, 10)).items == [], "leased items are not claimable"

    await asyncio.sleep(0.4)
    await b.reap()
    claim_b = await claim_from(b, 10)
    assert sorted(i.id for i in claim_b.items) == sorted(i.id for i in claim_a.items)
    assert [i.attempts for i in claim_b.items] == [2, 2, 2]

    await a.store([outcome_for(i) for i in claim_a.items])  # stale: a no longer holds the leases
    assert await counts(database, job_id) == (0, 0, "running")

    await b.store([outcome_for(i, n=1) for i in claim_b.items])
    assert await counts(database, job_id) == (3, 3, "completed")
    await b.store([outcome_for(i, n=1) for i in claim_b.items])  # a repeat after completion changes nothing
    assert await counts(database, job_id) == (3, 3, "completed")


async def test_release_and_renew(database: Database) -> None:
    await make_job(database, 2)
    w = Worker(database, settings(lease_s=30), worker_id="worker-r")
    claim = await claim_from(w, 10)
    ids = [i.id for i in claim.items]
    until = utcnow() + timedelta(hours=1)
    async with database.transaction() as session:
        assert await repository.renew_leases(session, owner="someone-else", item_ids=ids, lease_until=until) == 0
        assert await repository.renew_leases(session, owner="worker-r", item_ids=ids, lease_until=until) == 2
    await w.retry_later([ItemOutcome(i, reason="busy", transient=True) for i in claim.items])
    async with database.transaction(readonly=True) as session:
        statuses = (await session.execute(select(Item.status).where(Item.id.in_(ids)))).scalars().all()
    assert statuses == ["queued", "queued"]


async def test_an_expired_lease_is_an_attempt_and_the_last_one_fails_the_item(database: Database) -> None:
    """A prompt that kills (or stalls) every worker that takes it must not go round for ever."""
    teacher = f"reap-{uuid.uuid4().hex[:8]}"
    job_id = await make_job(database, 2, teacher)
    w = Worker(database, settings(0.2, teacher, worker_max_attempts=2), worker_id="worker-dies")
    for attempt in (1, 2):
        claim = await claim_from(w, 10, teacher)
        assert [i.attempts for i in claim.items] == [attempt, attempt]
        await asyncio.sleep(0.4)  # the worker "dies" holding the lease
        await w.reap()
    assert (await claim_from(w, 10, teacher)).items == []
    async with database.transaction(readonly=True) as session:
        items = (await session.execute(select(Item).where(Item.job_id == job_id))).scalars().all()
        job = await session.get(Job, job_id)
    assert [(i.status, i.error) for i in items] == [
        ("failed", "gave up after 2 attempts: its lease expired (the worker died or stalled)")
    ] * 2
    assert job is not None and (job.failed_items, job.status) == (2, "failed")


async def test_an_item_sent_again_alone_counts_that_send(database: Database) -> None:
    """Released after being sent twice in one claim (its batch's answer was unreadable), an item has spent
    two attempts; with max_attempts 2 the next failure is its last."""
    teacher = f"resend-{uuid.uuid4().hex[:8]}"
    job_id = await make_job(database, 1, teacher)
    w = Worker(database, settings(30, teacher, worker_max_attempts=2), worker_id="worker-resend")
    (item,) = (await claim_from(w, 10, teacher)).items
    await w.retry_later([ItemOutcome(item, reason="unreadable", resent=True)])
    (again,) = (await claim_from(w, 10, teacher)).items
    assert again.attempts == 3
    await w.retry_later([ItemOutcome(again, reason="teacher answer is not JSON")])
    async with database.transaction(readonly=True) as session:
        failed = (await session.execute(select(Item).where(Item.job_id == job_id))).scalar_one()
    assert (failed.status, failed.error) == ("failed", "gave up after 3 attempts: teacher answer is not JSON")
