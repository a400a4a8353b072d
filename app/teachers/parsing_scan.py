"""Parsing with the compiled scanner (app/teachers/_scan.c, built by the normal install): a body's top-k
lists are read and ranked in C straight from the bytes, and orjson parses only the rest (texts, sampled
tokens), so no Python object is made per candidate. Equal to parsing_reference's result on every body it
accepts; anything else returns None, and the numpy path (parsing_fast) or the reference path decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from app.codecs.topk import MISSING_ID, TopKArrays
from app.teachers.parsing_fast import EMPTY, Fallback, logprobs_array, lookup_id
from app.teachers.parsing_reference import ParsedCompletion

try:
    from app.teachers import _scan  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the numpy path serves alone
    _scan = None


def scanned_completions(body: bytes, *, num_prompts: int, n: int, k: int) -> list[ParsedCompletion] | None:
    """The compiled scanner's path for a completions body; None when it does not apply (the caller then
    parses the plain way, which also raises the right error for a malformed body)."""
    if _scan is None:
        return None
    scanned = _scan.scan(body, k, False)
    if scanned is None:
        return None
    try:
        return _assemble_completions(_Scanned(scanned, k), num_prompts=num_prompts, n=n, k=k)
    except _SCAN_MISSES:
        return None


def scanned_chat(body: bytes, *, n: int, k: int, requested_top: int) -> list[ParsedCompletion] | None:
    """The compiled scanner's path for a chat body; None when it does not apply."""
    if _scan is None:
        return None
    scanned = _scan.scan(body, k, True)
    if scanned is None:
        return None
    try:
        return _assemble_chat(_Scanned(scanned, k), n=n, k=k, requested_top=requested_top)
    except _SCAN_MISSES:
        return None


_SCAN_MISSES = (
    Fallback,
    orjson.JSONDecodeError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    OverflowError,
)


class _Scanned:
    """The scanner's answer: the stripped body parsed, and its lists' rows as numpy views."""

    def __init__(self, scanned: tuple[bytes, bytearray, bytearray, bytearray, bytearray, bytearray], k: int):
        stripped, count_bytes, sampled_ids, sampled_lps, id_bytes, lp_bytes = scanned
        self.data = orjson.loads(stripped)
        counts = np.frombuffer(count_bytes, dtype=np.int64)
        total = int(counts.sum())
        starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        self.lists = len(counts)
        self.bounds: list[int] = starts.tolist()
        self.sampled_ids = np.frombuffer(sampled_ids, dtype=np.int32)
        self.sampled_lps = np.frombuffer(sampled_lps, dtype=np.float32)
        self.topk_ids = np.frombuffer(id_bytes, dtype=np.int32).reshape(total, k)
        self.topk_lps = np.frombuffer(lp_bytes, dtype=np.float32).reshape(total, k)

    def length(self, ordinal: int) -> int:
        return self.bounds[ordinal + 1] - self.bounds[ordinal]

    def rows(self, ordinal: int) -> slice:
        return slice(self.bounds[ordinal], self.bounds[ordinal + 1])

    def check_all_used(self, used: list[int]) -> None:
        """Every list is read exactly once: one elsewhere in the body means the body is not as expected."""
        if sorted(used) != list(range(self.lists)):
            raise Fallback


def _assemble_chat(scan: _Scanned, *, n: int, k: int, requested_top: int) -> list[ParsedCompletion]:
    """Chat choices of a stripped body (each logprobs content list replaced by its ordinal) and their rows."""
    data = scan.data
    choices = data["choices"]
    if type(choices) is not list or len(choices) != n:
        raise Fallback
    prompt_token_ids = data.get("prompt_token_ids")
    topk_ids, topk_lps = scan.topk_ids, scan.topk_lps
    if k > 0 and requested_top == k:
        last_is_sampled = topk_ids[:, k - 1] == scan.sampled_ids
        topk_ids[last_is_sampled, k - 1] = MISSING_ID
        topk_lps[last_is_sampled, k - 1] = -np.inf
    used: list[int] = []
    out: list[ParsedCompletion] = []
    for choice in choices:
        ordinal = (choice.get("logprobs") or EMPTY).get("content")
        if type(ordinal) is not int:
            raise Fallback
        used.append(ordinal)
        rows = scan.rows(ordinal)
        token_ids = choice.get("token_ids")
        if token_ids is None:
            ids = scan.sampled_ids[rows]
        elif type(token_ids) is list and len(token_ids) == scan.length(ordinal):
            ids = np.asarray(token_ids, dtype=np.int32)
        else:
            raise Fallback
        message = choice.get("message") or EMPTY
        out.append(
            ParsedCompletion(
                prompt_index=0,
                sample_index=int(choice["index"]),
                text=message.get("content") or "",
                finish_reason=choice.get("finish_reason"),
                arrays=TopKArrays(ids, scan.sampled_lps[rows], topk_ids[rows], topk_lps[rows]),
                prompt_token_ids=prompt_token_ids,
            )
        )
    scan.check_all_used(used)
    return out


def _assemble_completions(scan: _Scanned, *, num_prompts: int, n: int, k: int) -> list[ParsedCompletion]:
    """Completions choices of a stripped body (each top_logprobs list replaced by its ordinal) and their rows."""
    choices = scan.data["choices"]
    if type(choices) is not list or len(choices) != num_prompts * n:
        raise Fallback
    topk_ids, topk_lps, bounds = scan.topk_ids, scan.topk_lps, scan.bounds
    lengths: list[int] = []
    sampled_ids: list[Any] = []
    sampled_lps: list[Any] = []
    rows: list[int | None] = []
    for choice in choices:
        logprobs = choice.get("logprobs")
        if not logprobs or type(logprobs) is not dict:
            raise Fallback
        keys = logprobs["tokens"]
        token_ids = choice.get("token_ids")
        ids = keys if token_ids is None else token_ids
        values = logprobs["token_logprobs"]
        if not (type(ids) is list and type(values) is list and len(ids) == len(values)):
            raise Fallback
        top = logprobs.get("top_logprobs")
        if top is None:
            if type(keys) is not list or len(keys) != len(ids):
                raise Fallback
            rows.append(None)
        elif type(top) is int and bounds[top + 1] - bounds[top] == len(ids):
            rows.append(top)
        elif type(top) is int and bounds[top + 1] == bounds[top]:
            rows.append(None)  # an empty list reads like a missing one
        else:
            raise Fallback
        if token_ids is None:
            ids = [lookup_id(key) for key in keys]
        lengths.append(len(ids))
        sampled_ids.extend(ids)
        sampled_lps.extend(values)
    scan.check_all_used([r for r in rows if r is not None])
    all_ids = np.asarray(sampled_ids, dtype=np.int32)
    all_lps = logprobs_array(sampled_lps).astype(np.float32)
    out: list[ParsedCompletion] = []
    at = 0
    for choice, region, length in zip(choices, rows, lengths, strict=True):
        if region is None:
            c_ids = np.full((length, k), MISSING_ID, dtype=np.int32)
            c_lps = np.full((length, k), -np.inf, dtype=np.float32)
        else:
            c_ids = topk_ids[bounds[region] : bounds[region + 1]]
            c_lps = topk_lps[bounds[region] : bounds[region + 1]]
        arrays = TopKArrays(all_ids[at : at + length], all_lps[at : at + length], c_ids, c_lps)
        out.append(ParsedCompletion.of_choice(choice, n, arrays))
        at += length
    return out
