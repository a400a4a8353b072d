"""DistillationDataset and collate on files written by the real ParquetExporter: shapes, alignment, split."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from app.codecs.topk import CODECS, TopKArrays
from app.exporters.parquet import ParquetExporter
from app.exporters.rows import ExportRow
from distillery_student.data import IGNORE_INDEX, DistillationDataset, RowKey, collate, split_by_prompt

JOB = uuid.UUID("00000000-0000-4000-8000-000000000001")
K = 3

V2 = CODECS[2]


def make_row(item_id: int, prompt: list[int] | None, response: list[int], *, sample_index: int = 0) -> ExportRow:
    """A row whose top-k at step t is recognizable: ids [1000 + t, response[t], 2000 + t], logprobs -(t + slot)/4.

    Step 1 stores its last slot as missing (id -1, logprob -inf), as chat does when the server caps k.
    """
    t = len(response)
    topk_ids = np.array([[1000 + i, response[i], 2000 + i] for i in range(t)], dtype=np.int32).reshape(t, K)
    topk_lps = -np.array([[(i + j) / 4 for j in range(K)] for i in range(t)], dtype=np.float32).reshape(t, K)
    if t > 1:
        topk_ids[1, K - 1] = -1
        topk_lps[1, K - 1] = -np.inf
    arrays = TopKArrays(
        token_ids=np.array(response, dtype=np.int32),
        token_logprobs=topk_lps[:, 1].copy(),
        topk_ids=topk_ids,
        topk_logprobs=topk_lps,
    )
    return ExportRow(
        job_id=JOB,
        item_id=item_id,
        seq=item_id,
        custom_id=f"c{item_id}",
        sample_index=sample_index,
        prompt="p",
        messages=None,
        metadata=None,
        text="t",
        finish_reason="length",
        prompt_token_ids=None if prompt is None else np.array(prompt, dtype=np.int32),
        arrays=V2.decode(V2.encode(arrays)),
    )


def write_parquet(path: Path, chunks: list[list[ExportRow]], k: int = K) -> Path:
    """Writes rows through the service's exporter, one row group per chunk."""
    exporter = ParquetExporter(k=k, teacher="tiny", lineage={"job_id": str(JOB), "kind": "generate"})
    data = b"".join(exporter.write(chunk) for chunk in chunks) + exporter.close()
    path.write_bytes(data)
    return path


ROWS = [
    make_row(1, [1, 10, 11], [20, 21, 22, 23]),
    make_row(2, [1, 12], [24, 25]),
    make_row(3, [1, 13, 14, 15, 16], []),
    make_row(4, [1], [26, 27, 28, 29, 30, 31]),
]


@pytest.fixture
def dataset(tmp_path: Path) -> DistillationDataset:
    return DistillationDataset(write_parquet(tmp_path / "a.parquet", [ROWS[:2], ROWS[2:]]))


def test_items_have_the_documented_shapes_and_dtypes(dataset: DistillationDataset) -> None:
    assert len(dataset) == 4 and dataset.k == K
    assert dataset.lineage == [{"job_id": str(JOB), "kind": "generate"}]
    assert dataset.keys[0] == RowKey(str(JOB), 1, 0, "c1")
    ex = dataset[0]
    assert ex["input_ids"].tolist() == [1, 10, 11, 20, 21, 22, 23]
    assert ex["input_ids"].dtype == torch.int64 and ex["labels"].dtype == torch.int64
    assert ex["topk_ids"].shape == (7, K) and ex["topk_ids"].dtype == torch.int64
    assert ex["topk_logprobs"].shape == (7, K) and ex["topk_logprobs"].dtype == torch.float32
    assert ex["topk_mask"].tolist() == [False, False, True, True, True, True, False]
    assert ex["labels"].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 20, 21, 22, 23, IGNORE_INDEX]


@pytest.mark.parametrize("index", range(len(ROWS)))
def test_the_label_at_a_position_is_the_token_whose_teacher_distribution_is_there(
    dataset: DistillationDataset, index: int
) -> None:
    row = ROWS[index]
    ex = dataset[index]
    p = len(row.prompt_token_ids) if row.prompt_token_ids is not None else 0
    targets = ex["topk_mask"].nonzero().squeeze(1).tolist()
    assert targets == list(range(p - 1, p - 1 + row.arrays.num_tokens))
    for t, pos in enumerate(targets):
        # Logits at pos predict the next input token, which is response token t ...
        assert ex["labels"][pos] == ex["input_ids"][pos + 1] == int(row.arrays.token_ids[t])
        # ... and the teacher's top-k there is the one stored for step t (ids 1000 + t, then response[t]).
        assert ex["topk_ids"][pos, 0] == 1000 + t and ex["topk_ids"][pos, 1] == row.arrays.token_ids[t]
        want = torch.from_numpy(row.arrays.topk_logprobs[t].astype(np.float32))
        assert torch.equal(ex["topk_logprobs"][pos], want)
    outside = ~ex["topk_mask"]
    assert torch.all(ex["labels"][outside] == IGNORE_INDEX)
    assert torch.all(ex["topk_ids"][outside] == 0) and torch.all(ex["topk_logprobs"][outside] == 0)


def test_missing_slots_keep_minus_one_and_minus_inf(dataset: DistillationDataset) -> None:
    ex = dataset[0]
    assert ex["topk_ids"][3].tolist() == [1001, 21, -1]
    assert ex["topk_logprobs"][3, 2].item() == float("-inf")


