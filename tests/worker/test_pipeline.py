"""A batch hands its replica's room back when the teacher's answer is in, not when it has been decoded and
stored: while decoding is held up (a wave of large answers on a busy service), the next batches still go
out, so the teacher never idles behind the service's digestion; but only up to a bounded backlog of
undigested answers. Real tiny vLLM teacher, both databases."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from app.auth.repository import insert_project
from app.database import Database
from app.jobs.schemas import GenerationParams, PromptRecord
from app.jobs.service import _insert_records, aiter_records, new_job
from app.jobs.teacher_info import teacher_info_for
from app.models import Job
from app.settings import Settings, TeacherConfig
from app.teachers.service import TeacherRegistry
from app.worker import calls, controller, dispatcher
from app.worker.service import Worker
from tests.conftest import Teacher

PROMPTS = 12
TARGET = 2  # the controller's start, pinned below: two batches of one prompt (under the digest backlog)


async def make_job(db: Database, registry: TeacherRegistry, teacher: str, params: GenerationParams) -> uuid.UUID:
    info = await teacher_info_for(registry, teacher, params)
    async with db.transaction() as session:
        project = await insert_project(session, f"pipeline-{uuid.uuid4().hex[:8]}")
        job = new_job(project.id, teacher, params, info)
        session.add(job)
        await session.flush()
        records = aiter_records([PromptRecord(prompt=f"def f{i}():") for i in range(PROMPTS)])
        job.total_items = await _insert_records(session, job, records)
    return job.id


async def test_replica_is_refilled_while_answers_wait_to_be_decoded(
    database: Database, teacher: Teacher, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"pipe-{uuid.uuid4().hex[:6]}"
    # one prompt per batch and a fixed target of two sequences (no metrics climb): two batches in flight
    fields = {"name": name, "base_url": teacher.base_url, "model": teacher.model, "batch_size": 1}
    config = TeacherConfig.model_validate({**fields, "read_server_metrics": False})
    settings = Settings(teachers=[config])
    registry = TeacherRegistry(settings)
    await registry.refresh()
    job_id = await make_job(database, registry, name, GenerationParams(max_tokens=4, top_logprobs=3))

    decoding = threading.Event()  # set by the test once it has seen enough batches go out
    fetched: list[int] = []
    parse = calls.parse_completions

    def held_parse(raw: bytes, **kwargs: Any) -> Any:
        # runs on the decode thread; an event-loop decode would block here and nothing else would be sent
        decoding.wait(timeout=30)
        return parse(raw, **kwargs)

    monkeypatch.setattr(calls, "parse_completions", held_parse)
    monkeypatch.setattr(controller, "START_BATCHES", TARGET)
    replica = registry.replicas[name][0]
    completions = replica.client.completions

    async def counted(body: dict[str, Any], **kwargs: Any) -> bytes:
        raw = await completions(body, **kwargs)
        fetched.append(len(body["prompt"]))
        return raw

    monkeypatch.setattr(replica.client, "completions", counted)
    worker = Worker(database, settings, registry=registry)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(60):
            seen = -1
            while len(fetched) != seen:  # until no answer has come in for a second
                seen = len(fetched)
                await asyncio.sleep(1.0)
        # nothing could be decoded, yet more than the target went out: the room came back on arrival; and
        # sending stopped at the backlog of undigested batches (plus what was in flight when it filled)
        backlog = dispatcher.DIGEST_BACKLOG_PER_REPLICA
        assert TARGET < backlog <= len(fetched) <= backlog + TARGET < PROMPTS, fetched
        decoding.set()
        async with asyncio.timeout(60):
            while True:
                async with database.transaction() as session:
                    job = (await session.execute(select(Job).where(Job.id == job_id))).scalar_one()
                    if job.done_items == PROMPTS:
                        break
                await asyncio.sleep(0.1)
    finally:
        decoding.set()
        stop.set()
        await running
        await registry.aclose()
    assert job.failed_items == 0 and job.tokens_generated > 0
