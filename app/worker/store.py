"""Storing a batch's outcomes: rows are built and encoded before the transaction; the transaction only
writes them, for the items this worker still holds the lease on, and updates the jobs' counters."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from app.codecs.topk import IdArray, encode_topk, pack_ids, reference_blob
from app.jobs.repository import PROGRESS_BUCKET_S
from app.models import utcnow
from app.worker import repository
from app.worker.schemas import ItemOutcome

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 4000
PACKED_COLUMNS = ("token_ids", "token_logprobs", "topk_ids", "topk_logprobs")


@dataclass(slots=True)
class ItemRows:
    """One item's final row, its result rows and what it adds to its job's counters."""

    item_id: int
    job_id: uuid.UUID
    finished: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.finished["status"] == "failed")


def build_rows(outcomes: list[ItemOutcome], sample_items: int = 0) -> list[ItemRows]:
    """Encode every completion once, outside any transaction (so a retried transaction does not redo it).
    Items of seq below `sample_items` also keep the teacher's logprobs exactly, for the fidelity report."""
    built: list[ItemRows] = []
    for outcome in outcomes:
        item = outcome.item
        if outcome.error is not None:
            error = outcome.error[:MAX_ERROR_CHARS]
            built.append(ItemRows(item.id, item.job_id, finished_row(item.id, "failed", error=error)))
            continue
        prompt_ids = outcome.completions[0].prompt_token_ids if outcome.completions else None
        rows = ItemRows(item.id, item.job_id, finished_row(item.id, "done", prompt_token_ids=prompt_ids))
        for completion in outcome.completions:
            packed = encode_topk(completion.arrays, outcome.codec)
            answer_start = find_answer_start(completion.arrays.token_ids, outcome.reasoning_end_token_id)
            rows.tokens += packed.num_tokens
            rows.results.append(
                {
                    "job_id": item.job_id,
                    "item_id": item.id,
                    "sample_index": completion.sample_index,
                    "text": completion.text,
                    "finish_reason": completion.finish_reason,
                    "num_tokens": packed.num_tokens,
                    "prompt_tokens": len(completion.prompt_token_ids or ()),
                    "codec": packed.codec,
                    "k": packed.k,
                    "token_ids": packed.token_ids,
                    "token_logprobs": packed.token_logprobs,
                    "topk_ids": packed.topk_ids,
                    "topk_logprobs": packed.topk_logprobs,
                    "reference_logprobs": reference_blob(completion.arrays) if item.seq < sample_items else None,
                    "answer_start": answer_start,
                }
            )
        built.append(rows)
    return built


def find_answer_start(token_ids: IdArray, end_token_id: int | None) -> int | None:
    """The index of the first answer token: just after the first end-of-reasoning token (the length when the
    completion ends there). None when the teacher has no such token or the completion holds none."""
    if end_token_id is None:
        return None
    hits = np.flatnonzero(np.asarray(token_ids) == end_token_id)
    return int(hits[0]) + 1 if hits.size else None


@dataclass(frozen=True, slots=True)
class Stored:
    """What one store wrote: items dropped as stale, items done and failed, tokens and packed bytes stored."""

    stale: int = 0
    done: int = 0
    failed: int = 0
    tokens: int = 0
    bytes: int = 0


async def write_rows(session: AsyncSession, owner: str, built: list[ItemRows]) -> Stored:
    """One transaction's writes: results in, items done or failed, job counters; only for items `owner`
    still holds (a stale worker writes nothing)."""
    owned = await repository.owned_items(session, owner=owner, item_ids=[b.item_id for b in built])
    done: dict[uuid.UUID, int] = defaultdict(int)
    failed: dict[uuid.UUID, int] = defaultdict(int)
    tokens: dict[uuid.UUID, int] = defaultdict(int)
    results: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    for rows in built:
        if rows.item_id not in owned:
            continue
        finished.append(rows.finished)
        if rows.failed:
            failed[rows.job_id] += 1
            continue
        done[rows.job_id] += 1
        tokens[rows.job_id] += rows.tokens
        results.extend(rows.results)
    await repository.insert_results(session, results)
    await repository.finish_items(session, finished)
    await repository.add_job_progress(
        session,
        done=done,
        failed=failed,
        tokens=tokens,
        bucket=int(time.time()) // PROGRESS_BUCKET_S,
        now=utcnow(),
    )
    stale = len(built) - len(owned)
    if stale:
        log.warning("dropped %d results whose lease this worker no longer holds", stale)
    packed = sum(len(r[c]) for r in results for c in PACKED_COLUMNS)
    return Stored(stale, sum(done.values()), sum(failed.values()), sum(tokens.values()), packed)


def finished_row(
    item_id: int, status: str, *, error: str | None = None, prompt_token_ids: list[int] | None = None
) -> dict[str, Any]:
    return {
        "id": item_id,
        "status": status,
        "error": error,
        "lease_owner": None,
        "lease_expires_at": None,
        "prompt_token_ids": pack_ids(prompt_token_ids) if prompt_token_ids is not None else None,
    }
