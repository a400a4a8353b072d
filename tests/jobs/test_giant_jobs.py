"""Giant jobs stay cheap: loading in committed chunks, cancel and retry in background batches, delete and
retention purges, on both databases, with batches small enough that small jobs span many of them."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select, update

from app.database import Database
from app.models import Item, Job, JobProgress, Result, utcnow
from tests.conftest import Teacher
from tests.helpers import wait_done
from tests.maintained import service_of_its_own

CHUNK_ROWS = 50
BATCH_ROWS = 40


@dataclass(frozen=True)
class Giant:
    url: str
    database_url: str
    api_key: str
    other_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, headers={"authorization": f"Bearer {key or self.api_key}"})


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def giant(
    request: pytest.FixtureRequest, teacher: Teacher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Giant]:
    """The service with chunks of 50 items, sweep batches of 40 rows and a one-day retention, on a database
    of its own."""
    env = {
        "DISTILLERY_JOB_LOAD_CHUNK_ROWS": str(CHUNK_ROWS),
        "DISTILLERY_JOB_SWEEP_BATCH_ROWS": str(BATCH_ROWS),
        "DISTILLERY_JOB_SWEEP_INTERVAL_S": "0.2",
        "DISTILLERY_RETENTION_DAYS": "1",
    }
    with service_of_its_own(request, teacher, tmp_path_factory, "giant", env) as service:
        yield Giant(service.url, service.database_url, service.api_key, service.other_key)


@pytest.fixture
def api(giant: Giant) -> Iterator[httpx.Client]:
    with giant.client() as client:
        yield client


def on_database(database_url: str, work: Any) -> Any:
    """Run `work(session)` in one committed transaction on the service's database, from the test."""

    async def run() -> Any:
        db = Database(database_url)
        try:
            return await db.run(work)
        finally:
            await db.dispose()

    return asyncio.run(run())


def row_counts(database_url: str, job_id: str | None = None) -> dict[str, int]:
    """Rows of jobs, items, results and progress: all of them, or one job's."""
    jid = uuid.UUID(job_id) if job_id else None

    async def count(session: Any) -> dict[str, int]:
        counts = {}
        for name, model, column in (
            ("jobs", Job, Job.id),
            ("items", Item, Item.job_id),
            ("results", Result, Result.job_id),
            ("progress", JobProgress, JobProgress.job_id),
        ):
            stmt = select(func.count()).select_from(model)
            counts[name] = int(await session.scalar(stmt if jid is None else stmt.where(column == jid)) or 0)
        return counts

    return on_database(database_url, count)  # type: ignore[no-any-return]


def item_statuses(database_url: str, job_id: str) -> dict[str, int]:
    async def read(session: Any) -> dict[str, int]:
        rows = await session.execute(
            select(Item.status, func.count()).where(Item.job_id == uuid.UUID(job_id)).group_by(Item.status)
        )
        return {status: int(n) for status, n in rows.all()}

    return on_database(database_url, read)  # type: ignore[no-any-return]


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in records)