def test_collate_pads_to_the_longest_and_masks_attention(dataset: DistillationDataset) -> None:
    batch = collate([dataset[i] for i in range(4)], pad_id=0)
    lengths = [7, 4, 5, 7]
    assert batch["input_ids"].shape == (4, 7) and batch["topk_ids"].shape == (4, 7, K)
    assert batch["topk_logprobs"].shape == (4, 7, K) and batch["topk_mask"].shape == (4, 7)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for i, length in enumerate(lengths):
        ex = dataset[i]
        assert torch.equal(batch["input_ids"][i, :length], ex["input_ids"])
        assert torch.equal(batch["topk_ids"][i, :length], ex["topk_ids"])
        assert torch.all(batch["input_ids"][i, length:] == 0)
        assert torch.all(batch["labels"][i, length:] == IGNORE_INDEX)
        assert not batch["topk_mask"][i, length:].any()
    assert batch["topk_mask"].sum().item() == sum(r.arrays.num_tokens for r in ROWS)


def test_max_length_keeps_the_first_tokens_and_their_targets(tmp_path: Path) -> None:
    ds = DistillationDataset(write_parquet(tmp_path / "a.parquet", [ROWS]), max_length=5)
    ex = ds[0]  # prompt [1, 10, 11], response [20, 21, 22, 23]
    assert ex["input_ids"].tolist() == [1, 10, 11, 20, 21]
    # Position 4 still predicts response[2] = 22: its teacher target survives the cut.
    assert ex["labels"].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 20, 21, 22]
    assert ex["topk_ids"][4, 0].item() == 1002
    # A one-token prompt: every kept position predicts a response token, the last one past the cut.
    assert ds[3]["input_ids"].tolist() == [1, 26, 27, 28, 29]
    assert ds[3]["labels"].tolist() == [26, 27, 28, 29, 30] and bool(ds[3]["topk_mask"].all())


def test_several_files_and_disagreeing_k(tmp_path: Path) -> None:
    a = write_parquet(tmp_path / "a.parquet", [ROWS[:2]])
    b = write_parquet(tmp_path / "b.parquet", [ROWS[2:]])
    ds = DistillationDataset([a, b])
    assert len(ds) == 4 and ds[3]["input_ids"].tolist() == [1, 26, 27, 28, 29, 30, 31]
    assert ds.max_token_id() == 2005 and ds.num_target_tokens() == 12
    other = tmp_path / "k2.parquet"
    exporter = ParquetExporter(k=2, teacher="tiny", lineage={})
    row = make_row(9, [1], [5])
    a2 = row.arrays
    narrow = TopKArrays(a2.token_ids, a2.token_logprobs, a2.topk_ids[:, :2].copy(), a2.topk_logprobs[:, :2].copy())
    other.write_bytes(exporter.write([dataclasses.replace(row, arrays=narrow)]) + exporter.close())
    with pytest.raises(ValueError, match="disagree on k"):
        DistillationDataset([a, other])


def test_rows_without_prompt_ids_are_refused(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", [[ROWS[0], make_row(5, None, [7])]])
    with pytest.raises(ValueError, match="row 1 has no prompt_token_ids"):
        DistillationDataset(path)


def test_split_keeps_a_prompts_samples_together_and_ignores_order() -> None:
    keys = [RowKey("job-a", item, sample, None) for item in range(400) for sample in range(3)]
    train, val = split_by_prompt(keys, 0.2)
    assert sorted(train + val) == list(range(len(keys)))
    val_items = {keys[i].item_id for i in val}
    assert all(keys[i].item_id not in val_items for i in train)
    assert 0.12 < len(val_items) / 400 < 0.28
    shuffled = keys[::-1]
    _, val2 = split_by_prompt(shuffled, 0.2)
    assert {shuffled[i] for i in val2} == {keys[i] for i in val}
    assert split_by_prompt(keys, 0.0)[1] == []


def test_reasoning_mask_marks_the_targets_before_answer_start(tmp_path: Path) -> None:
    """answer_start 2 of a 4-token response: targets of r[0], r[1] (the thinking and </think>) are reasoning,
    r[2], r[3] are answer; a null answer_start marks nothing, and collate pads the mask with False."""
    rows = [dataclasses.replace(ROWS[0], answer_start=2), ROWS[1]]
    data = DistillationDataset(write_parquet(tmp_path / "r.parquet", [rows]))
    first, second = data[0], data[1]
    # prompt [1, 10, 11] (P = 3): logits position 2 + t predicts r[t].
    assert first["reasoning_mask"].tolist() == [False, False, True, True, False, False, False]
    assert (first["topk_mask"] & ~first["reasoning_mask"]).nonzero().squeeze(1).tolist() == [4, 5]
    assert not second["reasoning_mask"].any()
    batch = collate([first, second], pad_id=0)
    assert batch["reasoning_mask"].shape == (2, 7) and batch["reasoning_mask"].sum().item() == 2


def test_files_without_answer_start_load_with_no_reasoning_marked(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "old.parquet", [ROWS[:2]])
    table = pq.read_table(path)
    pq.write_table(table.drop(["answer_start"]), path)
    data = DistillationDataset(path)
    assert not data[0]["reasoning_mask"].any() and data[0]["topk_mask"].sum().item() == 4
