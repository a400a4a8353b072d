"""The worker: per teacher, keeps `max_inflight` claimed batches in flight and stores each result.

Each claimed batch is one unit of work: claim (one transaction), teacher requests, then one transaction
that stores the results and marks the items done, guarded by the lease so a stale worker writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.codecs.topk import encode_topk, pack_ids
from app.database import Database
from app.jobs.repository import PROGRESS_BUCKET_S
from app.models import utcnow
from app.settings import Settings, TeacherConfig
from app.teachers.client import TeacherClient, TeacherError
from app.teachers.parsing import (
    ParsedCompletion,
    TeacherResponseError,
    parse_chat,
    parse_completions,
    parse_prompt_logprobs,
)
from app.worker import repository
from app.worker.schemas import Claim, ClaimedItem, ItemOutcome, JobSpec

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def item_seed(job_seed: int, seq: int) -> int:
    """Each prompt's own seed, derived from the job's seed and the prompt's position.

    vLLM applies one request's seed to every prompt in it, and equal seeds draw nearly the same random
    numbers, so unrelated prompts would be sampled in lockstep. A derived seed per prompt keeps them
    independent and still reproducible."""
    digest = hashlib.sha256(f"{job_seed}:{seq}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def completions_body(model: str, spec: JobSpec, prompts: Sequence[str], *, seed: int | None = None) -> dict[str, Any]:
    """A /v1/completions request for a list of prompts, asking for k logprobs keyed by token id."""
    return {
        "model": model,
        "prompt": list(prompts),
        **_sampling(spec, seed),
        "logprobs": spec.k,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }


def score_body(model: str, spec: JobSpec, token_ids: list[int]) -> dict[str, Any]:
    """Teacher forcing through /v1/completions: the whole sequence as the prompt, one token generated."""
    return {
        "model": model,
        "prompt": token_ids,
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": spec.k,
        "return_token_ids": True,
    }


def chat_top_logprobs(spec: JobSpec) -> int:
    """Chat drops the k-th best when the sampled token is outside the top-k, so ask for k+1 when allowed."""
    if spec.k == 0:
        return 0
    if spec.max_logprobs is None or spec.k + 1 <= spec.max_logprobs:
        return spec.k + 1
    return spec.k


def chat_body(model: str, spec: JobSpec, messages: list[dict[str, Any]], *, seed: int | None = None) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        **_sampling(spec, seed),
        "logprobs": True,
        "top_logprobs": chat_top_logprobs(spec),
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }


def _sampling(spec: JobSpec, seed: int | None) -> dict[str, Any]:
    p = spec.params
    body: dict[str, Any] = {
        "max_tokens": p["max_tokens"],
        "temperature": p["temperature"],
        "top_p": p["top_p"],
        "n": spec.n,
    }
    if p.get("stop"):
        body["stop"] = p["stop"]
    if seed is not None:
        body["seed"] = seed
    return body


class TeacherDispatcher:
    """Claims batches for one teacher and keeps up to max_inflight of them in flight.

    Transient failures back the dispatcher off (exponential, with jitter). When the teacher's health check
    fails too, it is down: claiming stops until it answers again, and for up to the outage window the
    items that failed meanwhile get their attempt back, so an outage alone never fails a job.
    """

    def __init__(self, worker: Worker, config: TeacherConfig) -> None:
        self.worker = worker
        self.config = config
        self.client = TeacherClient(config)
        # A batch holds a teacher slot until the teacher has answered, and a held slot until it is stored:
        # the teacher gets its next batch while the last one is parsed and written, and no more than
        # 2 x max_inflight answers wait in memory should the database stall.
        self._slots = asyncio.Semaphore(config.max_inflight)
        self._held = asyncio.Semaphore(2 * config.max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._backoff_until = 0.0
        self._failures = 0
        self._down_since: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.worker.settings
        try:
            while not stop.is_set():
                if self._down_since is not None:
                    await self._wait_until_healthy(stop)
                    continue
                await self._held.acquire()
                await self._slots.acquire()
                slot = _Slot(self._slots, self._held)
                delay = self._backoff_until - time.monotonic()
                if stop.is_set() or delay > 0:
                    slot.release_all()
                    await _sleep_or_stop(stop, delay)
                    continue
                try:
                    claim = await self.worker.claim(self.config.name, self.config.batch_size)
                except Exception:
                    slot.release_all()
                    log.exception("claim failed; retrying")
                    await _sleep_or_stop(stop, settings.worker_poll_s * 4)
                    continue
                if not claim.items:
                    slot.release_all()
                    await _sleep_or_stop(stop, settings.worker_poll_s)
                    continue
                task = asyncio.create_task(self._process(claim, slot))
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._task_done, slot=slot))
        finally:
            await self._drain(settings.worker_shutdown_grace_s)
            await self.client.aclose()

    async def _drain(self, grace_s: float) -> None:
        """Let in-flight batches finish within the grace period; cancel the rest (their leases are released)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("shutdown: released %d batches still in flight after %.0fs", len(pending), grace_s)
            await asyncio.gather(*pending, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[None], *, slot: _Slot) -> None:
        self._tasks.discard(task)
        slot.release_all()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch failed", exc_info=task.exception())

    async def _process(self, claim: Claim, slot: _Slot) -> None:
        ids = [item.id for item in claim.items]
        self.worker.inflight.update(ids)
        try:
            by_job: dict[uuid.UUID, list[ClaimedItem]] = defaultdict(list)
            for item in claim.items:
                by_job[item.job_id].append(item)
            units: list[Coroutine[Any, Any, list[ItemOutcome]]] = []
            for job_id, items in by_job.items():
                spec = claim.jobs[job_id]
                if spec.kind == "score":
                    units.extend(self._run_score(spec, item) for item in items)
                    continue
                raw = [i for i in items if i.prompt is not None]
                chat = [i for i in items if i.messages is not None]
                if raw:
                    units.append(self._run_completions(spec, raw))
                units.extend(self._run_chat(spec, item) for item in chat)
            outcomes = await asyncio.gather(*units)
            slot.release_teacher()
            finished = [o for unit in outcomes for o in unit if o.completions or o.error]
            retry = [o.item for unit in outcomes for o in unit if not o.completions and not o.error]
            await self.worker.store(finished)
            if retry:
                await self.worker.retry_later(retry, refund=await self._outage_refund())
        except asyncio.CancelledError:
            await asyncio.shield(self.worker.release([i for i in ids if i in self.worker.inflight]))
            raise
        finally:
            self.worker.inflight.difference_update(ids)

    async def _guarded(
        self,
        items: list[ClaimedItem],
        call: Callable[[], Awaitable[list[ItemOutcome]]],
        split: Callable[[], Awaitable[list[ItemOutcome]]] | None = None,
    ) -> list[ItemOutcome]:
        """Run one teacher call for these items. Transient failures leave the items to retry (and back off);
        a permanent one (a 400) fails them with the teacher's message, or calls `split` to find the culprit."""
        try:
            outcomes = await call()
        except TeacherError as exc:
            if exc.transient:
                self._note_failure(exc)
                return [ItemOutcome(item) for item in items]
            if split is not None and len(items) > 1:
                return await split()
            return [ItemOutcome(item, error=exc.message) for item in items]
        except TeacherResponseError as exc:
            self._note_failure(exc)
            return [ItemOutcome(item) for item in items]
        self._note_success()
        return outcomes

    async def _run_completions(self, spec: JobSpec, items: list[ClaimedItem]) -> list[ItemOutcome]:
        """One request for the whole list; a 400 splits it in halves to find the prompt at fault. A seeded
        job sends one request per prompt (concurrently), each with its own derived seed."""
        job_seed = spec.params.get("seed")
        if job_seed is not None and len(items) > 1:
            parts = await asyncio.gather(*(self._run_completions(spec, [item]) for item in items))
            return [outcome for part in parts for outcome in part]
        seed = None if job_seed is None else item_seed(job_seed, items[0].seq)
        body = completions_body(self.config.model, spec, [i.prompt or "" for i in items], seed=seed)

        async def call() -> list[ItemOutcome]:
            raw = await self.client.completions(body)
            outcomes = [ItemOutcome(item) for item in items]
            for completion in parse_completions(raw, num_prompts=len(items), n=spec.n, k=spec.k):
                outcomes[completion.prompt_index].completions.append(completion)
            return outcomes

        async def split() -> list[ItemOutcome]:
            mid = len(items) // 2
            halves = await asyncio.gather(
                self._run_completions(spec, items[:mid]), self._run_completions(spec, items[mid:])
            )
            return halves[0] + halves[1]

        return await self._guarded(items, call, split)

    async def _run_chat(self, spec: JobSpec, item: ClaimedItem) -> list[ItemOutcome]:
        job_seed = spec.params.get("seed")
        seed = None if job_seed is None else item_seed(job_seed, item.seq)
        body = chat_body(self.config.model, spec, item.messages or [], seed=seed)

        async def call() -> list[ItemOutcome]:
            raw = await self.client.chat_completions(body)
            parsed = parse_chat(raw, n=spec.n, k=spec.k, requested_top=chat_top_logprobs(spec))
            return [ItemOutcome(item, completions=parsed)]

        return await self._guarded([item], call)

    async def _run_score(self, spec: JobSpec, item: ClaimedItem) -> list[ItemOutcome]:
        """Teacher forcing: the prompt and the given response as one token sequence, max_tokens 1,
        prompt_logprobs k; the top-k at each response position is kept."""

        async def call() -> list[ItemOutcome]:
            prompt_ids, response_ids = await self._score_tokens(item)
            if not response_ids:
                return [ItemOutcome(item, error="the response is empty once tokenized")]
            raw = await self.client.completions(score_body(self.config.model, spec, prompt_ids + response_ids))
            arrays = parse_prompt_logprobs(raw, prompt_len=len(prompt_ids), response_ids=response_ids, k=spec.k)
            text = item.response if item.response is not None else str((item.messages or [{}])[-1].get("content"))
            return [ItemOutcome(item, completions=[ParsedCompletion(0, 0, text, "scored", arrays, prompt_ids)])]

        return await self._guarded([item], call)

    async def _score_tokens(self, item: ClaimedItem) -> tuple[list[int], list[int]]:
        """Prompt and response token ids, from the teacher's own tokenizer (its /tokenize endpoint).

        Raw: the prompt with the tokenizer's special tokens, the response without, each tokenized alone.
        Chat: the conversation before the assistant turn with the generation prompt; the response is what
        the full conversation adds to it (its template must extend the prompt, else the item fails)."""
        model = self.config.model
        if item.messages is None:
            prompt = await self.client.post_json("/tokenize", {"model": model, "prompt": item.prompt})
            response = await self.client.post_json(
                "/tokenize", {"model": model, "prompt": item.response, "add_special_tokens": False}
            )
            return list(prompt["tokens"]), list(response["tokens"])
        head = await self.client.post_json(
            "/tokenize", {"model": model, "messages": item.messages[:-1], "add_generation_prompt": True}
        )
        full = await self.client.post_json(
            "/tokenize", {"model": model, "messages": item.messages, "add_generation_prompt": False}
        )
        prompt_ids, full_ids = list(head["tokens"]), list(full["tokens"])
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise TeacherError(
                "the chat template does not render the prompt as a prefix of the conversation", transient=False
            )
        return prompt_ids, full_ids[len(prompt_ids) :]

    def _note_failure(self, exc: Exception) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** min(self._failures, 8)) * (0.5 + random.random())
        self._backoff_until = max(self._backoff_until, time.monotonic() + delay)
        log.warning("teacher %s: %s; backing off %.1fs", self.config.name, exc, delay)

    def _note_success(self) -> None:
        self._failures = 0

    async def _outage_refund(self) -> bool:
        """After transient failures: True while the teacher is down and the outage is within the window."""
        if await self.client.health():
            return False
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning("teacher %s is down; pausing its dispatch", self.config.name)
        return now - self._down_since < self.worker.settings.teacher_outage_window_s

    async def _wait_until_healthy(self, stop: asyncio.Event) -> None:
        delay = 1.0
        while not stop.is_set():
            if await self.client.health():
                down_for = time.monotonic() - (self._down_since or time.monotonic())
                log.info("teacher %s is back after %.0fs; resuming", self.config.name, down_for)
                self._down_since = None
                self._failures = 0
                self._backoff_until = 0.0
                return
            await _sleep_or_stop(stop, delay * (0.5 + random.random()))
            delay = min(delay * 2, 15.0)


