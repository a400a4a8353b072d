"""DistillationDataset: Distillery's Parquet export as next-token training examples with teacher top-k targets.

Alignment (the one convention everything here follows). A row has prompt ids p[0..P) and generated ids
r[0..T), and top-k row t is the teacher's distribution over r[t] given p + r[:t]. The example is

    input_ids = p + r                                   (length L = P + T)

and a causal LM's logits at position i are its prediction of the token at position i + 1. So logits
position i = P - 1 + t predicts r[t], and every per-position tensor is indexed by *logits* position:

    labels[P - 1 + t]        = r[t]                     (already shifted: compare logits[i] with labels[i])
    topk_ids[P - 1 + t]      = the teacher's top-k ids for r[t]
    topk_logprobs[P - 1 + t] = their logprobs (a missing slot keeps id -1 and logprob -inf)
    topk_mask[P - 1 + t]     = True

Positions 0 .. P - 2 (inside the prompt) and L - 1 (after the last token) carry no target: labels -100,
topk ids and logprobs 0, mask False. A reasoning teacher's rows may carry `answer_start` (index in r of the
first answer token after its end-of-reasoning token); then reasoning_mask[P - 1 + t] = t < answer_start (the
thinking and its closing token), so `topk_mask & ~reasoning_mask` trains on answers only. Rows without one
(null, or an export from before the column) have no position marked as reasoning. Labels are pre-shifted,
so do NOT pass them to a Hugging Face model's `labels=` argument (it would shift them again); use
`distillery_student.loss.kd_loss` on the logits instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100
"""Label of positions that predict nothing (PyTorch's cross-entropy default)."""

METADATA_KEY = b"distillery"
_COLUMNS = [
    "job_id",
    "item_id",
    "sample_index",
    "custom_id",
    "prompt_token_ids",
    "token_ids",
    "topk_ids",
    "topk_logprobs",
    "answer_start",
]
_TOPK_COLUMNS = {"topk_ids", "topk_logprobs"}  # absent from a k = 0 export
_OPTIONAL_COLUMNS = {*_TOPK_COLUMNS, "answer_start"}  # answer_start: absent from older exports
NO_ANSWER_START = -1
"""answer_start of a row without a reasoning boundary."""

Example = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RowKey:
    """Where a row came from: enough to split deterministically and to trace an example back to its job."""

    job_id: str
    item_id: int
    sample_index: int
    custom_id: str | None


@dataclass(frozen=True)
class _Shard:
    """One file's columns as flat numpy arrays plus row offsets, so no per-candidate Python objects exist."""

    prompt_offsets: npt.NDArray[np.int64]
    prompt_ids: npt.NDArray[np.int32]
    token_offsets: npt.NDArray[np.int64]
    token_ids: npt.NDArray[np.int32]
    topk_ids: npt.NDArray[np.int32]
    topk_logprobs: npt.NDArray[np.float16]
    answer_start: npt.NDArray[np.int64]

    @property
    def num_rows(self) -> int:
        return len(self.token_offsets) - 1


def _list_rows(column: Any, k: int | None = None) -> tuple[npt.NDArray[np.int64], Any]:
    """A list column as (row offsets from 0, its values as one numpy array; [N, k] for fixed-size lists).

    `ListArray.offsets` accounts for slicing while `.values` does not, so values are cut to the rows' span.
    """
    offsets = np.asarray(column.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    child = column.values
    if k is None:
        values = child.to_numpy(zero_copy_only=False)
    else:
        # FixedSizeListArray.flatten() honours the child's own offset; reshape back to one row per position.
        values = child.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
    return offsets - offsets[0], values[offsets[0] : offsets[-1]]


def _answer_starts(table: Any) -> npt.NDArray[np.int64]:
    """Each row's answer_start, NO_ANSWER_START where it is null or the file has no such column."""
    if "answer_start" not in table.column_names:
        return np.full(table.num_rows, NO_ANSWER_START, np.int64)
    column = table.column("answer_start").combine_chunks().fill_null(NO_ANSWER_START)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def _read_shard(path: Path) -> tuple[_Shard, list[RowKey], int, dict[str, Any]]:
    """Reads one export file into a shard, its row keys, its k and its lineage metadata."""
    present = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in _COLUMNS if c in present or c not in _OPTIONAL_COLUMNS])
    raw_meta = (table.schema.metadata or {}).get(METADATA_KEY)
    lineage: dict[str, Any] = orjson.loads(raw_meta) if raw_meta else {}

    prompts = table.column("prompt_token_ids").combine_chunks()
    if prompts.null_count:
        first = int(np.argmax(prompts.is_null().to_numpy(zero_copy_only=False)))
        raise ValueError(f"{path}: row {first} has no prompt_token_ids, so it cannot be aligned for training")
    prompt_offsets, prompt_ids = _list_rows(prompts)
    token_offsets, token_ids = _list_rows(table.column("token_ids").combine_chunks())
    if "topk_ids" in table.column_names:
        topk_ids_col = table.column("topk_ids").combine_chunks()
        k = int(topk_ids_col.type.value_type.list_size)
        ids_offsets, topk_ids = _list_rows(topk_ids_col, k)
        lps_offsets, topk_lps = _list_rows(table.column("topk_logprobs").combine_chunks(), k)
    else:  # a k = 0 export: the sampled tokens only
        k, ids_offsets, lps_offsets = 0, token_offsets, token_offsets
        topk_ids, topk_lps = np.zeros((len(token_ids), 0), np.int32), np.zeros((len(token_ids), 0), np.float16)
    if not (np.array_equal(token_offsets, ids_offsets) and np.array_equal(token_offsets, lps_offsets)):
        raise ValueError(f"{path}: token_ids, topk_ids and topk_logprobs disagree on the number of positions")
    shard = _Shard(
        prompt_offsets=prompt_offsets,
        prompt_ids=prompt_ids.astype(np.int32, copy=False),
        token_offsets=token_offsets,
        token_ids=token_ids.astype(np.int32, copy=False),
        topk_ids=topk_ids.astype(np.int32, copy=False),
        topk_logprobs=topk_lps.astype(np.float16, copy=False),
        answer_start=_answer_starts(table),
    )
    keys = [
        RowKey(str(job), int(item), int(sample), custom)
        for job, item, sample, custom in zip(
            table.column("job_id").to_pylist(),
            table.column("item_id").to_pylist(),
            table.column("sample_index").to_pylist(),
            table.column("custom_id").to_pylist(),
            strict=True,
        )
    ]
    return shard, keys, k, lineage