def upload(api: httpx.Client, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    data = {"teacher": "tiny", "max_tokens": "1", "top_logprobs": "0"}
    files = {"file": ("p.jsonl", body, "application/x-ndjson")}
    return api.post("/v1/jobs/upload", data=data, files=files, headers=headers)


def submit(api: httpx.Client, count: int, max_tokens: int = 1, prefix: str = "def f") -> dict[str, Any]:
    prompts = [{"prompt": f"{prefix}{i}(x):\n"} for i in range(count)]
    body = {"teacher": "tiny", "params": {"max_tokens": max_tokens, "top_logprobs": 2}, "prompts": prompts}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_bad_line_late_in_a_multi_chunk_upload_leaves_no_job_and_no_items(giant: Giant, api: httpx.Client) -> None:
    """Line 437 of 500 is bad: by then eight chunks are stored; the 422 names the line and, when it is
    answered, the job and every item stored for it are gone, and its Idempotency-Key is free again."""
    before = row_counts(giant.database_url)
    records: list[dict[str, Any]] = [{"prompt": f"def g{i}():", "custom_id": f"g{i}"} for i in range(500)]
    records[436] = {"prompt": "def late():", "custom_id": "g3"}  # repeats line 4's custom_id
    response = upload(api, jsonl(records), headers={"Idempotency-Key": "late-bad-line"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "file", "line", 437, "custom_id"] and "line 437" in detail[0]["msg"]
    assert row_counts(giant.database_url) == before
    listed = api.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
    assert all(j["status"] != "loading" for j in listed)
    records[436] = {"prompt": "def late():", "custom_id": "g436"}
    fixed = upload(api, jsonl(records), headers={"Idempotency-Key": "late-bad-line"})
    assert fixed.status_code == 201 and fixed.json()["counts"]["total"] == 500, fixed.text
    assert row_counts(giant.database_url, fixed.json()["id"])["items"] == 500
    assert api.delete(f"/v1/jobs/{fixed.json()['id']}").status_code == 204


def test_a_loading_job_is_listed_as_loading_and_never_claimed(giant: Giant, api: httpx.Client) -> None:
    """While an upload loads chunk by chunk, GET /v1/jobs shows it as loading with the items stored so far,
    none of them has been claimed, and its Idempotency-Key answers 409; once loaded it is queued with every
    item, and the key replays it."""
    count = 20_000  # 20 committed chunks: 4,000 (4 chunks) once loaded before the 20 ms poll saw it, in CI
    body = jsonl([{"prompt": f"x{i}"} for i in range(count)])
    key = {"Idempotency-Key": "loading"}
    responses: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: responses.append(upload(api, body, key)))
    seen: list[tuple[dict[str, Any], dict[str, int], int]] = []
    with giant.client() as poller:
        sender.start()
        while sender.is_alive():
            jobs = poller.get("/v1/jobs", params={"limit": 5}).json()["jobs"]
            loading = [j for j in jobs if j["status"] == "loading"]
            if loading:
                statuses = item_statuses(giant.database_url, loading[0]["id"])
                racing = upload(poller, body, key).status_code
                if poller.get(f"/v1/jobs/{loading[0]['id']}").json()["status"] == "loading":
                    seen.append((loading[0], statuses, racing))  # all three happened while it loaded
                    break
            time.sleep(0.02)
        sender.join()
    assert responses[0].status_code == 201, responses[0].text
    created = responses[0].json()
    assert seen, "the job was never seen loading"
    job, statuses, racing = seen[-1]
    assert job["id"] == created["id"] and 0 < job["counts"]["total"] < count
    assert set(statuses) == {"queued"}, f"items of a loading job were claimed: {statuses}"
    assert racing == 409, "a second request with the key of a loading job must wait for it"
    assert created["status"] in ("queued", "running") and created["counts"]["total"] == count
    replay = upload(api, body, key)
    assert replay.status_code == 200 and replay.json()["id"] == created["id"]
    assert api.delete(f"/v1/jobs/{created['id']}").status_code == 204


def test_cancel_of_a_job_larger_than_a_batch_finishes_in_the_background(giant: Giant, api: httpx.Client) -> None:
    """The cancel answers after one batch of queued items; the sweep cancels the rest, batch by batch,
    and the counts end right: nothing queued, every item done or cancelled, a result per done item."""
    job = submit(api, 400, max_tokens=16)
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["counts"]["cancelled"] <= BATCH_ROWS
    final = wait_done(api, job["id"], timeout=60)
    counts = final["counts"]
    assert counts["done"] + counts["failed"] + counts["cancelled"] == 400 and counts["pending"] == 0
    assert counts["cancelled"] > BATCH_ROWS
    statuses = item_statuses(giant.database_url, job["id"])
    assert statuses.get("queued", 0) == statuses.get("leased", 0) == 0
    assert statuses.get("cancelled", 0) == counts["cancelled"] and statuses.get("done", 0) == counts["done"]
    assert row_counts(giant.database_url, job["id"])["results"] == counts["done"]


def test_retry_of_more_failed_items_than_a_batch_finishes_in_the_background(giant: Giant, api: httpx.Client) -> None:
    """150 items made failed in the database: the retry answers with one batch re-queued, the sweep
    re-queues the rest, and the job completes with every item done once."""
    job = wait_done(api, submit(api, 160, prefix="def retried")["id"])
    jid = uuid.UUID(job["id"])

    async def fail_items(session: Any) -> None:
        ids = select(Item.id).where(Item.job_id == jid).order_by(Item.id).limit(150).scalar_subquery()
        await session.execute(update(Item).where(Item.id.in_(ids)).values(status="failed", error="made to fail"))
        await session.execute(
            update(Job).where(Job.id == jid).values(done_items=10, failed_items=150, status="completed")
        )

    on_database(giant.database_url, fail_items)
    retried = api.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 200, retried.text
    counts = retried.json()["counts"]
    assert retried.json()["status"] == "running" and counts["failed"] == 150 - BATCH_ROWS, counts
    final = wait_done(api, job["id"], timeout=60)
    assert final["status"] == "completed"
    assert final["counts"] == {"total": 160, "done": 160, "failed": 0, "cancelled": 0, "pending": 0}
    assert item_statuses(giant.database_url, job["id"]) == {"done": 160}
    assert row_counts(giant.database_url, job["id"])["results"] == 160


def test_delete_is_404_for_another_project_and_purges_in_the_background(giant: Giant, api: httpx.Client) -> None:
    """Another project's delete is a 404 and changes nothing; the owner's delete makes the job 404 at once
    and purges every row of it, a running job included, while another job runs to completion."""
    finished = wait_done(api, submit(api, 120, prefix="def kept")["id"])
    assert row_counts(giant.database_url, finished["id"])["results"] == 120
    with giant.client(giant.other_key) as other:
        assert other.delete(f"/v1/jobs/{finished['id']}").status_code == 404
        assert other.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert api.get(f"/v1/jobs/{finished['id']}").json()["status"] == "completed"
    assert api.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404

    running = submit(api, 400, max_tokens=16, prefix="def dropped")
    for job in (finished, running):
        assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert api.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert api.get(f"/v1/jobs/{job['id']}/records").status_code == 404
        assert api.delete(f"/v1/jobs/{job['id']}").status_code == 404
    listed = {j["id"] for j in api.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}
    assert not listed & {finished["id"], running["id"]}
    meanwhile = submit(api, 40, prefix="def meanwhile")
    empty = {"jobs": 0, "items": 0, "results": 0, "progress": 0}
    for job in (finished, running):
        wait_for(lambda job=job: row_counts(giant.database_url, job["id"]) == empty, what=f"purge of {job['id']}")
    assert wait_done(api, meanwhile["id"])["counts"]["done"] == 40


def test_retention_purges_old_finished_jobs_only(giant: Giant, api: httpx.Client) -> None:
    """With retention_days = 1: a job finished two days ago is purged; one finished now, and a running one
    whose finished_at is old (say, retried), stay."""
    old, recent, running = (wait_done(api, submit(api, 60, prefix=f"def {name}")["id"]) for name in "orr")
    long_ago = utcnow() - timedelta(days=2)

    async def age(session: Any) -> None:
        await session.execute(update(Job).where(Job.id == uuid.UUID(old["id"])).values(finished_at=long_ago))
        await session.execute(
            update(Job).where(Job.id == uuid.UUID(running["id"])).values(finished_at=long_ago, status="running")
        )

    on_database(giant.database_url, age)
    empty = {"jobs": 0, "items": 0, "results": 0, "progress": 0}
    wait_for(lambda: row_counts(giant.database_url, old["id"]) == empty, what="purge of the old job")
    assert api.get(f"/v1/jobs/{old['id']}").status_code == 404
    for job in (recent, running):
        assert api.get(f"/v1/jobs/{job['id']}").status_code == 200
        assert row_counts(giant.database_url, job["id"])["results"] == 60
