"""Upkeep of the jobs' side tables: idempotency keys expire, old progress buckets go, on both databases."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs.repository import PROGRESS_BUCKET_S
from app.jobs.service import RATE_WINDOW_BUCKETS
from app.models import IdempotencyKey, JobProgress, utcnow
from tests.conftest import Service
from tests.helpers import submit, wait_done
from tests.maintained import eventually, in_database, maintained

__all__ = ["maintained"]  # the fixture, imported for this module


def test_an_expired_idempotency_key_makes_a_new_job(maintained: Service) -> None:
    body = {"teacher": "tiny", "params": {"max_tokens": 2, "top_logprobs": 1}, "prompts": [{"prompt": "x = "}]}
    old_key, fresh_key = f"old-{uuid.uuid4()}", f"fresh-{uuid.uuid4()}"
    with maintained.client() as api:
        first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": old_key})
        kept = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": fresh_key})
        assert first.status_code == kept.status_code == 201
        day_ago = utcnow() - timedelta(hours=25)

        async def age(session: AsyncSession) -> None:
            await session.execute(
                update(IdempotencyKey).where(IdempotencyKey.key == old_key).values(created_at=day_ago)
            )

        async def keys(session: AsyncSession) -> set[str]:
            return set((await session.execute(select(IdempotencyKey.key))).scalars())

        in_database(maintained.database_url, age)
        eventually(lambda: old_key not in in_database(maintained.database_url, keys))
        assert fresh_key in in_database(maintained.database_url, keys)

        again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": old_key})
        assert again.status_code == 201 and again.json()["id"] != first.json()["id"], again.text
        replayed = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": fresh_key})
        assert replayed.status_code == 200 and replayed.json()["id"] == kept.json()["id"]
        assert replayed.headers["idempotent-replayed"] == "true"


def test_old_progress_buckets_go_and_the_rate_stays(maintained: Service) -> None:
    """Buckets of an hour ago are deleted; those the tokens/s figure reads stay, so the figure (times its
    window) is the same before and after the purge."""
    with maintained.client() as api:
        job = wait_done(api, submit(api, [{"prompt": "y = "}], max_tokens=2, top_logprobs=1)["id"])
        jid = uuid.UUID(job["id"])
        while time.time() % PROGRESS_BUCKET_S > 1.0:  # start early in a bucket: the window stays put meanwhile
            time.sleep(0.1)
        now_bucket = int(time.time()) // PROGRESS_BUCKET_S
        old = [now_bucket - 360 + i for i in range(5)]
        recent = {now_bucket - 2: 3000, now_bucket: 600}

        async def seed(session: AsyncSession) -> None:
            await session.execute(delete(JobProgress).where(JobProgress.job_id == jid))
            rows = [{"job_id": jid, "bucket": b, "tokens": 999} for b in old]
            rows += [{"job_id": jid, "bucket": b, "tokens": t} for b, t in recent.items()]
            await session.execute(insert(JobProgress), rows)

        async def buckets(session: AsyncSession) -> dict[int, int]:
            stmt = select(JobProgress.bucket, JobProgress.tokens).where(JobProgress.job_id == jid)
            return dict((b, t) for b, t in (await session.execute(stmt)).all())

        def rate() -> float:
            # The job has finished: the figure divides the window's tokens by the (fixed) part of the window
            # it ran, so it stays put while the window does.
            return float(api.get(f"/v1/jobs/{jid}").json()["tokens_per_second"])

        in_database(maintained.database_url, seed)
        before = rate()
        eventually(lambda: in_database(maintained.database_url, buckets) == recent)
        after = rate()
        assert int(time.time()) // PROGRESS_BUCKET_S == now_bucket, "the test ran past its bucket"
        # 3,600 tokens in the window (the hour-old buckets' 999s are not read), divided by at most the window.
        window = RATE_WINDOW_BUCKETS * PROGRESS_BUCKET_S + PROGRESS_BUCKET_S
        assert before == after >= 3600 / window, (before, after)
