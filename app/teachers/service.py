"""TeacherRegistry: each teacher's replicas, their health and self-reported identity, kept up to date.

A teacher's identity is what its replicas agree on (model, tokenizer and chat-template fingerprints,
max_logprobs). Once known it sticks while any healthy replica still has it; a replica that differs is out
of rotation (shown in `GET /v1/teachers`) until it matches again. A replica that refuses requests as a
whole (401/403/404/405) is unhealthy with that status until a probe succeeds again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from app.observability import metrics
from app.settings import Settings, TeacherConfig
from app.teachers.client import TeacherClient, TeacherError, display_url
from app.teachers.fingerprint import chat_template_fingerprint, single_token_id, tokenizer_fingerprint
from app.teachers.parsing import token_id
from app.teachers.schemas import IDENTITY_FIELDS, LogprobsMode, ReplicaRead, TeacherIdentity, TeacherRead
from app.waiting import wait_first

log = logging.getLogger(__name__)

PROBE_PROMPT = "def main():\n"
# A processed-logprobs server rescales by temperature; a raw one reports the same values at any.
PROBE_TEMPERATURES = (1.0, 0.25)
TICK_S = 0.5
MAX_RETRY_S = 15.0


@dataclass
class Replica:
    """One replica's client and what the registry last learnt about it."""

    url: str
    client: TeacherClient
    identity: TeacherIdentity | None = None
    healthy: bool = False
    status: int | None = None
    error: str | None = "not yet probed"
    checked_at: datetime | None = None
    next_check: float = 0.0
    retry_s: float = 1.0
    model_entry: dict[str, Any] = field(default_factory=dict)


