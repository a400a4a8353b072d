"""The reference parsing of vLLM responses: one choice at a time, Python sorting. Slow, and the definition
of the behaviour (errors included) that the fast paths in parsing_fast must reproduce exactly.

Requests are sent with `return_tokens_as_token_ids`, so every token and top-k key is "token_id:N".
Completions put the sampled token first in each top-k dict and add it as entry k+1 when it is outside
the top-k; chat cuts its list to the requested length from that same sampled-first order. Both are
sorted here by logprob (ties by id) and cut to k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.codecs.topk import MISSING_ID, TopKArrays

TOKEN_ID_PREFIX = "token_id:"
# The chat endpoint reports a logprob of -inf as -9999.
CHAT_NEG_INF = -9999.0


class TeacherResponseError(ValueError):
    """The teacher answered 200 with a body we cannot read as expected."""


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    """One generated sample with its arrays and bookkeeping."""

    prompt_index: int
    sample_index: int
    text: str
    finish_reason: str | None
    arrays: TopKArrays
    prompt_token_ids: list[int] | None

    @classmethod
    def of_choice(cls, choice: dict[str, Any], n: int, arrays: TopKArrays) -> ParsedCompletion:
        """The sample of one /v1/completions choice: its index counts n samples per prompt."""
        index = int(choice["index"])
        text, reason = choice.get("text") or "", choice.get("finish_reason")
        return cls(index // n, index % n, text, reason, arrays, choice.get("prompt_token_ids"))


def token_id(key: str) -> int:
    """The id in a "token_id:N" key."""
    if not key.startswith(TOKEN_ID_PREFIX):
        raise TeacherResponseError(f"token key {key[:40]!r} is not of the form 'token_id:N'")
    return int(key[len(TOKEN_ID_PREFIX) :])


def clean_logprob(logprob: float | None) -> float:
    if logprob is None or logprob <= CHAT_NEG_INF:
        return float("-inf")
    return float(logprob)


def topk_rows(candidates: list[list[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each position's (id, logprob) pairs by logprob, best first, and keep k (padding if fewer)."""
    t = len(candidates)
    ids = np.full((t, k), MISSING_ID, dtype=np.int32)
    lps = np.full((t, k), -np.inf, dtype=np.float32)
    if k == 0:
        return ids, lps
    for pos, pairs in enumerate(candidates):
        best = sorted(pairs, key=lambda p: (-p[1], p[0]))[:k]
        for rank, (tid, lp) in enumerate(best):
            ids[pos, rank] = tid
            lps[pos, rank] = lp
    return ids, lps


def reference_completions(choices: list[Any], *, n: int, k: int) -> list[ParsedCompletion]:
    """One choice at a time with Python sorting: slow, and the definition of the behaviour."""
    out: list[ParsedCompletion] = []
    for choice in choices:
        logprobs = choice.get("logprobs")
        if not logprobs:
            raise TeacherResponseError("completion choice has no logprobs")
        token_keys: list[str] = logprobs["tokens"]
        token_ids = choice.get("token_ids")
        ids = (
            np.asarray(token_ids, dtype=np.int32)
            if token_ids is not None
            else np.asarray([token_id(t) for t in token_keys], dtype=np.int32)
        )
        sampled_lps = np.asarray([clean_logprob(x) for x in logprobs["token_logprobs"]], dtype=np.float32)
        top = logprobs.get("top_logprobs") or [None] * len(token_keys)
        candidates = [[(token_id(key), clean_logprob(lp)) for key, lp in (pos or {}).items()] for pos in top]
        if not (len(ids) == len(sampled_lps) == len(candidates)):
            raise TeacherResponseError("token ids, logprobs and top-k lists differ in length")
        topk_ids, topk_lps = topk_rows(candidates, k)
        out.append(ParsedCompletion.of_choice(choice, n, TopKArrays(ids, sampled_lps, topk_ids, topk_lps)))
    return out


def reference_chat(
    choices: list[Any], *, k: int, requested_top: int, prompt_token_ids: list[int] | None
) -> list[ParsedCompletion]:
    """One choice at a time with Python sorting: slow, and the definition of the behaviour."""
    out: list[ParsedCompletion] = []
    for choice in choices:
        content = (choice.get("logprobs") or {}).get("content")
        if content is None:
            raise TeacherResponseError("chat choice has no logprobs content")
        sampled = [token_id(entry["token"]) for entry in content]
        token_ids = choice.get("token_ids")
        ids = np.asarray(token_ids if token_ids is not None else sampled, dtype=np.int32)
        sampled_lps = np.asarray([clean_logprob(entry["logprob"]) for entry in content], dtype=np.float32)
        candidates = [
            [(token_id(c["token"]), clean_logprob(c["logprob"])) for c in entry.get("top_logprobs") or []]
            for entry in content
        ]
        if len(ids) != len(candidates):
            raise TeacherResponseError("token ids and logprobs content differ in length")
        topk_ids, topk_lps = topk_rows(candidates, k)
        if k > 0 and requested_top == k:
            last_is_sampled = topk_ids[:, k - 1] == np.asarray(sampled, dtype=np.int32)
            topk_ids[last_is_sampled, k - 1] = MISSING_ID
            topk_lps[last_is_sampled, k - 1] = -np.inf
        message = choice.get("message") or {}
        out.append(
            ParsedCompletion(
                prompt_index=0,
                sample_index=int(choice["index"]),
                text=message.get("content") or "",
                finish_reason=choice.get("finish_reason"),
                arrays=TopKArrays(ids, sampled_lps, topk_ids, topk_lps),
                prompt_token_ids=prompt_token_ids,
            )
        )
    return out