class Worker:
    """Runs a dispatcher per teacher, a lease renewer and a reaper of expired leases."""

    def __init__(self, database: Database, settings: Settings, *, worker_id: str | None = None) -> None:
        self.database = database
        self.settings = settings
        self.id = worker_id or new_worker_id()
        self.inflight: set[int] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until stop is set; then stop claiming, drain in-flight batches within the grace period, and return."""
        dispatchers = [TeacherDispatcher(self, t) for t in self.settings.teachers]
        log.info("worker %s started for teachers %s", self.id, [t.name for t in self.settings.teachers])
        await asyncio.gather(
            *(d.run(stop) for d in dispatchers),
            self._every(stop, self.settings.worker_lease_s / 3, self.renew_leases),
            self._every(stop, min(self.settings.worker_lease_s / 2, 30.0), self.reap),
        )
        log.info("worker %s stopped", self.id)

    async def _every(self, stop: asyncio.Event, interval: float, action: Any) -> None:
        while not stop.is_set():
            try:
                await action()
            except Exception:
                log.exception("%s failed", getattr(action, "__name__", action))
            await _sleep_or_stop(stop, interval)

    def _lease_until(self) -> Any:
        return utcnow() + timedelta(seconds=self.settings.worker_lease_s)

    async def claim(self, teacher: str, limit: int) -> Claim:
        async def work(session: AsyncSession) -> Claim:
            items = await repository.claim_items(
                session, teacher=teacher, owner=self.id, limit=limit, lease_until=self._lease_until(), now=utcnow()
            )
            jobs = await repository.job_specs(session, {i.job_id for i in items}) if items else {}
            return Claim(items=items, jobs=jobs)

        return await self.database.run(work)

    async def renew_leases(self) -> None:
        ids = sorted(self.inflight)
        if ids:
            until = self._lease_until()
            await self.database.run(
                lambda s: repository.renew_leases(s, owner=self.id, item_ids=ids, lease_until=until)
            )

    async def reap(self) -> None:
        reaped = await self.database.run(lambda s: repository.reap_expired_leases(s, utcnow()))
        if reaped:
            log.info("re-queued %d items whose lease expired", reaped)

    async def release(self, item_ids: list[int], *, refund: bool = False) -> None:
        if item_ids:
            await self.database.run(
                lambda s: repository.release_items(s, owner=self.id, item_ids=item_ids, refund=refund),
                retry_for_s=self.settings.worker_db_retry_s,
            )

    async def store(self, outcomes: list[ItemOutcome]) -> None:
        """One transaction: results in, items done or failed, job counters, all only for items we still own.
        Repeatable: after a commit the items are no longer leased, so a rerun stores nothing twice."""
        if outcomes:
            await self.database.run(lambda s: self._store(s, outcomes), retry_for_s=self.settings.worker_db_retry_s)

    async def _store(self, session: AsyncSession, outcomes: list[ItemOutcome]) -> None:
        now = utcnow()
        owned = await repository.owned_items(session, owner=self.id, item_ids=[o.item.id for o in outcomes])
        results: list[dict[str, Any]] = []
        finished: list[dict[str, Any]] = []
        done: dict[uuid.UUID, int] = defaultdict(int)
        failed: dict[uuid.UUID, int] = defaultdict(int)
        tokens: dict[uuid.UUID, int] = defaultdict(int)
        for outcome in outcomes:
            item = outcome.item
            if item.id not in owned:
                continue
            if outcome.error is not None:
                finished.append(_finished_row(item.id, "failed", error=outcome.error[:4000]))
                failed[item.job_id] += 1
                continue
            prompt_ids = outcome.completions[0].prompt_token_ids if outcome.completions else None
            finished.append(_finished_row(item.id, "done", prompt_token_ids=prompt_ids))
            done[item.job_id] += 1
            for completion in outcome.completions:
                packed = encode_topk(completion.arrays)
                tokens[item.job_id] += packed.num_tokens
                results.append(
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
                    }
                )
        await repository.insert_results(session, results)
        await repository.finish_items(session, finished)
        await repository.add_job_progress(
            session, done=done, failed=failed, tokens=tokens, bucket=int(time.time()) // PROGRESS_BUCKET_S, now=now
        )
        stale = len(outcomes) - len(owned)
        if stale:
            log.warning("dropped %d results whose lease this worker no longer holds", stale)

    async def retry_later(self, items: list[ClaimedItem], *, refund: bool = False) -> None:
        """Items that hit a transient failure go back to the queue; once out of attempts they fail. During a
        teacher outage (refund) the attempt is given back, so waiting out the outage costs nothing."""
        limit = self.settings.worker_max_attempts
        exhausted = [] if refund else [i for i in items if i.attempts >= limit]
        again = [i.id for i in items if refund or i.attempts < limit]
        if exhausted:
            await self.store(
                [ItemOutcome(i, error=f"gave up after {i.attempts} attempts (teacher errors)") for i in exhausted]
            )
        await self.release(again, refund=refund)


def _finished_row(
    item_id: int, status: str, *, error: str | None = None, prompt_token_ids: list[int] | None = None
) -> dict[str, Any]:
    packed = None
    if prompt_token_ids is not None:
        packed = pack_ids(prompt_token_ids)
    return {
        "id": item_id,
        "status": status,
        "error": error,
        "lease_owner": None,
        "lease_expires_at": None,
        "prompt_token_ids": packed,
    }


class _Slot:
    """One batch's hold on the dispatcher's two semaphores; each is released exactly once."""

    def __init__(self, teacher: asyncio.Semaphore, held: asyncio.Semaphore) -> None:
        self._teacher: asyncio.Semaphore | None = teacher
        self._held: asyncio.Semaphore | None = held

    def release_teacher(self) -> None:
        if self._teacher is not None:
            self._teacher.release()
            self._teacher = None

    def release_all(self) -> None:
        self.release_teacher()
        if self._held is not None:
            self._held.release()
            self._held = None


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
