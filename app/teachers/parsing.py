"""Turns vLLM completions / chat responses into TopKArrays, keyed by token id, never by decoded string.

Requests are sent with `return_tokens_as_token_ids`, so every token and top-k key is "token_id:N".
Completions put the sampled token first in each top-k dict and add it as entry k+1 when it is outside
the top-k; chat cuts its list to the requested length from that same sampled-first order. Both are
sorted here by logprob (ties by id) and cut to k.

Speed: a response is handled as a whole. After orjson, every position of every choice goes into flat
lists (C-level chain/map, no per-candidate tuples), "token_id:N" keys become ids through a cache, and one
stable argsort over a padded [positions, candidates] array ranks all positions at once; each choice's
arrays are row slices of the result. Anything unexpected in a body sends it through the plain reference
path below, which defines the behaviour (its errors included).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from app.codecs.topk import MISSING_ID, TopKArrays

TOKEN_ID_PREFIX = "token_id:"
# The chat endpoint reports a logprob of -inf as -9999.
CHAT_NEG_INF = -9999.0
# Pads sort after every real candidate of equal (-inf) logprob.
_PAD_ID = np.iinfo(np.int64).max
_INT32 = np.iinfo(np.int32)
# Distinct keys the id cache keeps (a vocabulary is at most a few hundred thousand).
_ID_CACHE_LIMIT = 1 << 20

_get_token = itemgetter("token")
_get_logprob = itemgetter("logprob")
_EMPTY: dict[str, Any] = {}


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


def token_id(key: str) -> int:
    """The id in a "token_id:N" key."""
    if not key.startswith(TOKEN_ID_PREFIX):
        raise TeacherResponseError(f"token key {key[:40]!r} is not of the form 'token_id:N'")
    return int(key[len(TOKEN_ID_PREFIX) :])


class _IdCache(dict[str, int]):
    """ "token_id:N" -> N; a miss is parsed (and checked) by token_id."""

    def __missing__(self, key: str) -> int:
        value = token_id(key)
        if len(self) < _ID_CACHE_LIMIT:
            self[key] = value
        return value


_IDS = _IdCache()
_lookup_id = _IDS.__getitem__


class _Fallback(Exception):
    """The fast path met something it does not handle; the reference path decides."""


def parse_completions(body: bytes, *, num_prompts: int, n: int, k: int) -> list[ParsedCompletion]:
    """Parse a /v1/completions response for a list of num_prompts prompts with n samples each."""
    data = _load(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != num_prompts * n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise TeacherResponseError(f"expected {num_prompts * n} choices, got {got}")
    try:
        out = _fast_completions(choices, n=n, k=k)
    except (_Fallback, TeacherResponseError, KeyError, TypeError, ValueError, AttributeError, OverflowError):
        out = _reference_completions(choices, n=n, k=k)
    out.sort(key=lambda c: (c.prompt_index, c.sample_index))
    _check_samples(out, num_prompts=num_prompts, n=n)
    return out


def parse_chat(body: bytes, *, n: int, k: int, requested_top: int) -> list[ParsedCompletion]:
    """Parse a /v1/chat/completions response for one conversation with n samples.

    `requested_top` is the top_logprobs sent. When it is k+1 the true top-k is always present. When it
    equals k and the sampled token sorts last, chat may have dropped the real k-th best for it, so that
    slot is marked missing rather than guessed.
    """
    data = _load(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise TeacherResponseError(f"expected {n} choices, got {got}")
    prompt_token_ids = data.get("prompt_token_ids")
    try:
        out = _fast_chat(choices, k=k, requested_top=requested_top, prompt_token_ids=prompt_token_ids)
    except (_Fallback, TeacherResponseError, KeyError, TypeError, ValueError, AttributeError, OverflowError):
        out = _reference_chat(choices, k=k, requested_top=requested_top, prompt_token_ids=prompt_token_ids)
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


# ------------------------------------------------------------------------------------------- fast path


def _logprobs(values: list[Any]) -> npt.NDArray[np.float64]:
    """Logprobs as float64, with None and the chat's -9999 (or below) as -inf."""
    array = np.array(values)
    if array.ndim != 1:
        raise _Fallback
    if array.dtype.kind in "fiub":
        array = array.astype(np.float64, copy=False)
    else:  # None, or anything odd: the reference conversion (and its errors)
        array = np.array([_clean(v) for v in values], dtype=np.float64)
    array[array <= CHAT_NEG_INF] = -np.inf
    return array


