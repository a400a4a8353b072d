"""All SQL of the records domain: keyset pages of results in submission order, bounded in rows and bytes."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Integer, Row, Text, cast, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from app.exporters.rows import BYTES_PER_PROMPT_TOKEN, BYTES_PER_TOPK_SLOT
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
    Result.answer_start,
)


class byte_length(FunctionElement[int]):
    """The stored size in bytes of a text or blob value (Postgres reads it without detoasting the value)."""

    type = Integer()
    inherit_cache = True


@compiles(byte_length)
def _byte_length_default(element: byte_length, compiler: SQLCompiler, **kw: Any) -> str:
    return f"octet_length({compiler.process(element.clauses, **kw)})"


@compiles(byte_length, "sqlite")
def _byte_length_sqlite(element: byte_length, compiler: SQLCompiler, **kw: Any) -> str:
    return f"length(CAST({compiler.process(element.clauses, **kw)} AS BLOB))"


def _size(column: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[int]:
    return func.coalesce(byte_length(column), 0)


# The decoded size of a result and its prompt, from what the database stores: the same estimate as
# app.exporters.rows.row_bytes, so a page is sized before its rows are fetched.
RESULT_BYTES = (
    Result.num_tokens * (Result.k + 1) * BYTES_PER_TOPK_SLOT
    + Result.prompt_tokens * BYTES_PER_PROMPT_TOKEN
    + _size(Result.text)
    + _size(Item.prompt)
    + _size(cast(Item.messages, Text))
    + _size(cast(Item.meta, Text))
)


def _after(after: tuple[int, int] | None) -> list[ColumnElement[bool]]:
    if after is None:
        return []
    return [tuple_(Result.item_id, Result.sample_index) > tuple_(after[0], after[1])]


async def page_extent(
    session: AsyncSession, job_id: uuid.UUID, *, after: tuple[int, int] | None, limit: int, max_bytes: int
) -> tuple[int, bool]:
    """How many of the next results (at most `limit`, at least one) fit in `max_bytes`, and whether more
    results follow them. Reads keys and sizes only."""
    stmt = (
        select(RESULT_BYTES)
        .join(Item, Item.id == Result.item_id)
        .where(Result.job_id == job_id, *_after(after))
        .order_by(Result.item_id, Result.sample_index)
        .limit(limit + 1)
    )
    sizes = list((await session.scalars(stmt)).all())
    taken, total = 0, 0
    for size in sizes[:limit]:
        if taken and total + size > max_bytes:
            break
        taken += 1
        total += size
    return taken, taken < len(sizes)


async def result_page(
    session: AsyncSession, job_id: uuid.UUID, *, after: tuple[int, int] | None, limit: int
) -> list[Row[Any]]:
    """Up to `limit` results after (item_id, sample_index), ordered as submitted."""
    stmt = (
        select(*RESULT_COLUMNS)
        .join(Item, Item.id == Result.item_id)
        .where(Result.job_id == job_id, *_after(after))
        .order_by(Result.item_id, Result.sample_index)
        .limit(limit)
    )
    return list((await session.execute(stmt)).all())


async def bounded_result_page(
    session: AsyncSession, job_id: uuid.UUID, *, after: tuple[int, int] | None, limit: int, max_bytes: int
) -> tuple[list[Row[Any]], bool]:
    """The next results after (item_id, sample_index): at most `limit`, within `max_bytes` by their stored
    sizes (one result even if it alone is larger), and whether more follow. Results past the bound are
    never fetched."""
    count, more = await page_extent(session, job_id, after=after, limit=limit, max_bytes=max_bytes)
    if count == 0:
        return [], False
    return await result_page(session, job_id, after=after, limit=count), more
