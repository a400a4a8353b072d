"""Batches beyond the happy path, through the official openai client on both databases: line-numbered
validation errors with nothing stored, cancel mid-run, expiry, list pagination, and project isolation."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import update

from app.batches import service as batches_service
from app.batches import validation as batches_validation
from app.batches.schemas import BatchCreate, BatchObject
from app.batches.validation import MAX_VARIANTS
from app.database import Database
from app.files.service import file_storage
from app.models import Batch, utcnow
from app.settings import Settings
from app.teachers.service import TeacherRegistry
from tests.batches.openai_helpers import (
    chat_line,
    completions_line,
    file_lines,
    jsonl,
    openai_client,
    upload,
    wait_batch,
)
from tests.conftest import Service
from tests.helpers import job_count, wait_done
from tests.maintained import project_id


def test_invalid_lines_fail_the_batch_with_line_numbered_errors_and_no_job(service: Service, api: httpx.Client) -> None:
    client = openai_client(service)
    good = completions_line("a", "def f():", max_tokens=2)
    lines = [
        orjson.dumps(good),
        b'{"custom_id": "b", "method": "POST", "url": ',  # 2: not JSON
        orjson.dumps({**completions_line("c", "x"), "url": "/v1/embeddings"}),  # 3: unknown url
        orjson.dumps(completions_line("a", "again")),  # 4: custom_id of line 1
        orjson.dumps(chat_line("e", "hi", model="no-such-teacher")),  # 5: unknown teacher
        orjson.dumps({**completions_line("f", "x"), "method": "GET"}),  # 6: not POST
        orjson.dumps(completions_line("g", "x", temperature="hot")),  # 7: a bad body
        orjson.dumps(completions_line("h", "x", echo=True)),  # 8: a field no endpoint here takes
        orjson.dumps(good | {"custom_id": "i"}),  # 9: fine
    ]
    jobs_before = job_count(api)
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.failed_at is not None and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.object == "list"
    found = {(e.line, e.code, e.param) for e in batch.errors.data or []}
    assert found == {
        (2, "invalid_json", None),
        (3, "invalid_url", "url"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "model_not_found", "body.model"),
        (6, "invalid_request", "method"),
        (7, "invalid_request", "body.temperature"),
        (8, "invalid_request", "body.echo"),
    }
    assert all(e.message for e in batch.errors.data or [])
    assert job_count(api) == jobs_before  # no job, no items left behind
    assert client.batches.retrieve(batch.id).status == "failed"
    assert getattr(batch, "job_id", None) is None


def test_bad_requests_to_the_batches_api_get_4xx(service: Service) -> None:
    client = openai_client(service)
    file_id = upload(client, jsonl([completions_line("a", "x")]))
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_0123")


def test_cancel_mid_run_ends_cancelled_with_partial_results(service: Service) -> None:
    client = openai_client(service)
    lines = [completions_line(f"c{i}", f"def f{i}(a, b):", max_tokens=48, ignore_eos=True) for i in range(480)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while (counts := client.batches.retrieve(batch.id).request_counts) is not None and counts.completed == 0:
        assert time.monotonic() < deadline, "no line completed in 120 s"
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled", done
    assert done.cancelled_at is not None
    counts = done.request_counts
    assert counts is not None and 0 < counts.completed < counts.total == 480
    outputs = file_lines(client, done.output_file_id)
    errors = file_lines(client, done.error_file_id)
    assert len(outputs) == counts.completed
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert sorted(line["custom_id"] for line in outputs + errors) == sorted(f"c{i}" for i in range(480))
    assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing
    with pytest.raises(openai.ConflictError):  # a batch that failed validation has nothing to cancel
        client.batches.cancel(_failed_batch(client))


def _failed_batch(client: openai.OpenAI) -> str:
    return client.batches.create(
        input_file_id=upload(client, b"not json\n"), endpoint="/v1/completions", completion_window="24h"
    ).id


def test_list_pages_through_every_batch_newest_first(service: Service) -> None:
    client = openai_client(service)
    made = [_failed_batch(client) for _ in range(5)]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    listed = [b.id for b in client.batches.list(limit=2)]  # auto-paginates with after = the last id
    assert listed.index(made[-1]) < listed.index(made[0])
    positions = [listed.index(b) for b in made]
    assert positions == sorted(positions, reverse=True)
    assert len(listed) == len(set(listed))


def test_projects_do_not_see_each_others_files_or_batches(service: Service) -> None:
    mine, theirs = openai_client(service), openai_client(service, service.other_key)
    file_id = upload(mine, jsonl([completions_line("only", "def f():", max_tokens=2)]))
    batch = wait_batch(
        mine, mine.batches.create(input_file_id=file_id, endpoint="/v1/completions", completion_window="24h").id
    )
    assert batch.status == "completed" and batch.output_file_id is not None
    for call in (
        lambda: theirs.files.retrieve(file_id),
        lambda: theirs.files.content(file_id),
        lambda: theirs.files.delete(file_id),
        lambda: theirs.files.content(batch.output_file_id or ""),
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.batches.create(input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in {b.id for b in theirs.batches.list()}
    assert file_id not in {f.id for f in theirs.files.list()}
    assert [line["custom_id"] for line in file_lines(mine, batch.output_file_id)] == ["only"]


def test_a_batch_past_its_window_expires_and_its_unrun_lines_say_so(service: Service, api: httpx.Client) -> None:
    client = openai_client(service)
    lines = [completions_line(f"x{i}", f"def f{i}(a):", max_tokens=48, ignore_eos=True) for i in range(480)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/completions", completion_window="24h"
    )
    assert batch.status == "in_progress"
    batch_id = uuid.UUID(hex=batch.id.removeprefix("batch_"))

    async def expire() -> int:
        database = Database(service.database_url)
        try:
            async with database.transaction() as session:
                await session.execute(
                    update(Batch).where(Batch.id == batch_id).values(expires_at=utcnow() - timedelta(seconds=1))
                )
            return await database.run(lambda s: batches_service.expire_batches(s, utcnow(), 1000))
        finally:
            await database.dispose()

    assert asyncio.run(expire()) == 1  # what the maintenance pass runs
    expired = client.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at is not None
    job_id = (expired.model_extra or {})["job_id"]
    wait_done(api, job_id)
    expired = client.batches.retrieve(batch.id)
    outputs = file_lines(client, expired.output_file_id)
    errors = file_lines(client, expired.error_file_id)
    assert errors and {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert sorted(line["custom_id"] for line in outputs + errors) == sorted(f"x{i}" for i in range(480))
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_too_many_distinct_parameter_sets_fail_the_batch_at_the_line_past_the_limit(service: Service) -> None:
    client = openai_client(service)
    lines = [completions_line(f"s{i}", "x", seed=i, max_tokens=1) for i in range(MAX_VARIANTS + 1)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert [(e.line, e.code) for e in (batch.errors.data or [])] == [(MAX_VARIANTS + 1, "too_many_parameter_sets")]  # type: ignore[union-attr]


def test_a_validation_whose_process_died_is_failed_and_a_live_one_is_not(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `validating` batch is failed by the maintenance pass only when no process holds its lock: one
    created in this process is checked from inside its own validation, one left behind by a dead process
    (a row with no lock holder) is failed with an `interrupted` error."""
    client = openai_client(service)
    file_id = upload(client, jsonl([completions_line("a", "def f(x):", model="no-such-teacher")]))
    settings = Settings(data_dir=Path(service.process.env["DISTILLERY_DATA_DIR"]))
    owner = project_id(service)
    seen_live: list[int] = []
    real_validate = batches_validation.validate

    async def run() -> tuple[BatchObject, str | None, list[dict[str, Any]] | None]:
        database = Database(service.database_url)

        async def validate_after_a_sweep(*args: Any, **kwargs: Any) -> Any:
            seen_live.append(await batches_service.fail_orphaned_validations(database, settings, 1000))
            return await real_validate(*args, **kwargs)

        monkeypatch.setattr(batches_validation, "validate", validate_after_a_sweep)
        try:
            async with database.transaction() as session:
                dead = Batch(
                    project_id=owner,
                    input_file_id=uuid.uuid4(),
                    endpoint="/v1/completions",
                    completion_window="24h",
                    status="validating",
                    expires_at=utcnow() + timedelta(hours=24),
                )
                session.add(dead)
            body = BatchCreate(input_file_id=file_id, endpoint="/v1/completions", completion_window="24h")
            storage = file_storage(settings.resolved_files_dir)
            live = await batches_service.create_batch(
                database, TeacherRegistry(settings), settings, storage, body, owner
            )
            async with database.transaction() as session:
                left = await session.get(Batch, dead.id)
                assert left is not None
                return live, left.status, left.errors
        finally:
            await database.dispose()

    live, dead_status, dead_errors = asyncio.run(run())
    assert seen_live == [1], "the sweep inside the live validation failed the dead batch only"
    assert live.status == "failed" and live.errors is not None  # its own outcome: the unknown teacher
    assert "interrupted" not in [e.code for e in live.errors.data]
    assert dead_status == "failed" and dead_errors and dead_errors[0]["code"] == "interrupted"
