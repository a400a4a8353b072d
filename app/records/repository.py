"""All SQL of the records domain: keyset pages of results in submission order."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Item, Result

RESULT_COLUMNS = (
    Result.item_id,
    Item.seq,
    Item.custom_id,
    Result.sample_index,
    Item.prompt,
    Item.messages,
    Item.meta.label("metadata"),
    Result.text,
    Result.finish_reason,
    Item.prompt_token_ids,
    Result.num_tokens,
    Result.prompt_tokens,
    Result.codec,
    Result.k,
    Result.token_ids,
    Result.token_logprobs,
    Result.topk_ids,
    Result.topk_logprobs,
)


async def result_page(
    session: AsyncSession, job_id: uuid.UUID, *, after: tuple[int, int] | None, limit: int
) -> list[Row[Any]]:
    """Up to `limit` results after (item_id, sample_index), ordered as submitted."""
    stmt = (
        select(*RESULT_COLUMNS)
        .join(Item, Item.id == Result.item_id)
        .where(Result.job_id == job_id)
        .order_by(Result.item_id, Result.sample_index)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(Result.item_id, Result.sample_index) > tuple_(after[0], after[1]))
    return list((await session.execute(stmt)).all())
