"""All SQL of the fidelity report: the job's sampled rows and the sizes of what it stores."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Result
from app.records.repository import byte_length

SAMPLE_COLUMNS = (
    Result.num_tokens,
    Result.k,
    Result.codec,
    Result.token_ids,
    Result.token_logprobs,
    Result.topk_ids,
    Result.topk_logprobs,
    Result.reference_logprobs,
)
BLOB_BYTES = (
    byte_length(Result.token_ids)
    + byte_length(Result.token_logprobs)
    + byte_length(Result.topk_ids)
    + byte_length(Result.topk_logprobs)
    + func.coalesce(byte_length(Result.text), 0)
)


async def sample_rows(session: AsyncSession, job_id: uuid.UUID, limit: int) -> Sequence[Any]:
    """Up to `limit` of the job's rows that kept the teacher's values, in submission order."""
    query = (
        select(*SAMPLE_COLUMNS)
        .where(Result.job_id == job_id, Result.reference_logprobs.is_not(None))
        .order_by(Result.item_id, Result.sample_index)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def stored_totals(session: AsyncSession, job_id: uuid.UUID) -> list[tuple[int, int, int, int]]:
    """Per stored codec version: rows, tokens and bytes of blobs and text."""
    query = (
        select(Result.codec, func.count(), func.sum(Result.num_tokens), func.sum(BLOB_BYTES))
        .where(Result.job_id == job_id)
        .group_by(Result.codec)
    )
    return [(int(c), int(n), int(t or 0), int(b or 0)) for c, n, t, b in (await session.execute(query)).all()]