class TeacherRegistry:
    """Probes every replica on a timer (unhealthy ones sooner, with backoff) and answers who may serve what."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replicas: dict[str, list[Replica]] = {
            t.name: [Replica(url, TeacherClient(t, url)) for url in t.replica_urls] for t in settings.teachers
        }
        self._identity: dict[str, tuple[object, ...] | None] = {t.name: None for t in settings.teachers}
        self._lock = asyncio.Lock()

    def configured(self, name: str) -> TeacherConfig | None:
        return self.settings.teacher(name)

    def identity_key(self, name: str) -> tuple[object, ...] | None:
        """The identity the teacher's replicas must share to be in rotation (None until one was probed)."""
        return self._identity.get(name)

    def in_rotation(self, name: str, replica: Replica) -> bool:
        key = self._identity.get(name)
        return replica.healthy and replica.identity is not None and key is not None and replica.identity.key() == key

    def state(self, name: str) -> TeacherRead | None:
        config = self.configured(name)
        if config is None:
            return None
        replicas = self.replicas[name]
        shown = self.representative(name)
        reads = [self._replica_read(name, r) for r in replicas]
        healthy = any(r.in_rotation for r in reads)
        errors = [f"{r.url}: {r.error}" for r in reads if not r.in_rotation and r.error]
        return TeacherRead(
            name=name,
            model=config.model,
            healthy=healthy,
            checked_at=max((r.checked_at for r in replicas if r.checked_at), default=None),
            error=None if healthy and len(errors) == 0 else "; ".join(errors) or None,
            replicas=reads,
            **(shown.model_dump() if shown is not None else {}),
        )

    def states(self) -> list[TeacherRead]:
        return [s for s in (self.state(t.name) for t in self.settings.teachers) if s is not None]

    def _replica_read(self, name: str, replica: Replica) -> ReplicaRead:
        in_rotation = self.in_rotation(name, replica)
        error = replica.error
        if replica.healthy and not in_rotation and replica.identity is not None:
            error = "out of rotation: " + _identity_difference(replica.identity, self.representative(name))
        return ReplicaRead(
            url=display_url(replica.url),
            healthy=replica.healthy,
            in_rotation=in_rotation,
            status=replica.status,
            error=error,
            checked_at=replica.checked_at,
            **(replica.identity.model_dump() if replica.identity is not None else {}),
        )

    def representative(self, name: str) -> TeacherIdentity | None:
        key = self._identity.get(name)
        return next((r.identity for r in self.replicas[name] if r.identity and r.identity.key() == key), None)

    async def chat_template_fingerprint(self, name: str, kwargs: dict[str, Any]) -> str | None:
        """The teacher's chat-template fingerprint rendered with these chat_template_kwargs, asked of a replica
        in rotation (None when none is). Raises the TeacherError of a refusal."""
        replica = next((r for r in self.replicas[name] if self.in_rotation(name, r)), None)
        return None if replica is None else await chat_template_fingerprint(replica.client, kwargs)

    async def refresh(self, name: str | None = None) -> None:
        """Probe every replica (of one teacher, or all) now."""
        names = [name] if name else list(self.replicas)
        await self._check_all([(n, r) for n in names for r in self.replicas[n]], force=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Check replicas as they fall due until stop is set (their health is exported meanwhile)."""
        collector = metrics.register(metrics.ReplicaCollector(self))
        try:
            while not stop.is_set():
                try:
                    now = time.monotonic()
                    due = [(n, r) for n, rs in self.replicas.items() for r in rs if r.next_check <= now]
                    if due:
                        await self._check_all(due, force=False)
                except Exception:
                    log.exception("teacher refresh failed")
                await wait_first(stop, timeout=TICK_S)
        finally:
            metrics.unregister(collector)

    async def _check_all(self, pairs: list[tuple[str, Replica]], *, force: bool) -> None:
        """Check these replicas at once, then settle their teachers' identities."""
        async with self._lock:
            await asyncio.gather(*(self._check(n, r, force=force) for n, r in pairs))
            for name in {n for n, _ in pairs}:
                self._settle_identity(name)

    def report_fault(self, name: str, replica: Replica, exc: TeacherError) -> None:
        """A dispatcher's request was refused as a whole (401/403/404/405) or the replica went away: out of
        rotation until a probe succeeds again."""
        if replica.healthy:
            log.warning("teacher %s replica %s: %s; pausing it", name, display_url(replica.url), exc.message)
        replica.healthy = False
        replica.status = exc.status
        replica.error = exc.message
        replica.checked_at = datetime.now(UTC)
        replica.next_check = time.monotonic() + 1.0
        replica.retry_s = 1.0
        self._settle_identity(name)

    async def aclose(self) -> None:
        await asyncio.gather(*(r.client.aclose() for rs in self.replicas.values() for r in rs))

    def _settle_identity(self, name: str) -> None:
        """Keep the recorded identity while a healthy replica has it; else take the most common healthy one."""
        keys = [r.identity.key() for r in self.replicas[name] if r.healthy and r.identity is not None]
        current = self._identity[name]
        if not keys or current in keys:
            return
        counts = Counter(keys)
        best = max(counts.values())
        chosen = next(k for k in keys if counts[k] == best)  # ties: the first replica in configured order
        if current is not None:
            log.warning("teacher %s: no healthy replica has the recorded identity; now %s", name, chosen)
        self._identity[name] = chosen

    async def _check(self, name: str, replica: Replica, *, force: bool = False) -> None:
        now = datetime.now(UTC)
        interval = self.settings.teacher_probe_interval_s
        try:
            if not await replica.client.health():
                raise TeacherError("health check failed", transient=True)
            entry = await _model_entry(replica.client)
            if force or not replica.healthy or replica.identity is None or entry != replica.model_entry:
                replica.identity = await self._probe(replica.client, entry)
                replica.model_entry = entry
        except (TeacherError, KeyError, ValueError, TypeError) as exc:
            status = exc.status if isinstance(exc, TeacherError) else None
            message = exc.message if isinstance(exc, TeacherError) else f"probe failed: {exc}"
            if replica.healthy or replica.error != message:
                log.warning("teacher %s replica %s: %s", name, display_url(replica.url), message)
            replica.healthy, replica.status, replica.error = False, status, message
            replica.next_check = time.monotonic() + replica.retry_s
            replica.retry_s = min(replica.retry_s * 2, MAX_RETRY_S, interval)
        else:
            replica.healthy, replica.status, replica.error = True, None, None
            replica.next_check = time.monotonic() + interval
            replica.retry_s = 1.0
        replica.checked_at = now

    async def _probe(self, client: TeacherClient, entry: dict[str, Any]) -> TeacherIdentity:
        try:
            version = (await client.get_json("/version")).get("version")
        except TeacherError:
            version = None
        return TeacherIdentity(
            served_model=entry.get("id"),
            model_root=entry.get("root"),
            max_model_len=entry.get("max_model_len"),
            max_logprobs=await _probe_max_logprobs(client),
            vllm_version=version,
            logprobs_mode=await _probe_logprobs_mode(client),
            tokenizer_fingerprint=await tokenizer_fingerprint(client),
            chat_template_fingerprint=await chat_template_fingerprint(client),
            reasoning_end_token_id=await single_token_id(client, client.config.reasoning_end_token),
        )


async def _model_entry(client: TeacherClient) -> dict[str, Any]:
    """The server's /v1/models entry for the configured model (it needs the api key, so this checks it too)."""
    models = await client.get_json("/v1/models")
    entry = next((m for m in models.get("data", []) if m.get("id") == client.config.model), None)
    if entry is None:
        served = ", ".join(str(m.get("id")) for m in models.get("data", []))
        raise ValueError(f"server does not serve model {client.config.model!r} (it serves: {served})")
    return dict(entry)


async def _probe_max_logprobs(client: TeacherClient) -> int | None:
    tokens = await client.post_json("/tokenize", {"model": client.config.model, "prompt": PROBE_PROMPT})
    return await client.probe_max_logprobs(list(tokens["tokens"]))


async def _probe_logprobs_mode(client: TeacherClient) -> LogprobsMode:
    values: list[dict[int, float]] = []
    for temperature in PROBE_TEMPERATURES:
        body: dict[str, Any] = {
            "model": client.config.model,
            "prompt": PROBE_PROMPT,
            "max_tokens": 1,
            "temperature": temperature,
            "logprobs": 5,
            "return_tokens_as_token_ids": True,
        }
        data = orjson.loads(await client.completions(body))
        top = data["choices"][0]["logprobs"]["top_logprobs"][0]
        values.append({token_id(key): float(lp) for key, lp in top.items()})
    common = set(values[0]) & set(values[1])
    if not common:
        return "unknown"
    differs = any(abs(values[0][t] - values[1][t]) > 1e-3 for t in common)
    return "processed_logprobs" if differs else "raw_logprobs"


def _identity_difference(mine: TeacherIdentity, theirs: TeacherIdentity | None) -> str:
    if theirs is None:
        return "the teacher's identity is not known yet"
    diffs = [
        f"{f} {getattr(mine, f)!r} != {getattr(theirs, f)!r}"
        for f in IDENTITY_FIELDS
        if getattr(mine, f) != getattr(theirs, f)
    ]
    return "its identity differs from the teacher's: " + ", ".join(diffs)
