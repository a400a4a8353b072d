"""Token strings for the viewer, from the teacher's own tokenizer (its /detokenize), cached per tokenizer
fingerprint: two servers with the same fingerprint map ids to the same text, so one cache serves both."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable

import httpx

from app.teachers.client import TeacherClient, TeacherError
from app.teachers.service import TeacherRegistry

log = logging.getLogger(__name__)
CONCURRENT_CALLS = 16
MAX_TOKENIZERS = 8  # fingerprints kept; the least recently used one goes first


class TokenStrings:
    """id -> text per tokenizer fingerprint, filled on demand from a replica with that fingerprint."""

    def __init__(self) -> None:
        self._by_fingerprint: OrderedDict[str, dict[int, str]] = OrderedDict()

    def _cache(self, fingerprint: str) -> dict[int, str]:
        cache = self._by_fingerprint.pop(fingerprint, None) or {}
        self._by_fingerprint[fingerprint] = cache
        while len(self._by_fingerprint) > MAX_TOKENIZERS:
            self._by_fingerprint.popitem(last=False)
        return cache

    async def strings(
        self, registry: TeacherRegistry, teacher: str, fingerprint: str | None, ids: Iterable[int]
    ) -> dict[int, str] | None:
        """The text of every id, or None when no replica of the teacher has this tokenizer now (the viewer
        then shows ids: it never guesses a string)."""
        if fingerprint is None:
            return None
        cache = self._cache(fingerprint)
        missing = sorted({i for i in ids if i >= 0} - cache.keys())
        if missing:
            client = _client_for(registry, teacher, fingerprint)
            if client is None:
                return None
            try:
                await _fill(client, cache, missing)
            except (TeacherError, httpx.HTTPError, KeyError, ValueError) as exc:
                log.warning("detokenize on teacher %s failed: %s", teacher, exc)
                return None
        return cache


def _client_for(registry: TeacherRegistry, teacher: str, fingerprint: str) -> TeacherClient | None:
    for replica in registry.replicas.get(teacher, []):
        if replica.healthy and replica.identity is not None and replica.identity.tokenizer_fingerprint == fingerprint:
            return replica.client
    return None


async def _fill(client: TeacherClient, cache: dict[int, str], ids: list[int]) -> None:
    gate = asyncio.Semaphore(CONCURRENT_CALLS)

    async def one(token_id: int) -> None:
        async with gate:
            cache[token_id] = await client.detokenize(token_id)

    await asyncio.gather(*(one(i) for i in ids))
