"""Fair share on both databases: jobs take turns across projects, priority goes first, a project's cap
holds, a replica only gets jobs of its own identity, and a cancelled job's items never come back."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from app.auth.repository import insert_project
from app.database import Database
from app.jobs.schemas import GenerationParams, PromptRecord
from app.jobs.service import _insert_records, aiter_records, cancel_job, new_job
from app.models import Item, Job, Project
from app.settings import Settings, TeacherConfig
from app.worker.dispatcher import tail_limit
from app.worker.schemas import Claim
from app.worker.service import Worker
from tests.worker.test_leases import IDENTITY

# Each test serves its own teacher name, so jobs of other tests on the session's database stay out of it.
TEACHER = contextvars.ContextVar("TEACHER", default="sched")


@pytest.fixture(autouse=True)
def own_teacher() -> None:
    TEACHER.set(f"sched-{uuid.uuid4().hex[:8]}")


def worker(db: Database, **settings: Any) -> Worker:
    config = TeacherConfig.model_validate({"name": TEACHER.get(), "base_url": "http://127.0.0.1:9", "model": "m"})
    return Worker(db, Settings(teachers=[config], **settings), worker_id=f"w-{uuid.uuid4().hex[:6]}")


async def make_job(
    db: Database, project: str, count: int, *, priority: int = 0, info: dict[str, object] | None = None
) -> uuid.UUID:
    project = f"{project}-{TEACHER.get()}"
    async with db.transaction() as session:
        found = (await session.execute(select(Project).where(Project.name == project))).scalar_one_or_none()
        project_row = found or await insert_project(session, project)
        params = GenerationParams(top_logprobs=2)
        job = new_job(project_row.id, TEACHER.get(), params, info or {"max_logprobs": 20}, priority=priority)
        session.add(job)
        await session.flush()
        records = aiter_records([PromptRecord(prompt=f"{project}-{i}") for i in range(count)])
        job.total_items = await _insert_records(session, job, records)
    return job.id


async def take(w: Worker, limit: int = 4, identity: tuple[object, ...] = IDENTITY) -> Claim:
    return await w.claim(TEACHER.get(), identity, lambda spec, pending: limit)


def job_of(claim: Claim) -> uuid.UUID | None:
    return claim.items[0].job_id if claim.items else None


async def test_jobs_of_projects_take_turns(database: Database) -> None:
    big = await make_job(database, "proj-a", 100)
    small = await make_job(database, "proj-b", 6)
    second_big = await make_job(database, "proj-a", 100)
    w = worker(database)
    order = [job_of(await take(w)) for _ in range(6)]
    # A's first job, then B (its project waited longest), then A again (its other job), then B's rest...
    assert order[:4] == [big, small, second_big, small], order
    assert small not in order[4:]  # B had 6 items: two turns of 4 and 2
    assert set(order[4:]) <= {big, second_big}


async def test_higher_priority_goes_first_even_when_submitted_later(database: Database) -> None:
    old = await make_job(database, "proj-a", 50)
    w = worker(database)
    assert job_of(await take(w)) == old
    urgent = await make_job(database, "proj-b", 10, priority=5)
    assert [job_of(await take(w)) for _ in range(3)] == [urgent, urgent, urgent]  # 4 + 4 + 2 items
    assert job_of(await take(w)) == old


async def test_project_cap_limits_items_in_flight(database: Database) -> None:
    capped = await make_job(database, "proj-capped", 50)
    other = await make_job(database, "proj-free", 50)
    w = worker(database, project_max_inflight_overrides={f"proj-capped-{TEACHER.get()}": 5})
    claims = [await take(w, limit=4) for _ in range(4)]
    taken = {job: sum(len(c.items) for c in claims if job_of(c) == job) for job in (capped, other)}
    assert taken[capped] == 5, taken  # 4, then 1 under the cap, then none while those are in flight
    assert taken[other] >= 8
    await w.release([i.id for c in claims if job_of(c) == capped for i in c.items])
    assert job_of(await take(w, limit=4)) == capped  # room again once released


async def test_a_replica_gets_only_jobs_of_its_identity(database: Database) -> None:
    theirs = await make_job(database, "proj-a", 5, info={"max_logprobs": 20, "tokenizer_fingerprint": "tok-other"})
    w = worker(database)
    assert (await take(w)).items == []
    other_identity = (None, "tok-other", None, 20)
    assert job_of(await take(w, identity=other_identity)) == theirs


async def test_a_cancelled_jobs_released_items_are_cancelled_not_requeued(database: Database) -> None:
    job_id = await make_job(database, "proj-a", 10)
    w = worker(database, worker_lease_s=0.05)
    first = await take(w, limit=4)
    second = await take(w, limit=4)
    async with database.transaction() as session:
        project_id = (await session.get(Job, job_id)).project_id  # type: ignore[union-attr]
        await cancel_job(session, job_id, project_id)
    await w.release([i.id for i in first.items])  # a transient failure after the cancel
    await asyncio.sleep(0.1)
    await w.reap()  # the other batch's worker died: its lease expires
    assert (await take(w, limit=10)).items == []
    async with database.transaction(readonly=True) as session:
        statuses = (await session.execute(select(Item.status).where(Item.job_id == job_id))).scalars().all()
        job = await session.get(Job, job_id)
    assert sorted(statuses) == ["cancelled"] * 10, statuses
    assert job is not None and job.status == "cancelled" and job.cancelled_items == 10
    assert len(second.items) == 4


async def test_the_batch_limit_sees_what_the_jobs_have_left(database: Database) -> None:
    await make_job(database, "proj-a", 10)
    await make_job(database, "proj-b", 6)
    w = worker(database)
    seen: list[int] = []

    def limit_for(spec: object, pending: int) -> int:
        seen.append(pending)
        return 4

    await w.claim(TEACHER.get(), IDENTITY, limit_for)
    assert seen == [16]  # both jobs' items, before any is taken
    async with database.transaction() as session:
        await session.execute(update(Job).where(Job.teacher == TEACHER.get()).values(done_items=Job.done_items + 3))
    seen.clear()
    await w.claim(TEACHER.get(), IDENTITY, limit_for)
    assert seen == [10]  # done items are not pending; leased ones still are (they may come back)


@pytest.mark.parametrize(
    ("queued", "replicas", "limit"),
    [(10_000, 8, 1250), (500, 8, 63), (64, 8, 8), (3, 8, 8), (-5, 8, 8), (100, 1, 100), (100, 0, 100)],
)
def test_tail_limit_is_an_even_share_of_what_is_left(queued: int, replicas: int, limit: int) -> None:
    assert tail_limit(queued, replicas) == limit