def _ids(keys: Iterable[str], count: int) -> npt.NDArray[np.int64]:
    """Ids of `count` "token_id:N" keys; ids outside int32 go to the reference path (which raises)."""
    ids = np.fromiter(map(_lookup_id, keys), dtype=np.int64, count=count)
    if ids.size and (int(ids.max()) >= _INT32.max or int(ids.min()) < _INT32.min):
        raise _Fallback
    return ids


def _rank(
    counts: npt.NDArray[np.int64], cand_ids: npt.NDArray[np.int64], cand_lps: npt.NDArray[np.float64], k: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """Each position's candidates (flat, `counts` per position) sorted by logprob then id, cut/padded to k."""
    t = len(counts)
    width = int(counts.max()) if t else 0
    keep = min(k, width)
    if keep == 0:
        return np.full((t, k), MISSING_ID, dtype=np.int32), np.full((t, k), -np.inf, dtype=np.float32)
    if int(counts.min()) == width:
        pad_ids = cand_ids.reshape(t, width)
        pad_lps = cand_lps.reshape(t, width)
    else:  # pad each position to `width`: pads rank after every real candidate, even one at -inf
        starts = np.zeros(t, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        dest = np.arange(len(cand_ids)) + np.repeat(np.arange(0, t * width, width) - starts, counts)
        flat_ids = np.full(t * width, _PAD_ID, dtype=np.int64)
        flat_lps = np.full(t * width, -np.inf)
        flat_ids[dest] = cand_ids
        flat_lps[dest] = cand_lps
        pad_ids = flat_ids.reshape(t, width)
        pad_lps = flat_lps.reshape(t, width)
    neg_lps = 0.0 - pad_lps  # 0.0 - x also makes -0.0 and 0.0 one key: Python's sort ties them
    key = _sort_key(neg_lps, pad_ids)
    cols = keep if key is not None else width  # a tie group may start anywhere in the row
    order = np.argsort(neg_lps if key is None else key, axis=1, kind="stable")
    base = np.arange(0, t * width, width)[:, None]
    flat = order[:, :cols] + base
    s_ids = pad_ids.ravel()[flat]
    if key is None and cols > 1:
        # The stable sort kept equal logprobs in input order; rows where that is not id order get a lexsort.
        s_lps = neg_lps.ravel()[flat]
        ties = ((s_lps[:, 1:] == s_lps[:, :-1]) & (s_ids[:, 1:] < s_ids[:, :-1])).any(axis=1)
        if ties.any():
            fix = np.flatnonzero(ties)
            flat[fix] = np.lexsort((pad_ids[fix], neg_lps[fix]), axis=-1)[:, :cols] + base[fix]
            s_ids = pad_ids.ravel()[flat]
    best_ids = s_ids[:, :keep]
    best_lps = pad_lps.ravel()[flat[:, :keep]]
    if keep == k and int(counts.min()) >= keep:
        return best_ids.astype(np.int32), best_lps.astype(np.float32)
    ids = np.full((t, k), MISSING_ID, dtype=np.int32)
    lps = np.full((t, k), -np.inf, dtype=np.float32)
    real = best_ids != _PAD_ID
    ids[:, :keep] = np.where(real, best_ids, MISSING_ID)
    lps[:, :keep] = np.where(real, best_lps, -np.inf)
    return ids, lps


def _sort_key(neg_lps: npt.NDArray[np.float64], ids: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64] | None:
    """One uint64 per candidate ordering like (-logprob, id): the float32 bits made order-preserving, then
    the id. Only when every logprob is a float32 value (vLLM's are), so the float32 order is exact."""
    as32 = neg_lps.astype(np.float32)
    if not np.array_equal(as32, neg_lps):
        return None
    bits = as32.view(np.uint32)
    ordered = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    # Real ids are int32 (checked); pads (int64 max) clip to the largest key and keep input order among
    # themselves, after any real id. An id of exactly int32 max would tie with the pads: see _ids.
    biased = (np.minimum(ids, _INT32.max) + (1 << 31)).astype(np.uint64)
    return (ordered << np.uint64(32)) | biased


def _split(total: int, lengths: list[int]) -> list[slice]:
    bounds = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
    if bounds[-1] != total:
        raise _Fallback
    return [slice(a, b) for a, b in pairwise(bounds)]


def _fast_completions(choices: list[Any], *, n: int, k: int) -> list[ParsedCompletion]:
    lengths: list[int] = []
    sampled_ids: list[Any] = []
    sampled_lps: list[Any] = []
    tops: list[Any] = []
    for choice in choices:
        logprobs = choice.get("logprobs")
        if not logprobs or not isinstance(logprobs, dict):
            raise _Fallback
        keys = logprobs["tokens"]
        token_ids = choice.get("token_ids")
        ids = keys if token_ids is None else token_ids
        top = logprobs.get("top_logprobs") or [None] * len(keys)
        values = logprobs["token_logprobs"]
        if not (type(ids) is list and type(values) is list and type(top) is list):
            raise _Fallback
        if not (len(ids) == len(values) == len(top)):
            raise _Fallback
        if token_ids is None:
            ids = [_lookup_id(key) for key in keys]
        lengths.append(len(ids))
        sampled_ids.extend(ids)
        sampled_lps.extend(values)
        tops.extend(top)
    positions = [p or _EMPTY for p in tops]
    if any(type(p) is not dict for p in positions):
        raise _Fallback
    counts = np.fromiter(map(len, positions), dtype=np.int64, count=len(positions))
    total = int(counts.sum())
    cand_ids = _ids(chain.from_iterable(positions), total)
    cand_lps = _logprobs(list(chain.from_iterable(map(dict.values, positions))))
    topk_ids, topk_lps = _rank(counts, cand_ids, cand_lps, k)
    all_ids = np.asarray(sampled_ids, dtype=np.int32)
    all_lps = _logprobs(sampled_lps).astype(np.float32)
    out: list[ParsedCompletion] = []
    for choice, rows in zip(choices, _split(len(positions), lengths), strict=True):
        index = int(choice["index"])
        out.append(
            ParsedCompletion(
                prompt_index=index // n,
                sample_index=index % n,
                text=choice.get("text") or "",
                finish_reason=choice.get("finish_reason"),
                arrays=TopKArrays(all_ids[rows], all_lps[rows], topk_ids[rows], topk_lps[rows]),
                prompt_token_ids=choice.get("prompt_token_ids"),
            )
        )
    return out


def _fast_chat(
    choices: list[Any], *, k: int, requested_top: int, prompt_token_ids: list[int] | None
) -> list[ParsedCompletion]:
    lengths: list[int] = []
    given_ids: list[Any] = []
    entries: list[Any] = []
    with_ids = 0
    for choice in choices:
        content = (choice.get("logprobs") or {}).get("content")
        if type(content) is not list:
            raise _Fallback
        token_ids = choice.get("token_ids")
        if token_ids is not None:
            if type(token_ids) is not list or len(token_ids) != len(content):
                raise _Fallback
            given_ids.extend(token_ids)
            with_ids += 1
        lengths.append(len(content))
        entries.extend(content)
    if with_ids not in (0, len(choices)):
        raise _Fallback
    sampled = _ids(map(_get_token, entries), len(entries)).astype(np.int32)
    all_ids = np.asarray(given_ids, dtype=np.int32) if with_ids else sampled
    all_lps = _logprobs(list(map(_get_logprob, entries))).astype(np.float32)
    positions = [e.get("top_logprobs") or [] for e in entries]
    if any(type(p) is not list for p in positions):
        raise _Fallback
    counts = np.fromiter(map(len, positions), dtype=np.int64, count=len(positions))
    candidates = list(chain.from_iterable(positions))
    cand_ids = _ids(map(_get_token, candidates), len(candidates))
    cand_lps = _logprobs(list(map(_get_logprob, candidates)))
    topk_ids, topk_lps = _rank(counts, cand_ids, cand_lps, k)
    if k > 0 and requested_top == k:
        last_is_sampled = topk_ids[:, k - 1] == sampled
        topk_ids[last_is_sampled, k - 1] = MISSING_ID
        topk_lps[last_is_sampled, k - 1] = -np.inf
    out: list[ParsedCompletion] = []
    for choice, rows in zip(choices, _split(len(entries), lengths), strict=True):
        message = choice.get("message") or {}
        out.append(
            ParsedCompletion(
                prompt_index=0,
                sample_index=int(choice["index"]),
                text=message.get("content") or "",
                finish_reason=choice.get("finish_reason"),
                arrays=TopKArrays(all_ids[rows], all_lps[rows], topk_ids[rows], topk_lps[rows]),
                prompt_token_ids=prompt_token_ids,
            )
        )
    return out


# -------------------------------------------------------------------------------------- reference path


def _clean(logprob: float | None) -> float:
    if logprob is None or logprob <= CHAT_NEG_INF:
        return float("-inf")
    return float(logprob)


def _topk_rows(candidates: list[list[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
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


def _reference_completions(choices: list[Any], *, n: int, k: int) -> list[ParsedCompletion]:
    """One choice at a time with Python sorting: slow, and the definition of the behaviour."""
    out: list[ParsedCompletion] = []
    for choice in choices:
        index = int(choice["index"])
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
        sampled_lps = np.asarray([_clean(x) for x in logprobs["token_logprobs"]], dtype=np.float32)
        top = logprobs.get("top_logprobs") or [None] * len(token_keys)
        candidates = [[(token_id(key), _clean(lp)) for key, lp in (pos or {}).items()] for pos in top]
        if not (len(ids) == len(sampled_lps) == len(candidates)):
            raise TeacherResponseError("token ids, logprobs and top-k lists differ in length")
        topk_ids, topk_lps = _topk_rows(candidates, k)
        out.append(
            ParsedCompletion(
                prompt_index=index // n,
                sample_index=index % n,
                text=choice.get("text") or "",
                finish_reason=choice.get("finish_reason"),
                arrays=TopKArrays(ids, sampled_lps, topk_ids, topk_lps),
                prompt_token_ids=choice.get("prompt_token_ids"),
            )
        )
    return out


def _reference_chat(
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
        sampled_lps = np.asarray([_clean(entry["logprob"]) for entry in content], dtype=np.float32)
        candidates = [
            [(token_id(c["token"]), _clean(c["logprob"])) for c in entry.get("top_logprobs") or []] for entry in content
        ]
        if len(ids) != len(candidates):
            raise TeacherResponseError("token ids and logprobs content differ in length")
        topk_ids, topk_lps = _topk_rows(candidates, k)
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
        pairs = [(int(key), _clean(value["logprob"])) for key, value in entry.items()]
        sampled[pos] = _clean(entry[str(token)]["logprob"])
        candidates.append(pairs)
    ids, lps = _topk_rows(candidates, k)
    return TopKArrays(np.asarray(response_ids, dtype=np.int32), sampled, ids, lps)