class DistillationDataset(Dataset[Example]):
    """Rows of one or more Distillery Parquet exports as aligned tensors (see the module docstring).

    Each item is a dict: `input_ids` [L] int64, `labels` [L] int64, `topk_ids` [L, k] int64, `topk_logprobs`
    [L, k] float32, `topk_mask` [L] bool and `reasoning_mask` [L] bool (targets inside the teacher's
    reasoning). With `max_length`, an example keeps its first `max_length` tokens; targets whose predicting
    position was cut are dropped (a prompt that long leaves none).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], max_length: int | None = None) -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        if not paths:
            raise ValueError("no Parquet files given")
        if max_length is not None and max_length < 2:
            raise ValueError("max_length must be at least 2")
        self.max_length = max_length
        self._shards: list[_Shard] = []
        self.keys: list[RowKey] = []
        self.lineage: list[dict[str, Any]] = []
        self._index: list[tuple[int, int]] = []
        ks: set[int] = set()
        for path in paths:
            shard, keys, k, lineage = _read_shard(Path(path))
            ks.add(k)
            self._index.extend((len(self._shards), row) for row in range(shard.num_rows))
            self._shards.append(shard)
            self.keys.extend(keys)
            self.lineage.append(lineage)
        if len(ks) != 1:
            raise ValueError(f"files disagree on k: {sorted(ks)}")
        self.k = ks.pop()

    def __len__(self) -> int:
        return len(self._index)

    def max_token_id(self) -> int:
        """The largest id in any prompt, response or top-k slot: the student's vocabulary must exceed it."""
        best = -1
        for s in self._shards:
            for arr in (s.prompt_ids, s.token_ids, s.topk_ids):
                if arr.size:
                    best = max(best, int(arr.max()))
        return best

    def num_target_tokens(self) -> int:
        """Generated tokens over all rows (before any max_length cut)."""
        return sum(int(s.token_offsets[-1]) for s in self._shards)

    def __getitem__(self, index: int) -> Example:
        shard_no, row = self._index[index]
        s = self._shards[shard_no]
        prompt = s.prompt_ids[s.prompt_offsets[row] : s.prompt_offsets[row + 1]]
        lo, hi = s.token_offsets[row], s.token_offsets[row + 1]
        response = s.token_ids[lo:hi]
        p, t = len(prompt), len(response)
        length = p + t if self.max_length is None else min(p + t, self.max_length)

        input_ids = torch.from_numpy(np.concatenate([prompt, response])[:length].astype(np.int64))
        labels = torch.full((length,), IGNORE_INDEX, dtype=torch.int64)
        topk_ids = torch.zeros((length, self.k), dtype=torch.int64)
        topk_logprobs = torch.zeros((length, self.k), dtype=torch.float32)
        topk_mask = torch.zeros(length, dtype=torch.bool)
        reasoning_mask = torch.zeros(length, dtype=torch.bool)

        # Logits position p - 1 + j predicts response[j]; keep the positions that exist (>= 0, < length).
        first = max(0, 1 - p)  # with an empty prompt nothing predicts response[0]
        last = min(t, length - p + 1)
        if last > first:
            pos = slice(p - 1 + first, p - 1 + last)
            labels[pos] = torch.from_numpy(response[first:last].astype(np.int64))
            topk_ids[pos] = torch.from_numpy(s.topk_ids[lo + first : lo + last].astype(np.int64))
            topk_logprobs[pos] = torch.from_numpy(s.topk_logprobs[lo + first : lo + last].astype(np.float32))
            topk_mask[pos] = True
            thinking = min(int(s.answer_start[row]), last)
            if thinking > first:
                reasoning_mask[p - 1 + first : p - 1 + thinking] = True
        return {
            "input_ids": input_ids,
            "labels": labels,
            "topk_ids": topk_ids,
            "topk_logprobs": topk_logprobs,
            "topk_mask": topk_mask,
            "reasoning_mask": reasoning_mask,
        }


