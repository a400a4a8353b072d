"""Per-item parameter sets (a batch's lines), on both databases: a claim holds items of one set only, in
submission order, and hands the worker that set's parameters; a job with one set is claimed as before."""

from __future__ import annotations

import uuid

from app.auth.repository import insert_project
from app.database import Database
from app.jobs import repository as jobs_repository
from app.jobs.schemas import GenerationParams, PromptRecord
from app.jobs.service import item_row, new_job
from app.worker.service import Worker
from tests.worker.test_leases import claim_from, settings

VARIANTS = [GenerationParams(max_tokens=3, top_logprobs=2), GenerationParams(max_tokens=9, top_k=5, top_logprobs=2)]


def own_teacher() -> str:
    """A teacher name of the test's own: other tests' queued items on the session's database stay out."""
    return f"variants-{uuid.uuid4().hex[:8]}"


async def make_variant_job(db: Database, teacher: str, pattern: list[int]) -> uuid.UUID:
    """A job whose i-th item uses parameter set pattern[i]."""
    async with db.transaction() as session:
        project = await insert_project(session, f"variants-{uuid.uuid4().hex[:8]}")
        job = new_job(project.id, teacher, VARIANTS[0], {"max_logprobs": 20})
        job.variants = [v.lineage() for v in VARIANTS]
        job.total_items = len(pattern)
        session.add(job)
        await session.flush()
        rows = [item_row(job, i, PromptRecord(prompt=f"p{i}")) | {"variant": v} for i, v in enumerate(pattern)]
        await jobs_repository.insert_items(session, rows)
    return job.id


async def test_a_claim_takes_items_of_one_parameter_set_with_that_sets_params(database: Database) -> None:
    pattern = [0, 1, 1, 0, 1, 0, 0, 1]
    teacher = own_teacher()
    job_id = await make_variant_job(database, teacher, pattern)
    worker = Worker(database, settings(60.0, teacher))
    seen: list[tuple[int, list[int]]] = []
    while (claim := await claim_from(worker, 3, teacher)).items:
        variants = {item.variant for item in claim.items}
        assert len(variants) == 1, claim.items
        variant = variants.pop()
        assert variant is not None
        spec = claim.jobs[job_id]
        assert spec.variants is None and spec.params == VARIANTS[variant].lineage()
        seen.append((variant, [item.seq for item in claim.items]))
    # The first queued item's set goes first; each claim is in submission order.
    assert seen == [(0, [0, 3, 5]), (1, [1, 2, 4]), (0, [6]), (1, [7])]


async def test_a_job_of_one_parameter_set_claims_across_its_items(database: Database) -> None:
    teacher = own_teacher()
    async with database.transaction() as session:
        project = await insert_project(session, f"single-{uuid.uuid4().hex[:8]}")
        job = new_job(project.id, teacher, VARIANTS[1], {"max_logprobs": 20})
        job.total_items = 5
        session.add(job)
        await session.flush()
        await jobs_repository.insert_items(session, [item_row(job, i, PromptRecord(prompt="p")) for i in range(5)])
    claim = await claim_from(Worker(database, settings(60.0, teacher)), 10, teacher)
    assert [item.seq for item in claim.items] == [0, 1, 2, 3, 4]
    assert claim.jobs[job.id].params == VARIANTS[1].lineage() and claim.jobs[job.id].variants is None
