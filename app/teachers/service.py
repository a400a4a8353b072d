"""TeacherRegistry: keeps each configured teacher's health and self-reported identity up to date."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from app.settings import Settings, TeacherConfig
from app.teachers.client import TeacherClient, TeacherError
from app.teachers.fingerprint import chat_template_fingerprint, tokenizer_fingerprint
from app.teachers.parsing import token_id
from app.teachers.schemas import LogprobsMode, TeacherRead

log = logging.getLogger(__name__)

PROBE_PROMPT = "def main():\n"
# A processed-logprobs server rescales by temperature; a raw one reports the same values at any.
PROBE_TEMPERATURES = (1.0, 0.25)


class TeacherRegistry:
    """Probes teachers on a timer. A teacher that comes back healthy is probed in full again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clients = {t.name: TeacherClient(t) for t in settings.teachers}
        self._states = {t.name: TeacherRead(name=t.name, model=t.model, healthy=False) for t in settings.teachers}
        self._lock = asyncio.Lock()

    def configured(self, name: str) -> TeacherConfig | None:
        return self.settings.teacher(name)

    def state(self, name: str) -> TeacherRead | None:
        return self._states.get(name)

    def states(self) -> list[TeacherRead]:
        return list(self._states.values())

    async def refresh(self, name: str | None = None) -> None:
        names = [name] if name else list(self.clients)
        async with self._lock:
            await asyncio.gather(*(self._refresh_one(n) for n in names))

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every probe interval until stop is set."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:
                log.exception("teacher refresh failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.teacher_probe_interval_s)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()))

    async def _refresh_one(self, name: str) -> None:
        client = self.clients[name]
        previous = self._states[name]
        now = datetime.now(UTC)
        if not await client.health():
            self._states[name] = previous.model_copy(
                update={"healthy": False, "checked_at": now, "error": "health check failed"}
            )
            return
        if previous.healthy and previous.served_model is not None:
            self._states[name] = previous.model_copy(update={"checked_at": now})
            return
        try:
            self._states[name] = await self._probe(client, now)
        except (TeacherError, KeyError, ValueError, TypeError) as exc:
            log.warning("teacher %s probe failed: %s", name, exc)
            self._states[name] = previous.model_copy(
                update={"healthy": False, "checked_at": now, "error": f"probe failed: {exc}"}
            )

    async def _probe(self, client: TeacherClient, now: datetime) -> TeacherRead:
        config = client.config
        models = await client.get_json("/v1/models")
        entry = next((m for m in models.get("data", []) if m.get("id") == config.model), None)
        if entry is None:
            served = ", ".join(str(m.get("id")) for m in models.get("data", []))
            raise ValueError(f"server does not serve model {config.model!r} (it serves: {served})")
        try:
            version = (await client.get_json("/version")).get("version")
        except TeacherError:
            version = None
        max_logprobs = await self._probe_max_logprobs(client)
        mode = await self._probe_logprobs_mode(client)
        tokenizer = await tokenizer_fingerprint(client)
        chat_template = await chat_template_fingerprint(client)
        return TeacherRead(
            name=config.name,
            model=config.model,
            healthy=True,
            served_model=entry.get("id"),
            model_root=entry.get("root"),
            max_model_len=entry.get("max_model_len"),
            max_logprobs=max_logprobs,
            vllm_version=version,
            logprobs_mode=mode,
            tokenizer_fingerprint=tokenizer,
            chat_template_fingerprint=chat_template,
            checked_at=now,
            error=None,
        )

    async def _probe_max_logprobs(self, client: TeacherClient) -> int | None:
        tokens = await client.post_json("/tokenize", {"model": client.config.model, "prompt": PROBE_PROMPT})
        return await client.probe_max_logprobs(list(tokens["tokens"]))

    async def _probe_logprobs_mode(self, client: TeacherClient) -> LogprobsMode:
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
