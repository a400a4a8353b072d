"""TeacherCalls: one batch's requests to a replica and the reading of its answers, through one guard.

Whatever goes wrong with a call ends as an outcome per item, never as an escaped exception: a refusal of
the replica as a whole gives the items back (no attempt), transient failures leave them to retry, a 400
fails them with the teacher's message (a list is split to find the prompt at fault), and an answer that
cannot be read (malformed, too large, or anything unexpected while decoding it) is a counted attempt with
its error kept; a list whose answer is unreadable is sent again one prompt at a time, once, so one poison
prompt fails alone and the rest of its batch completes."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from app.observability.metrics import PARSE_SECONDS
from app.settings import TeacherConfig
from app.teachers.client import TeacherError
from app.teachers.parsing import (
    ParsedCompletion,
    TeacherResponseError,
    parse_chat,
    parse_completions,
    parse_prompt_logprobs,
)
from app.teachers.requests import (
    answer_byte_limit,
    chat_body,
    chat_top_logprobs,
    completions_body,
    item_seed,
    logprob_entries_per_prompt,
    score_body,
)
from app.teachers.service import TeacherRegistry
from app.worker.load import Hold, ReplicaLoad
from app.worker.schemas import ClaimedItem, ItemOutcome, JobSpec

if TYPE_CHECKING:
    from app.worker.service import Worker

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
MAX_REASON_CHARS = 1000


def describe(exc: BaseException) -> str:
    """An error as text fit to store and show: its type when the message does not say, valid UTF-8."""
    text = str(exc) if isinstance(exc, (TeacherError, TeacherResponseError)) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_REASON_CHARS].encode("utf-8", "replace").decode("utf-8")


class TeacherCalls:
    """The calls of one teacher's batches (shared by all its replicas)."""

    def __init__(self, worker: Worker, config: TeacherConfig, registry: TeacherRegistry) -> None:
        self.worker = worker
        self.config = config
        self.registry = registry

    async def run(self, hold: Hold, spec: JobSpec, items: list[ClaimedItem]) -> list[ItemOutcome]:
        """Every item's outcome: one request for the raw prompts, one per conversation or scored pair."""
        units: list[Awaitable[list[ItemOutcome]]] = []
        if spec.kind == "score":
            units.extend(self._run_score(hold, spec, item) for item in items)
        else:
            raw = [i for i in items if i.prompt is not None]
            chat = [i for i in items if i.messages is not None]
            if raw:
                units.append(self._run_completions(hold, spec, raw))
            units.extend(self._run_chat(hold, spec, item) for item in chat)
        outcomes = [o for unit in await asyncio.gather(*units) for o in unit]
        for outcome in outcomes:
            outcome.reasoning_end_token_id = spec.reasoning_end_token_id
            outcome.codec = spec.codec
        return outcomes

    async def _guarded(
        self,
        hold: Hold,
        items: list[ClaimedItem],
        n: int,
        fetch: Callable[[], Awaitable[Any]],
        decode: Callable[[Any], list[ItemOutcome]],
        *,
        split: Callable[[], Awaitable[list[ItemOutcome]]] | None = None,
        alone: Callable[[ClaimedItem], Awaitable[list[ItemOutcome]]] | None = None,
    ) -> list[ItemOutcome]:
        """One teacher call for these items: `fetch` the answer, give the replica its room back, `decode` it
        off the event loop; every failure becomes outcomes (see the module's docstring). `split` halves the
        list on a 400; `alone` sends one item by itself when the list's answer is unreadable."""
        load = hold.load
        splits = split is not None and len(items) > 1
        try:
            try:
                raw = await fetch()
            except TeacherError as exc:
                if exc.teacher_fault or exc.transient or not splits:
                    hold.give_back(len(items) * n)  # a split's halves give back their own shares
                raise
            hold.give_back(len(items) * n)
            started = time.perf_counter()
            outcomes = await self.worker.off_loop(decode, raw)
            PARSE_SECONDS.observe(time.perf_counter() - started)
        except TeacherError as exc:
            if exc.teacher_fault:
                self.registry.report_fault(self.config.name, load.replica, exc)
                return [ItemOutcome(item, teacher_fault=True) for item in items]
            if exc.transient:
                self.note_failure(load, exc)
                return [ItemOutcome(item, reason=describe(exc), transient=True) for item in items]
            if split is not None and splits:
                return await split()
            return [ItemOutcome(item, error=exc.message) for item in items]
        except Exception as exc:  # any unreadable answer is the items' problem, never the worker's
            reason = describe(exc)
            if isinstance(exc, TeacherResponseError):
                log.warning("teacher %s: unreadable answer for %d items: %s", self.config.name, len(items), reason)
            else:
                log.exception("teacher %s: reading an answer for %d items failed", self.config.name, len(items))
            if alone is not None and len(items) > 1:
                return await self._isolate(items, reason, alone)
            return [ItemOutcome(item, reason=reason) for item in items]
        load.failures = 0
        load.down_since = None  # an outage ends with the first answer; the next one is timed afresh
        return outcomes

    async def _isolate(
        self, items: list[ClaimedItem], reason: str, alone: Callable[[ClaimedItem], Awaitable[list[ItemOutcome]]]
    ) -> list[ItemOutcome]:
        """Each item of a list whose answer was unreadable, sent again by itself (one more attempt each),
        so the prompt at fault fails alone; an item already at its last attempt is not sent again."""
        limit = self.worker.settings.worker_max_attempts
        spent = [ItemOutcome(item, reason=reason) for item in items if item.attempts >= limit]
        again = [dataclasses.replace(item, attempts=item.attempts + 1) for item in items if item.attempts < limit]
        parts = await asyncio.gather(*(alone(item) for item in again))
        resent = [outcome for part in parts for outcome in part]
        for outcome in resent:
            outcome.resent = True
        return spent + resent

    async def _run_completions(self, hold: Hold, spec: JobSpec, items: list[ClaimedItem]) -> list[ItemOutcome]:
        """One request for the whole list; a 400 splits it in halves to find the prompt at fault. A seeded
        job sends one request per prompt (concurrently), each with its own derived seed."""
        job_seed = spec.params.get("seed")
        if job_seed is not None and len(items) > 1:
            parts = await asyncio.gather(*(self._run_completions(hold, spec, [item]) for item in items))
            return [outcome for part in parts for outcome in part]
        seed = None if job_seed is None else item_seed(job_seed, items[0].seq)
        body = completions_body(self.config.model, spec, [i.prompt or "" for i in items], seed=seed)

        def decode(raw: bytes) -> list[ItemOutcome]:
            outcomes = [ItemOutcome(item) for item in items]
            for completion in parse_completions(raw, num_prompts=len(items), n=spec.n, k=spec.k):
                outcomes[completion.prompt_index].completions.append(completion)
            return outcomes

        async def split() -> list[ItemOutcome]:
            mid = len(items) // 2
            halves = await asyncio.gather(
                self._run_completions(hold, spec, items[:mid]), self._run_completions(hold, spec, items[mid:])
            )
            return halves[0] + halves[1]

        async def alone(item: ClaimedItem) -> list[ItemOutcome]:
            return await self._run_completions(hold, spec, [item])

        max_bytes = answer_byte_limit(len(items) * logprob_entries_per_prompt(spec))
        fetch = functools.partial(hold.load.replica.client.completions, body, max_bytes=max_bytes)
        return await self._guarded(hold, items, spec.n, fetch, decode, split=split, alone=alone)

    async def _run_chat(self, hold: Hold, spec: JobSpec, item: ClaimedItem) -> list[ItemOutcome]:
        job_seed = spec.params.get("seed")
        seed = None if job_seed is None else item_seed(job_seed, item.seq)
        body = chat_body(self.config.model, spec, item.messages or [], seed=seed)

        def decode(raw: bytes) -> list[ItemOutcome]:
            parsed = parse_chat(raw, n=spec.n, k=spec.k, requested_top=chat_top_logprobs(spec))
            return [ItemOutcome(item, completions=parsed)]

        max_bytes = answer_byte_limit(logprob_entries_per_prompt(spec))
        fetch = functools.partial(hold.load.replica.client.chat_completions, body, max_bytes=max_bytes)
        return await self._guarded(hold, [item], spec.n, fetch, decode)

    async def _run_score(self, hold: Hold, spec: JobSpec, item: ClaimedItem) -> list[ItemOutcome]:
        """Teacher forcing: the prompt and the given response as one token sequence, max_tokens 1,
        prompt_logprobs k; the top-k at each response position is kept."""
        client = hold.load.replica.client

        async def fetch() -> tuple[bytes | None, list[int], list[int]]:
            prompt_ids, response_ids = await client.score_tokens(item.prompt, item.response, item.messages)
            if not response_ids:
                return None, prompt_ids, response_ids
            tokens = prompt_ids + response_ids
            max_bytes = answer_byte_limit(len(tokens) * (spec.k + 2))
            raw = await client.completions(score_body(self.config.model, spec, tokens), max_bytes=max_bytes)
            return raw, prompt_ids, response_ids

        def decode(fetched: tuple[bytes | None, list[int], list[int]]) -> list[ItemOutcome]:
            raw, prompt_ids, response_ids = fetched
            if raw is None:
                return [ItemOutcome(item, error="the response is empty once tokenized")]
            arrays = parse_prompt_logprobs(raw, prompt_len=len(prompt_ids), response_ids=response_ids, k=spec.k)
            text = item.response if item.response is not None else str((item.messages or [{}])[-1].get("content"))
            return [ItemOutcome(item, completions=[ParsedCompletion(0, 0, text, "scored", arrays, prompt_ids)])]

        return await self._guarded(hold, [item], spec.n, fetch, decode)

    def note_failure(self, load: ReplicaLoad, exc: Exception) -> None:
        load.failures += 1
        load.controller.on_error()
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** min(load.failures, 8)) * (0.5 + random.random())
        load.backoff_until = max(load.backoff_until, time.monotonic() + delay)
        log.warning("teacher %s replica %s: %s; backing off %.1fs", self.config.name, load.replica.url, exc, delay)
