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
import time
from typing import TYPE_CHECKING

from app.database import is_transient_db_error
from app.observability import logs
from app.observability.metrics import GENERATED_TOKENS, STORED_BYTES
from app.settings import TeacherConfig
from app.teachers.client import ServerLoad, TeacherError
from app.teachers.requests import logprob_entries_per_prompt
from app.teachers.service import TeacherRegistry
from app.waiting import wait_first
from app.worker.calls import TeacherCalls, describe
from app.worker.controller import InflightController
from app.worker.load import Hold, ReplicaLoad
from app.worker.schemas import Claim, ItemOutcome, JobSpec

if TYPE_CHECKING:
    from app.worker.service import Worker

log = logging.getLogger(__name__)

LOAD_POLL_S = 0.5
EXPRESS_POLL_S = 1.0  # busy: look for unstarted jobs this often unless woken (a new job announced) sooner
METRICS_RETRY_S = 30.0
DIGEST_BACKLOG_PER_REPLICA = 4  # answers in but not yet stored: beyond this, claim nothing more (memory)
TAIL_FLOOR = 8  # the tail is never cut into batches under this many prompts (requests cost more than they balance)


def tail_limit(queued: int, replicas: int) -> int:
    """At the end of a backlog a batch takes at most an even share of what is left per replica (never under
    TAIL_FLOOR prompts), so the last work spreads over every replica and they run dry together, instead of
    one replica taking a whole batch at the end and running it alone after the others have finished."""
    return max(TAIL_FLOOR, -(-queued // max(1, replicas)))


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
        self.calls = TeacherCalls(worker, config, registry)
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._digesting = 0  # batches whose answers are all in, not yet decoded and stored
        self._inflight_items = 0  # items of this teacher claimed by this worker and not yet settled

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

    def _batch_limit(self, spec: JobSpec, pending: int, room: int) -> int:
        """Prompts for one request: within the batch size, the token budget, the replica's room and, at the
        end of the backlog (`pending` items, less those in flight here), an even share per replica."""
        by_budget = self.config.batch_token_budget // max(1, logprob_entries_per_prompt(spec))
        in_rotation = sum(1 for lo in self.loads if lo.replica.healthy and lo.replica.identity is not None)
        tail = tail_limit(pending - self._inflight_items, in_rotation)
        return max(1, min(self.config.batch_size, by_budget, room // max(1, spec.n), tail))

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
        self._inflight_items += len(claim.items)
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
        logs.job_id.set(str(claim.items[0].job_id))  # this batch's task has its own context: its lines say so
        logs.batch_id.set(f"{ids[0]}+{len(ids)}")
        self.worker.inflight.update(ids)
        hold = Hold(load, sequences, self._released)
        try:
            outcomes = await self.calls.run(hold, claim.jobs[claim.items[0].job_id], claim.items)
            hold.give_back()
            if not load.uses_metrics:
                tokens = sum(len(c.arrays.token_ids) for o in outcomes for c in o.completions)
                load.controller.on_answer(tokens, load.sequences + sequences)
            await self._settle(load, outcomes)
        except asyncio.CancelledError:
            await asyncio.shield(self.worker.release([i for i in ids if i in self.worker.inflight]))
            raise
        except Exception as exc:
            # a defect, or a database that stays down past the retries: the items go back at once with the
            # attempt counted (not after a lease expires), and fail once out of attempts
            log.exception("batch of %d items crashed; returning them to the queue", len(ids))
            left = [item for item in claim.items if item.id in self.worker.inflight]
            await asyncio.shield(self.worker.retry_later([ItemOutcome(i, reason=describe(exc)) for i in left]))
        finally:
            hold.give_back()
            self._digesting -= 1
            self._inflight_items -= len(ids)
            self.worker.inflight.difference_update(ids)

    def _released(self, all_in: bool) -> None:
        """A batch's answers came in (some or all): its replica has room; a whole batch is now digesting."""
        if all_in:
            self._digesting += 1
        self._changed.set()

    async def _settle(self, load: ReplicaLoad, outcomes: list[ItemOutcome]) -> None:
        finished = [o for o in outcomes if o.completions or o.error]
        held = [o.item.id for o in outcomes if o.teacher_fault]
        retry = [o for o in outcomes if not o.completions and not o.error and not o.teacher_fault]
        retry += await self._store(finished)
        if held:
            await self.worker.release(held, refund=True)
        transient = [o for o in retry if o.transient]
        if transient:  # while the replica is down, waiting out its outage costs the items nothing
            await self.worker.retry_later(transient, refund=await self._outage_refund(load))
        if counted := [o for o in retry if not o.transient]:
            await self.worker.retry_later(counted)

    async def _store(self, outcomes: list[ItemOutcome]) -> list[ItemOutcome]:
        """Store the outcomes; one that cannot be stored (past the database's own retries) is found by
        storing halves apart, and comes back to be retried, with the error as its reason."""
        if not outcomes:
            return []
        try:
            stored = await self.worker.store(outcomes)
            GENERATED_TOKENS.labels(self.config.name).inc(stored.tokens)
            STORED_BYTES.labels(self.config.name).inc(stored.bytes)
            return []
        except Exception as exc:
            if is_transient_db_error(exc):
                raise  # the database is away, not this data: the batch goes back as a whole
            if len(outcomes) == 1:
                log.exception("storing the answer of item %d failed", outcomes[0].item.id)
                return [ItemOutcome(outcomes[0].item, reason=f"could not store the answer: {describe(exc)}")]
        mid = len(outcomes) // 2
        return await self._store(outcomes[:mid]) + await self._store(outcomes[mid:])

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
