"""A batch's output and error files, rendered line by line from the job's stored items and results.

Nothing is materialized: `GET /v1/files/{id}/content` streams lines straight from the database, a page of
items per read-only transaction. Output bodies take the endpoint's own shape, with logprobs built from the
stored top-k (tokens as "token_id:N", vLLM's form with return_tokens_as_token_ids)."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import repository
from app.codecs.topk import MISSING_ID, PackedTopK, TopKArrays, codec_for
from app.database import Database

PAGE_ITEMS = 256
OUTPUT_STATUSES = ("done",)
ERROR_STATUSES = ("failed", "cancelled")


def token(token_id: int) -> str:
    return f"token_id:{token_id}"


def _arrays(row: Row[Any]) -> TopKArrays:
    packed = PackedTopK(
        codec=row.codec,
        num_tokens=row.num_tokens,
        k=row.k,
        token_ids=row.token_ids,
        token_logprobs=row.token_logprobs,
        topk_ids=row.topk_ids,
        topk_logprobs=row.topk_logprobs,
    )
    return codec_for(row.codec).decode(packed)


class _TokenNames:
    """ "token_id:N" for every id up to the largest seen so far, as one object array (vocabularies are a few
    hundred thousand ids; past CACHE_IDS the names are made per call). Grown by swapping in a new array, so
    the rendering threads never see a half-built one."""

    def __init__(self) -> None:
        self.names = np.array([], dtype=object)

    def of(self, ids: Any) -> list[Any]:
        """The names of an array of ids, as nested lists of its shape."""
        if ids.size == 0:
            return [[] for _ in range(ids.shape[0])] if ids.ndim == 2 else []
        top = int(ids.max())
        if top >= CACHE_IDS:
            distinct, where = np.unique(ids, return_inverse=True)
            made = np.array([token(i) for i in distinct.tolist()], dtype=object)
            spread: list[Any] = made[where.reshape(ids.shape)].tolist()
            return spread
        names = self.names
        if top >= len(names):
            names = np.array([token(i) for i in range(max(top + 1, 2 * len(names)))], dtype=object)
            self.names = names
        result: list[Any] = names[ids].tolist()  # MISSING_ID (-1) picks the last name: such slots are dropped
        return result


CACHE_IDS = 1 << 20
_token_names = _TokenNames()


def _lists(arrays: TopKArrays, k: int) -> tuple[list[str], list[float], list[list[str]], list[list[float]]]:
    """Tokens, their logprobs, and each position's first k candidate names and logprobs as Python values
    (converted by numpy in bulk: float16 to float is exact, so the values are the stored ones); slots the
    teacher did not report are left out."""
    ids = arrays.topk_ids[:, :k]
    names = _token_names.of(ids)
    values = arrays.topk_logprobs[:, :k].astype(np.float64).tolist()
    missing = ids == MISSING_ID
    if missing.any():
        for row in np.flatnonzero(missing.any(axis=1)).tolist():
            keep = (~missing[row]).tolist()
            names[row] = [n for n, kept in zip(names[row], keep, strict=True) if kept]
            values[row] = [v for v, kept in zip(values[row], keep, strict=True) if kept]
    return _token_names.of(arrays.token_ids), arrays.token_logprobs.astype(np.float64).tolist(), names, values


def completions_logprobs(arrays: TopKArrays, k: int) -> dict[str, Any]:
    """/v1/completions' logprobs: tokens, token_logprobs, and per position a dict of the top k. There is
    no text_offset: with tokens as ids, vLLM's own offsets mean nothing either."""
    tokens, logprobs, names, values = _lists(arrays, k)
    tops = [dict(zip(n, v, strict=True)) for n, v in zip(names, values, strict=True)]
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": None}


def chat_logprobs(arrays: TopKArrays, k: int) -> dict[str, Any]:
    """/v1/chat/completions' logprobs: per position the token, its logprob and the top k as a list."""
    tokens, logprobs, names, values = _lists(arrays, k)
    return {
        "content": [
            {
                "token": t,
                "logprob": lp,
                "bytes": None,
                "top_logprobs": [{"token": c, "logprob": v, "bytes": None} for c, v in zip(n, vs, strict=True)],
            }
            for t, lp, n, vs in zip(tokens, logprobs, names, values, strict=True)
        ],
        "refusal": None,
    }


def response_body(row: Row[Any], *, chat: bool, model: str, created: int, logprobs: int | None) -> dict[str, Any]:
    """The endpoint's answer for one stored completion; logprobs only where the line asked (its own k)."""
    rendered = None
    if logprobs is not None:
        arrays = _arrays(row)
        rendered = chat_logprobs(arrays, logprobs) if chat else completions_logprobs(arrays, logprobs)
    choice: dict[str, Any] = {"index": 0, "finish_reason": row.finish_reason, "logprobs": rendered}
    if chat:
        choice["message"] = {"role": "assistant", "content": row.text}
    else:
        choice["text"] = row.text
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{row.id}",
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.num_tokens,
            "total_tokens": row.prompt_tokens + row.num_tokens,
        },
    }


def error_line(row: Row[Any], unrun: str) -> dict[str, Any]:
    """A request that failed (the teacher's message) or never ran (`unrun`: batch_cancelled or
    batch_expired)."""
    line: dict[str, Any] = {"id": f"batch_req_{row.id}", "custom_id": row.custom_id, "response": None, "error": None}
    if row.status == "failed":
        error = {"message": row.error or "failed", "type": "invalid_request_error", "param": None, "code": None}
        line["response"] = {"status_code": 400, "request_id": f"req_{row.id}", "body": {"error": error}}
    else:
        why = "expired" if unrun == "batch_expired" else "was cancelled"
        line["error"] = {"code": unrun, "message": f"the batch {why} before this request ran"}
    return line


def _render(
    rows: list[Row[Any]], *, model: str, created: int, variant_logprobs: list[int | None], errors: bool, unrun: str
) -> bytes:
    """One page of lines as JSONL (decoding the top-k is CPU work: run off the event loop)."""
    chunk = bytearray()
    for row in rows:
        if errors:
            line = error_line(row, unrun)
        else:
            asked = variant_logprobs[row.variant or 0] if variant_logprobs else None
            body = response_body(row, chat=bool(row.chat), model=model, created=created, logprobs=asked)
            line = {
                "id": f"batch_req_{row.id}",
                "custom_id": row.custom_id,
                "response": {"status_code": 200, "request_id": f"req_{row.id}", "body": body},
                "error": None,
            }
        chunk += orjson.dumps(line)
        chunk += b"\n"
    return bytes(chunk)


async def _page(session: AsyncSession, *, job_id: uuid.UUID, statuses: tuple[str, ...], after: int) -> list[Row[Any]]:
    return await repository.output_page(session, job_id, statuses, after=after, limit=PAGE_ITEMS)


async def stream_lines(
    database: Database,
    job_id: uuid.UUID,
    *,
    model: str,
    created: int,
    variant_logprobs: list[int | None],
    errors: bool,
    unrun: str = "batch_cancelled",
) -> AsyncIterator[bytes]:
    """The output file (errors=False) or the error file, a page of items at a time."""
    statuses = ERROR_STATUSES if errors else OUTPUT_STATUSES
    after = -1
    while True:
        rows = await database.run(
            functools.partial(_page, job_id=job_id, statuses=statuses, after=after), readonly=True
        )
        if not rows:
            return
        yield await asyncio.to_thread(
            _render, rows, model=model, created=created, variant_logprobs=variant_logprobs, errors=errors, unrun=unrun
        )
        after = rows[-1].seq
        if len(rows) < PAGE_ITEMS:
            return