def collate(batch: Sequence[Example], pad_id: int) -> Example:
    """Right-pads a list of examples to the longest one and adds `attention_mask` (1 = real token)."""
    if not batch:
        raise ValueError("empty batch")
    length = max(int(ex["input_ids"].shape[0]) for ex in batch)
    k = int(batch[0]["topk_ids"].shape[1])
    n = len(batch)
    out: Example = {
        "input_ids": torch.full((n, length), pad_id, dtype=torch.int64),
        "attention_mask": torch.zeros((n, length), dtype=torch.int64),
        "labels": torch.full((n, length), IGNORE_INDEX, dtype=torch.int64),
        "topk_ids": torch.zeros((n, length, k), dtype=torch.int64),
        "topk_logprobs": torch.zeros((n, length, k), dtype=torch.float32),
        "topk_mask": torch.zeros((n, length), dtype=torch.bool),
        "reasoning_mask": torch.zeros((n, length), dtype=torch.bool),
    }
    for i, ex in enumerate(batch):
        size = int(ex["input_ids"].shape[0])
        out["attention_mask"][i, :size] = 1
        for name in ("input_ids", "labels", "topk_ids", "topk_logprobs", "topk_mask", "reasoning_mask"):
            out[name][i, :size] = ex[name]
    return out


def holdout_fraction_of(key: RowKey) -> float:
    """A stable number in [0, 1) per prompt (job_id, item_id): sha256, so it is the same on every machine."""
    digest = hashlib.sha256(f"{key.job_id}\x00{key.item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_prompt(keys: Sequence[RowKey], val_fraction: float) -> tuple[list[int], list[int]]:
    """Train and held-out row indices, decided by a hash of (job_id, item_id).

    Hashing the prompt, not the sample, keeps every sample of one prompt on the same side, so held-out
    scores never reward memorizing a prompt seen in training; the split does not depend on row order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    train: list[int] = []
    val: list[int] = []
    for i, key in enumerate(keys):
        (val if holdout_fraction_of(key) < val_fraction else train).append(i)
    return train, val
