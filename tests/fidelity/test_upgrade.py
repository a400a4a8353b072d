"""Rows written before codec v3 and the fidelity column (schema 0007, codecs 1 and 2) read back the same
after the upgrade to head, through the records API's path and the fidelity report, on both databases."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import Connection, insert, select

from app.codecs.topk import CODECS, TopKArrays
from app.database import Database, alembic_config
from app.fidelity.service import fidelity_report
from app.models import Item, Job, Project, Result, utcnow
from app.records.service import record_page


def _migrate(connection: Connection, url: str, revision: str) -> None:
    config = alembic_config(url)
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _arrays(seed: int) -> TopKArrays:
    rng = np.random.default_rng(seed)
    t, k = 6, 3
    lps = -np.sort(rng.exponential(2.0, (t, k)), axis=1).astype(np.float32)
    lps[2, 2] = -np.inf
    ids = rng.integers(0, 50_000, (t, k), dtype=np.int32)
    ids[2, 2] = -1
    return TopKArrays(rng.integers(0, 50_000, t, dtype=np.int32), -rng.random(t, dtype=np.float32), ids, lps)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_old_rows_read_back_after_the_upgrade(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite+aiosqlite:///{tmp_path}/u.db"
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_migrate, db.url.render_as_string(hide_password=False), "0007")
        project, job_id = uuid.uuid4(), uuid.uuid4()
        originals = {1: _arrays(1), 2: _arrays(2)}
        async with db.transaction() as s:
            await s.execute(insert(Project.__table__).values(id=project, name="old", created_at=utcnow()))
            await s.execute(
                insert(Job.__table__).values(
                    id=job_id, project_id=project, teacher="tiny", kind="generate", status="completed",
                    params={"max_tokens": 6, "top_logprobs": 3}, top_logprobs=3, num_samples=1, teacher_info={},
                    total_items=2, done_items=2, failed_items=0, cancelled_items=0, tokens_generated=12,
                    priority=0, created_at=utcnow(),
                )
            )  # fmt: skip
            for seq, (version, arrays) in enumerate(originals.items()):
                item = await s.scalar(
                    insert(Item.__table__)
                    .values(job_id=job_id, seq=seq, teacher="tiny", prompt=f"p{seq}", status="done", attempts=1)
                    .returning(Item.__table__.c.id)
                )
                packed = CODECS[version].encode(arrays)
                await s.execute(
                    insert(Result.__table__).values(
                        job_id=job_id, item_id=item, sample_index=0, text="t", finish_reason="length",
                        num_tokens=packed.num_tokens, prompt_tokens=0, codec=version, k=packed.k,
                        token_ids=packed.token_ids, token_logprobs=packed.token_logprobs,
                        topk_ids=packed.topk_ids, topk_logprobs=packed.topk_logprobs,
                    )
                )  # fmt: skip
        await db.upgrade_schema()
        async with db.transaction(readonly=True) as s:
            job = (await s.execute(select(Job).where(Job.id == job_id))).scalar_one()
            page = await record_page(s, job, cursor=None, limit=10, max_bytes=1 << 20)
            report = await fidelity_report(s, job)
        assert [r.seq for r in page.records] == [0, 1]
        for record, (version, arrays) in zip(page.records, originals.items(), strict=True):
            lp16 = arrays.topk_logprobs.astype(np.float16).astype(np.float32)
            assert record.token_ids == arrays.token_ids.tolist()
            assert record.top_logprobs_ids == arrays.topk_ids.tolist()
            want = [[None if math.isinf(v) else v for v in row] for row in lp16.tolist()]
            assert record.top_logprobs == want, version
        assert report.codec == 2  # a job from before params.codec: version 2, as its rows
        assert report.stored.codec_versions == {"1": 1, "2": 1} and report.stored.tokens == 12
        assert report.sample_rows == 0 and report.stored.fidelity is None  # no teacher values were kept
    finally:
        await db.dispose()
