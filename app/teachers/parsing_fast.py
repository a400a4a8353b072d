"""Fast parsing of vLLM responses in numpy, equal to parsing_reference's result on every body it accepts.

A response is handled as a whole: after orjson every position of every choice goes into flat lists,
"token_id:N" keys become ids through a cache, and one stable argsort over a padded [positions, candidates]
array ranks all positions at once. Anything unexpected raises Fallback and the reference path decides.
The compiled scanner's path (parsing_scan) comes first when it is built; this one serves the bodies it
declines.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from app.codecs.topk import MISSING_ID, TopKArrays
from app.teachers.parsing_reference import (
    CHAT_NEG_INF,
    ParsedCompletion,
    clean_logprob,
    token_id,
)

# Pads sort after every real candidate of equal (-inf) logprob.
_PAD_ID = np.iinfo(np.int64).max
_INT32 = np.iinfo(np.int32)
# Distinct keys the id cache keeps (a vocabulary is at most a few hundred thousand).
_ID_CACHE_LIMIT = 1 << 20

_get_token = itemgetter("token")
_get_logprob = itemgetter("logprob")
EMPTY: dict[str, Any] = {}


class Fallback(Exception):
    """The fast path met something it does not handle; the reference path decides."""


class _IdCache(dict[str, int]):
    """ "token_id:N" -> N; a miss is parsed (and checked) by token_id."""

    def __missing__(self, key: str) -> int:
        value = token_id(key)
        if len(self) < _ID_CACHE_LIMIT:
            self[key] = value
        return value


_IDS = _IdCache()
lookup_id = _IDS.__getitem__


def logprobs_array(values: list[Any]) -> npt.NDArray[np.float64]:
    """Logprobs as float64, with None and the chat's -9999 (or below) as -inf."""
    array = np.array(values)
    if array.ndim != 1:
        raise Fallback
    if array.dtype.kind in "fiub":
        array = array.astype(np.float64, copy=False)
    else:  # None, or anything odd: the reference conversion (and its errors)
        array = np.array([clean_logprob(v) for v in values], dtype=np.float64)
    array[array <= CHAT_NEG_INF] = -np.inf
    return array


def _ids(keys: Iterable[str], count: int) -> npt.NDArray[np.int64]:
    """Ids of `count` "token_id:N" keys; ids outside int32 go to the reference path (which raises)."""
    ids = np.fromiter(map(lookup_id, keys), dtype=np.int64, count=count)
    if ids.size and (int(ids.max()) >= _INT32.max or int(ids.min()) < _INT32.min):
        raise Fallback
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
        raise Fallback
    return [slice(a, b) for a, b in pairwise(bounds)]


def fast_completions(choices: list[Any], *, n: int, k: int) -> list[ParsedCompletion]:
    lengths: list[int] = []
    sampled_ids: list[Any] = []
    sampled_lps: list[Any] = []
    tops: list[Any] = []
    for choice in choices:
        logprobs = choice.get("logprobs")
        if not logprobs or not isinstance(logprobs, dict):
            raise Fallback
        keys = logprobs["tokens"]
        token_ids = choice.get("token_ids")
        ids = keys if token_ids is None else token_ids
        top = logprobs.get("top_logprobs") or [None] * len(keys)
        values = logprobs["token_logprobs"]
        if not (type(ids) is list and type(values) is list and type(top) is list):
            raise Fallback
        if not (len(ids) == len(values) == len(top)):
            raise Fallback
        if token_ids is None:
            ids = [lookup_id(key) for key in keys]
        lengths.append(len(ids))
        sampled_ids.extend(ids)
        sampled_lps.extend(values)
        tops.extend(top)
    positions = [p or EMPTY for p in tops]
    if any(type(p) is not dict for p in positions):
        raise Fallback
    counts = np.fromiter(map(len, positions), dtype=np.int64, count=len(positions))
    total = int(counts.sum())
    cand_ids = _ids(chain.from_iterable(positions), total)
    cand_lps = logprobs_array(list(chain.from_iterable(map(dict.values, positions))))
    topk_ids, topk_lps = _rank(counts, cand_ids, cand_lps, k)
    all_ids = np.asarray(sampled_ids, dtype=np.int32)
    all_lps = logprobs_array(sampled_lps).astype(np.float32)
    out: list[ParsedCompletion] = []
    for choice, rows in zip(choices, _split(len(positions), lengths), strict=True):
        arrays = TopKArrays(all_ids[rows], all_lps[rows], topk_ids[rows], topk_lps[rows])
        out.append(ParsedCompletion.of_choice(choice, n, arrays))
    return out


def fast_chat(
    choices: list[Any], *, k: int, requested_top: int, prompt_token_ids: list[int] | None
) -> list[ParsedCompletion]:
    lengths: list[int] = []
    given_ids: list[Any] = []
    entries: list[Any] = []
    with_ids = 0
    for choice in choices:
        content = (choice.get("logprobs") or {}).get("content")
        if type(content) is not list:
            raise Fallback
        token_ids = choice.get("token_ids")
        if token_ids is not None:
            if type(token_ids) is not list or len(token_ids) != len(content):
                raise Fallback
            given_ids.extend(token_ids)
            with_ids += 1
        lengths.append(len(content))
        entries.extend(content)
    if with_ids not in (0, len(choices)):
        raise Fallback
    sampled = _ids(map(_get_token, entries), len(entries)).astype(np.int32)
    all_ids = np.asarray(given_ids, dtype=np.int32) if with_ids else sampled
    all_lps = logprobs_array(list(map(_get_logprob, entries))).astype(np.float32)
    positions = [e.get("top_logprobs") or [] for e in entries]
    if any(type(p) is not list for p in positions):
        raise Fallback
    counts = np.fromiter(map(len, positions), dtype=np.int64, count=len(positions))
    candidates = list(chain.from_iterable(positions))
    cand_ids = _ids(map(_get_token, candidates), len(candidates))
    cand_lps = logprobs_array(list(map(_get_logprob, candidates)))
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
