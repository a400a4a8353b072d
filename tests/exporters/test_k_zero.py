"""k = 0 (sampled tokens and their own logprobs, no candidates) end to end on the real teacher and both
databases: records, JSONL, Parquet, a dataset and the student loader all carry the tokens and an empty top-k."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import orjson
import pyarrow.parquet as pq

from distillery_student.data import DistillationDataset
from tests.helpers import all_records, submit, wait_done

PROMPTS = [{"custom_id": f"z{i}", "prompt": f"def zero_{i}("} for i in range(6)]


def test_k_zero_from_records_to_the_student_loader(api: httpx.Client, tmp_path: Path) -> None:
    job = wait_done(api, submit(api, PROMPTS, max_tokens=5, top_logprobs=0, seed=3)["id"])
    assert job["status"] == "completed", job
    records = all_records(api, job["id"], limit=100)
    assert len(records) == len(PROMPTS)
    tokens = {r["custom_id"]: r["token_ids"] for r in records}
    assert all(tokens.values()), "a record without tokens"
    for r in records:
        assert r["top_logprobs_ids"] == [[] for _ in r["token_ids"]] and r["top_logprobs"] == r["top_logprobs_ids"]
        assert len(r["token_logprobs"]) == len(r["token_ids"])

    jsonl = api.get(f"/v1/jobs/{job['id']}/export", params={"format": "jsonl"})
    assert jsonl.status_code == 200, jsonl.text
    lines = [orjson.loads(line) for line in jsonl.content.splitlines()]
    assert {row["custom_id"]: row["token_ids"] for row in lines} == tokens

    parquet = api.get(f"/v1/jobs/{job['id']}/export", params={"format": "parquet"})
    assert parquet.status_code == 200 and parquet.content, "an empty Parquet body"
    table = pq.read_table(io.BytesIO(parquet.content))
    assert {row["custom_id"]: row["token_ids"] for row in table.to_pylist()} == tokens
    assert orjson.loads(table.schema.metadata[b"distillery"])["params"]["top_logprobs"] == 0

    response = api.post("/v1/datasets", json={"name": "k-zero", "jobs": [job["id"]]})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["status"] == "ready" and dataset["manifest"]["top_k"] == 0, dataset
    paths = []
    for entry in dataset["manifest"]["files"]:
        body = api.get(f"/v1/datasets/{dataset['id']}/files/{entry['name']}")
        assert body.status_code == 200 and len(body.content) == entry["size"]
        (tmp_path / entry["name"]).write_bytes(body.content)
        paths.append(str(tmp_path / entry["name"]))
    loaded = DistillationDataset(paths)
    assert loaded.k == 0 and len(loaded) == len(PROMPTS)
    example = loaded[0]
    positions = int(example["topk_mask"].sum())
    assert positions > 0 and tuple(example["topk_ids"].shape) == (len(example["input_ids"]), 0)
