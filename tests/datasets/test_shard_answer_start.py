"""Dataset shards keep each row's reasoning boundary (answer_start), null where the row has none."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from app.codecs.topk import DEFAULT_CODEC, TopKArrays
from app.datasets.builder import ShardSet
from app.datasets.storage import LocalStorage
from app.exporters.rows import ExportRow

JOB = uuid.UUID("00000000-0000-4000-8000-000000000002")


def _row(item_id: int, answer_start: int | None) -> ExportRow:
    t, k = 5, 4
    arrays = TopKArrays(
        token_ids=np.arange(t, dtype=np.int32),
        token_logprobs=np.full(t, -0.5, np.float32),
        topk_ids=np.arange(t * k, dtype=np.int32).reshape(t, k),
        topk_logprobs=-np.tile(np.arange(k, dtype=np.float32), (t, 1)),
    )
    row = ExportRow(JOB, item_id, item_id, None, 0, "p", None, None, "t", "stop", None, arrays)
    return dataclasses.replace(
        row, arrays=DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(arrays)), answer_start=answer_start
    )


def test_shards_carry_answer_start_after_cutting_k(tmp_path: Path) -> None:
    shards = ShardSet(
        LocalStorage(tmp_path),
        "ds",
        "train",
        k=2,
        teachers={JOB: "tiny-reasoning"},
        fingerprint=None,
        lineage={},
        row_group_rows=2,
        row_group_bytes=1 << 20,
        shard_rows=None,
        shard_bytes=None,
    )
    shards.add([_row(1, 3), _row(2, None), _row(3, 5)])
    (info,) = shards.close()
    table = pq.read_table(tmp_path / "ds" / info.name)
    assert table.column("answer_start").to_pylist() == [3, None, 5]
    assert table.column("teacher").to_pylist() == ["tiny-reasoning"] * 3
