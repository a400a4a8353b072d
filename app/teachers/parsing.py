"""Turns vLLM completions / chat responses into TopKArrays, keyed by token id, never by decoded string.

The behaviour is defined by parsing_reference (one choice at a time); parsing_fast reproduces it quickly
and hands anything unexpected back to it. See those modules for the response shapes and the speed paths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from app.codecs.topk import TopKArrays
from app.teachers.parsing_fast import Fallback, fast_chat, fast_completions
from app.teachers.parsing_reference import (
    CHAT_NEG_INF,
    TOKEN_ID_PREFIX,
    ParsedCompletion,
    TeacherResponseError,
    clean_logprob,
    reference_chat,
    reference_completions,
    token_id,
    topk_rows,
)
from app.teachers.parsing_scan import scanned_chat, scanned_completions

__all__ = [
    "CHAT_NEG_INF",
    "TOKEN_ID_PREFIX",
    "ParsedCompletion",
    "TeacherResponseError",
    "parse_chat",
    "parse_completions",
    "parse_prompt_logprobs",
    "token_id",
]

# The reference path under the names the equivalence tests and bench/parse_speed use.
_reference_completions = reference_completions
_reference_chat = reference_chat
_FAST_ERRORS = (Fallback, TeacherResponseError, KeyError, TypeError, ValueError, AttributeError, OverflowError)


def parse_completions(body: bytes, *, num_prompts: int, n: int, k: int) -> list[ParsedCompletion]:
    """Parse a /v1/completions response for a list of num_prompts prompts with n samples each."""
    out = scanned_completions(body, num_prompts=num_prompts, n=n, k=k)
    if out is None:
        data = _load(body)
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != num_prompts * n:
            got = len(choices) if isinstance(choices, list) else "no"
            raise TeacherResponseError(f"expected {num_prompts * n} choices, got {got}")
        try:
            out = fast_completions(choices, n=n, k=k)
        except _FAST_ERRORS:
            out = reference_completions(choices, n=n, k=k)
    out.sort(key=lambda c: (c.prompt_index, c.sample_index))
    _check_samples(out, num_prompts=num_prompts, n=n)
    return out


def parse_chat(body: bytes, *, n: int, k: int, requested_top: int) -> list[ParsedCompletion]:
    """Parse a /v1/chat/completions response for one conversation with n samples.

    `requested_top` is the top_logprobs sent. When it is k+1 the true top-k is always present. When it
    equals k and the sampled token sorts last, chat may have dropped the real k-th best for it, so that
    slot is marked missing rather than guessed.
    """
    out = scanned_chat(body, n=n, k=k, requested_top=requested_top)
    if out is None:
        data = _load(body)
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != n:
            got = len(choices) if isinstance(choices, list) else "no"
            raise TeacherResponseError(f"expected {n} choices, got {got}")
        prompt_token_ids = data.get("prompt_token_ids")
        try:
            out = fast_chat(choices, k=k, requested_top=requested_top, prompt_token_ids=prompt_token_ids)
        except _FAST_ERRORS:
            out = reference_chat(choices, k=k, requested_top=requested_top, prompt_token_ids=prompt_token_ids)
    out.sort(key=lambda c: c.sample_index)
    _check_samples(out, num_prompts=1, n=n)
    return out


def _check_samples(parsed: list[ParsedCompletion], *, num_prompts: int, n: int) -> None:
    """Exactly n distinct samples for every prompt (sorted input): else the answer is malformed."""
    for position, completion in enumerate(parsed):
        expected = divmod(position, n)
        if (completion.prompt_index, completion.sample_index) != expected:
            index = completion.prompt_index * n + completion.sample_index
            if not 0 <= index < num_prompts * n:
                raise TeacherResponseError(f"choice index {index} is out of range for {num_prompts * n} choices")
            raise TeacherResponseError(f"choice index {index} is repeated, so another sample is missing")


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TeacherResponseError(f"teacher response is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TeacherResponseError("teacher response is not a JSON object")
    return data


def parse_prompt_logprobs(body: bytes, *, prompt_len: int, response_ids: list[int], k: int) -> TopKArrays:
    """The teacher's distributions at the response positions of a teacher-forced prompt.

    vLLM's `prompt_logprobs` entry j is the distribution of token j given tokens [0, j) (entry 0 is null),
    keyed by plain id strings and always holding the actual token. Position t of the result is entry
    prompt_len + t: the teacher's distribution for response token t, predicted from everything before it.
    """
    data = _load(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        raise TeacherResponseError("expected one choice for a scored prompt")
    entries = choices[0].get("prompt_logprobs") or data.get("prompt_logprobs")
    t = len(response_ids)
    if not isinstance(entries, list) or len(entries) != prompt_len + t:
        got = len(entries) if isinstance(entries, list) else "no"
        raise TeacherResponseError(f"expected {prompt_len + t} prompt_logprobs entries, got {got}")
    sampled = np.empty(t, dtype=np.float32)
    candidates: list[list[tuple[int, float]]] = []
    for pos, token in enumerate(response_ids):
        entry = entries[prompt_len + pos]
        if not isinstance(entry, dict) or str(token) not in entry:
            raise TeacherResponseError(f"prompt_logprobs entry {prompt_len + pos} lacks the actual token {token}")
        pairs = [(int(key), clean_logprob(value["logprob"])) for key, value in entry.items()]
        sampled[pos] = clean_logprob(entry[str(token)]["logprob"])
        candidates.append(pairs)
    ids, lps = topk_rows(candidates, k)
    return TopKArrays(np.asarray(response_ids, dtype=np.int32), sampled, ids, lps)
