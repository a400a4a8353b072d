"""Parquet and JSONL exporters: chunks written in turn form one valid file with one row per sample."""

import dataclasses
import io
import uuid

import numpy as np
import orjson
import pyarrow.parquet as pq

from app.codecs.topk import CODECS, TopKArrays
from app.exporters.jsonl import JsonlExporter
from app.exporters.parquet import METADATA_KEY, ParquetExporter
from app.exporters.rows import ExportRow

JOB = uuid.uuid4()

V2 = CODECS[2]


def row(i: int, t: int, k: int) -> ExportRow:
    rng = np.random.default_rng(i)
    arrays = TopKArrays(
        token_ids=rng.integers(0, 4096, t, dtype=np.int32),
        token_logprobs=-rng.random(t, dtype=np.float32),
        topk_ids=rng.integers(0, 4096, (t, k), dtype=np.int32),
        topk_logprobs=-np.sort(rng.random((t, k), dtype=np.float32), axis=1),
    )
    stored = V2.decode(V2.encode(arrays))  # float16 as stored, which Parquet keeps exactly
    return ExportRow(
        JOB,
        i,
        i,
        f"id{i}",
        0,
        f"prompt {i}",
        None,
        {"i": i},
        f"text {i}",
        "length",
        np.array([1, 2, 3], dtype=np.int32),
        stored,
    )


def test_parquet_streams_chunks_into_one_file() -> None:
    exporter = ParquetExporter(k=5, teacher="tiny", lineage={"job_id": str(JOB)})
    rows = [row(i, t, 5) for i, t in enumerate([3, 0, 7, 1, 4])]
    data = exporter.write(rows[:2]) + exporter.write(rows[2:]) + exporter.write([]) + exporter.close()
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 5
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 2
    assert orjson.loads(table.schema.metadata[METADATA_KEY]) == {"job_id": str(JOB)}
    for got, want in zip(table.to_pylist(), rows, strict=True):
        assert got["token_ids"] == want.arrays.token_ids.tolist()
        assert got["topk_ids"] == want.arrays.topk_ids.tolist()
        assert np.array_equal(
            np.array(got["topk_logprobs"], dtype=np.float16).reshape(-1, 5), want.arrays.topk_logprobs.reshape(-1, 5)
        )
        assert got["custom_id"] == want.custom_id and got["job_id"] == str(JOB) and got["teacher"] == "tiny"
        assert got["prompt_token_ids"] == [1, 2, 3]


def test_jsonl_one_line_per_row_with_minus_inf_as_null() -> None:
    r = row(0, 2, 3)
    lps = np.array(r.arrays.topk_logprobs)
    lps[0, 2] = -np.inf
    r = dataclasses.replace(r, arrays=TopKArrays(r.arrays.token_ids, r.arrays.token_logprobs, r.arrays.topk_ids, lps))
    exporter = JsonlExporter(k=3, teacher="tiny", lineage={})
    lines = (exporter.write([r, row(1, 1, 3)]) + exporter.close()).splitlines()
    assert len(lines) == 2
    first = orjson.loads(lines[0])
    assert first["topk_logprobs"][0][2] is None and first["metadata"] == {"i": 0}


def test_answer_start_is_a_column_of_both_formats_null_without_a_boundary() -> None:
    """The reasoning boundary travels as is: a value where the worker found one, null where it did not."""
    rows = [
        dataclasses.replace(row(0, 6, 3), answer_start=4),
        row(1, 3, 3),
        dataclasses.replace(row(2, 2, 3), answer_start=2),
    ]
    parquet = ParquetExporter(k=3, teacher="tiny", lineage={})
    table = pq.read_table(io.BytesIO(parquet.write(rows) + parquet.close()))
    assert table.schema.field("answer_start").type == "int32"
    assert table.column("answer_start").to_pylist() == [4, None, 2]
    jsonl = JsonlExporter(k=3, teacher="tiny", lineage={})
    lines = (jsonl.write(rows) + jsonl.close()).splitlines()
    assert [orjson.loads(line)["answer_start"] for line in lines] == [4, None, 2]
