"""TeacherDispatcher: feeds every replica of one teacher, each as much as its InflightController allows.

The next batch goes to the least-loaded healthy replica with room; it is claimed (by the scheduler's fair
order) from jobs whose recorded teacher identity is that replica's, so no job ever mixes replicas that
differ. A replica's transient failures back it off (and, while its health check fails, give the items
their attempt back); a refusal as a whole (401/403/404/405) pauses it in the registry without failing an
item. A batch gives its replica room back as soon as the answer is in; decoding (on a thread, off the event
loop) and storing happen after."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.settings import TeacherConfig
from app.teachers.client import ServerLoad, TeacherError
from app.teachers.parsing import (
    ParsedCompletion,
    TeacherResponseError,
    parse_chat,
    parse_completions,
    parse_prompt_logprobs,
)
from app.teachers.requests import (
    chat_body,
    chat_top_logprobs,
    completions_body,
    item_seed,
    logprob_entries_per_prompt,
    score_body,
)
from app.teachers.service import Replica, TeacherRegistry
from app.waiting import wait_first
from app.worker.controller import InflightController
from app.worker.schemas import Claim, ClaimedItem, ItemOutcome, JobSpec

if TYPE_CHECKING:
    from app.worker.service import Worker

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
LOAD_POLL_S = 0.5
EXPRESS_POLL_S = 1.0  # busy: look for unstarted jobs this often unless woken (a new job announced) sooner
METRICS_RETRY_S = 30.0
DIGEST_BACKLOG_PER_REPLICA = 4  # answers in but not yet stored: beyond this, claim nothing more (memory)


@dataclass(eq=False)
class ReplicaLoad:
    """What this worker has in flight on one replica, and how much it may."""

    replica: Replica
    controller: InflightController
    sequences: int = 0
    requests: int = 0
    failures: int = 0
    backoff_until: float = 0.0
    down_since: float | None = None
    metrics_retry_at: float = 0.0
    next_reading_at: float = 0.0
    uses_metrics: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def room(self) -> int:
        return self.controller.target - self.sequences


@dataclass(eq=False)
class Hold:
    """The sequences one batch holds on its replica: each part gives its share back the moment its answer
    is in (before it is decoded and stored), so the replica is refilled while the service digests."""

    load: ReplicaLoad
    sequences: int
    on_release: Callable[[bool], None]  # called with True once the whole batch is in

    def give_back(self, sequences: int | None = None) -> None:
        if self.sequences <= 0:
            return
        n = self.sequences if sequences is None else min(sequences, self.sequences)
        self.sequences -= n
        self.load.sequences -= n
        if self.sequences == 0:
            self.load.requests -= 1
        self.on_release(self.sequences == 0)


class TeacherDispatcher:
    """One per teacher in each worker."""

    def __init__(self, worker: Worker, config: TeacherConfig, registry: TeacherRegistry) -> None:
        self.worker = worker
        self.config = config
        self.registry = registry
        ceiling = config.batch_size * config.max_inflight
        self.loads = [
            ReplicaLoad(r, InflightController(step=config.batch_size, ceiling=ceiling))
            for r in registry.replicas[config.name]
        ]
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._digesting = 0  # batches whose answers are all in, not yet decoded and stored

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.worker.settings
        watcher = asyncio.create_task(self._watch_load(stop), name=f"load-{self.config.name}")
        idle = False
        express_checked = 0.0
        self.worker.subscribe(self._changed)
        try:
            while not stop.is_set():
                if self._digesting >= DIGEST_BACKLOG_PER_REPLICA * len(self.loads):
                    await self._wait_for_change(stop, 0.25)
                    continue
                load = self._pick()
                express = False
                if load is None:
                    # Every replica is full: a job that has not started yet still gets its first batch now,
                    # over the target, so a small job never waits for a big one's batches to come back.
                    load = self._pick(ignore_room=True)
                    now = time.monotonic()
                    announced = self.worker.woken_at > express_checked
                    if load is None or (not announced and now < express_checked + EXPRESS_POLL_S):
                        await self._wait_for_change(stop, 0.25)
                        continue
                    express_checked = now
                    express = True
                room = load.room() if not express else self.config.batch_size * 2
                try:
                    claim = await self.worker.claim(
                        self.config.name,
                        load.replica.identity.key() if load.replica.identity else (),
                        functools.partial(self._batch_limit, room=room),
                        check_first=idle or express,
                        unstarted=express,
                    )
                except Exception:
                    log.exception("claim failed; retrying")
                    await wait_first(stop, timeout=settings.worker_poll_s * 4)
                    continue
                if not claim.items:
                    if express:
                        await self._wait_for_change(stop, 0.25)
                        continue
                    idle = True
                    await self._wait_for_change(stop, settings.worker_poll_s)
                    continue
                idle = False
                self._start(claim, load)
        finally:
            watcher.cancel()
            await self._drain(settings.worker_shutdown_grace_s)

    def _batch_limit(self, spec: JobSpec, room: int) -> int:
        """Prompts for one request: within the batch size, the token budget and the replica's room."""
        by_budget = self.config.batch_token_budget // max(1, logprob_entries_per_prompt(spec))
        return max(1, min(self.config.batch_size, by_budget, room // max(1, spec.n)))

    def _pick(self, *, ignore_room: bool = False) -> ReplicaLoad | None:
        """The least-loaded healthy replica with room for at least a quarter batch (or with nothing in flight)."""
        now = time.monotonic()
        best: ReplicaLoad | None = None
        for load in self.loads:
            replica = load.replica
            if not replica.healthy or replica.identity is None or load.backoff_until > now:
                continue
            if load.requests >= self.config.max_inflight:
                continue
            if not ignore_room and load.sequences and load.room() < max(1, self.config.batch_size // 4):
                continue
            if best is None or load.sequences / load.controller.target < best.sequences / best.controller.target:
                best = load
        return best

    async def _wait_for_change(self, stop: asyncio.Event, timeout: float) -> None:
        """Until an answer, a load reading or a wake-up (new work) changes the picture, or the timeout."""
        self._changed.clear()
        await wait_first(self._changed, stop, timeout=timeout)

    def _start(self, claim: Claim, load: ReplicaLoad) -> None:
        sequences = sum(claim.jobs[i.job_id].n for i in claim.items)
        load.sequences += sequences
        load.requests += 1
        task = asyncio.create_task(self._process(claim, load, sequences))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._changed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch failed", exc_info=task.exception())

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

    async def _process(self, claim: Claim, load: ReplicaLoad, sequences: int) -> None:
        ids = [item.id for item in claim.items]
        self.worker.inflight.update(ids)
        hold = Hold(load, sequences, self._released)
        try:
            units: list[Coroutine[Any, Any, list[ItemOutcome]]] = []
            spec = claim.jobs[claim.items[0].job_id]
            if spec.kind == "score":
                units.extend(self._run_score(hold, spec, item) for item in claim.items)
            else:
                raw = [i for i in claim.items if i.prompt is not None]
                chat = [i for i in claim.items if i.messages is not None]
                if raw:
                    units.append(self._run_completions(hold, spec, raw))
                units.extend(self._run_chat(hold, spec, item) for item in chat)
            outcomes = [o for unit in await asyncio.gather(*units) for o in unit]
            hold.give_back()
            if not load.uses_metrics:
                tokens = sum(len(c.arrays.token_ids) for o in outcomes for c in o.completions)
                load.controller.on_answer(tokens, load.sequences + sequences)
            await self._settle(load, outcomes)
        except asyncio.CancelledError:
            await asyncio.shield(self.worker.release([i for i in ids if i in self.worker.inflight]))
            raise
        finally:
            hold.give_back()
            self._digesting -= 1
            self.worker.inflight.difference_update(ids)

    def _released(self, all_in: bool) -> None:
        """A batch's answers came in (some or all): its replica has room; a whole batch is now digesting."""
        if all_in:
            self._digesting += 1
        self._changed.set()

    async def _settle(self, load: ReplicaLoad, outcomes: list[ItemOutcome]) -> None:
        finished = [o for o in outcomes if o.completions or o.error]
        held = [o.item.id for o in outcomes if o.teacher_fault]
        retry = [o.item for o in outcomes if not o.completions and not o.error and not o.teacher_fault]
        await self.worker.store(finished)
        if held:
            await self.worker.release(held, refund=True)
        if retry:
            await self.worker.retry_later(retry, refund=await self._outage_refund(load))

    async def _guarded(
        self,
        hold: Hold,
        items: list[ClaimedItem],
        n: int,
        fetch: Callable[[], Awaitable[Any]],
        decode: Callable[[Any], list[ItemOutcome]],
        split: Callable[[], Awaitable[list[ItemOutcome]]] | None = None,
    ) -> list[ItemOutcome]:
        """One teacher call for these items: `fetch` the answer, give the replica its room back, `decode` it
        off the event loop. A refusal of the replica as a whole pauses it and gives the items back; transient
        failures leave them to retry (and back off); a 400 fails them with the teacher's message, or calls
        `split` to find the culprit."""
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
            outcomes = await self.worker.off_loop(decode, raw)
        except TeacherError as exc:
            if exc.teacher_fault:
                self.registry.report_fault(self.config.name, load.replica, exc)
                return [ItemOutcome(item, teacher_fault=True) for item in items]
            if exc.transient:
                self._note_failure(load, exc)
                return [ItemOutcome(item) for item in items]
            if split is not None and splits:
                return await split()
            return [ItemOutcome(item, error=exc.message) for item in items]
        except TeacherResponseError as exc:
            self._note_failure(load, exc)
            return [ItemOutcome(item) for item in items]
        load.failures = 0
        load.down_since = None  # an outage ends with the first answer; the next one is timed afresh
        return outcomes

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

        fetch = functools.partial(hold.load.replica.client.completions, body)
        return await self._guarded(hold, items, spec.n, fetch, decode, split)

    async def _run_chat(self, hold: Hold, spec: JobSpec, item: ClaimedItem) -> list[ItemOutcome]:
        job_seed = spec.params.get("seed")
        seed = None if job_seed is None else item_seed(job_seed, item.seq)
        body = chat_body(self.config.model, spec, item.messages or [], seed=seed)

        def decode(raw: bytes) -> list[ItemOutcome]:
            parsed = parse_chat(raw, n=spec.n, k=spec.k, requested_top=chat_top_logprobs(spec))
            return [ItemOutcome(item, completions=parsed)]

        fetch = functools.partial(hold.load.replica.client.chat_completions, body)
        return await self._guarded(hold, [item], spec.n, fetch, decode)

    async def _run_score(self, hold: Hold, spec: JobSpec, item: ClaimedItem) -> list[ItemOutcome]:
        """Teacher forcing: the prompt and the given response as one token sequence, max_tokens 1,
        prompt_logprobs k; the top-k at each response position is kept."""
        client = hold.load.replica.client

        async def fetch() -> tuple[bytes | None, list[int], list[int]]:
            prompt_ids, response_ids = await client.score_tokens(item.prompt, item.response, item.messages)
            if not response_ids:
                return None, prompt_ids, response_ids
            raw = await client.completions(score_body(self.config.model, spec, prompt_ids + response_ids))
            return raw, prompt_ids, response_ids

        def decode(fetched: tuple[bytes | None, list[int], list[int]]) -> list[ItemOutcome]:
            raw, prompt_ids, response_ids = fetched
            if raw is None:
                return [ItemOutcome(item, error="the response is empty once tokenized")]
            arrays = parse_prompt_logprobs(raw, prompt_len=len(prompt_ids), response_ids=response_ids, k=spec.k)
            text = item.response if item.response is not None else str((item.messages or [{}])[-1].get("content"))
            return [ItemOutcome(item, completions=[ParsedCompletion(0, 0, text, "scored", arrays, prompt_ids)])]

        return await self._guarded(hold, [item], spec.n, fetch, decode)

    def _note_failure(self, load: ReplicaLoad, exc: Exception) -> None:
        load.failures += 1
        load.controller.on_error()
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** min(load.failures, 8)) * (0.5 + random.random())
        load.backoff_until = max(load.backoff_until, time.monotonic() + delay)
        log.warning("teacher %s replica %s: %s; backing off %.1fs", self.config.name, load.replica.url, exc, delay)

    async def _outage_refund(self, load: ReplicaLoad) -> bool:
        """After transient failures: True while the replica is down and the outage is within the window; a
        replica found down leaves the rotation until the registry's probe finds it back."""
        if await load.replica.client.health():
            load.down_since = None
            return False
        now = time.monotonic()
        if load.down_since is None:
            load.down_since = now
            self.registry.report_fault(
                self.config.name, load.replica, TeacherError("health check failed", transient=True)
            )
        return now - load.down_since < self.worker.settings.teacher_outage_window_s

    async def _watch_load(self, stop: asyncio.Event) -> None:
        """Feed each busy replica's controller with the server's running and waiting counts. A replica
        without such metrics is steered by throughput instead (and asked again now and then)."""
        if not self.config.read_server_metrics:
            return
        pending: dict[ReplicaLoad, asyncio.Task[ServerLoad | None]] = {}
        while not stop.is_set():
            now = time.monotonic()
            for lo in self.loads:
                due = lo.metrics_retry_at <= now and lo.next_reading_at <= now
                if lo.sequences and lo.replica.healthy and due and lo not in pending:
                    lo.next_reading_at = now + LOAD_POLL_S
                    pending[lo] = asyncio.create_task(lo.replica.client.load())
            for lo, task in list(pending.items()):
                if not task.done():
                    continue  # a busy server answers slowly; read it when it does
                del pending[lo]
                reading = None if task.cancelled() or task.exception() else task.result()
                if reading is not None:
                    lo.uses_metrics = True
                    lo.controller.on_server_load(reading.running, reading.waiting, reading.generated, lo.sequences)
                    log.debug(
                        "load %s: %s; ours %d, target %d", lo.replica.url, reading, lo.sequences, lo.controller.target
                    )
                    self._changed.set()
                elif not task.cancelled() and task.exception() is None:
                    lo.uses_metrics = False
                    lo.metrics_retry_at = now + METRICS_RETRY_S
            await wait_first(stop, timeout=LOAD_POLL_S / 5)
        for task in pending.values():
            task.cancel()
