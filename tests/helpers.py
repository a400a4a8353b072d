"""Small helpers the API tests share: submit, wait, page through records."""

from __future__ import annotations

import time
from typing import Any

import httpx

FINAL = {"completed", "failed", "cancelled"}


def submit(api: httpx.Client, prompts: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    response = api.post("/v1/jobs", json={"teacher": "tiny", "params": params, "prompts": prompts})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_done(api: httpx.Client, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINAL and job["counts"]["pending"] == 0:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def all_records(api: httpx.Client, job_id: str, limit: int = 7) -> list[dict[str, Any]]:
    """Every record, through the cursor (a small page size exercises paging)."""
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = api.get(f"/v1/jobs/{job_id}/records", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        records.extend(body["records"])
        cursor = body["next_cursor"]
        if not cursor:
            return records


def job_count(api: httpx.Client) -> int:
    count, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        body = api.get("/v1/jobs", params=params).json()
        count += len(body["jobs"])
        cursor = body["next_cursor"]
        if not cursor:
            return count


def result_stats(database_url: str, job_id: str) -> dict[str, int]:
    """Counts straight from the database: results, items by status, most attempts. (A result stored twice
    cannot be counted: (job, item, sample) is the results table's primary key.)"""
    import asyncio
    import uuid

    from sqlalchemy import func, select

    from app.database import Database
    from app.models import Item, Result

    async def read() -> dict[str, int]:
        db = Database(database_url)
        try:
            async with db.transaction(readonly=True) as s:
                jid = uuid.UUID(job_id)
                results = await s.scalar(select(func.count()).select_from(Result).where(Result.job_id == jid))
                statuses: dict[str, int] = dict(
                    (
                        await s.execute(
                            select(Item.status, func.count()).where(Item.job_id == jid).group_by(Item.status)
                        )
                    ).all()
                )
                attempts = await s.scalar(select(func.max(Item.attempts)).where(Item.job_id == jid))
        finally:
            await db.dispose()
        return {
            "results": int(results or 0),
            "max_attempts": int(attempts or 0),
            **{f"items_{k}": int(v) for k, v in statuses.items()},
        }

    return asyncio.run(read())
