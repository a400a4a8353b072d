"""A mixed 200-line batch through the official openai client, on the real teacher and both databases:
every line answered once (output or error file), each line's own parameters applied, logprobs in each
output body equal to the job's stored top-k, and the batch's job readable and exportable as any job."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from tests.batches.openai_helpers import (
    chat_line,
    completions_line,
    file_lines,
    jsonl,
    openai_client,
    upload,
    wait_batch,
)
from tests.conftest import Service
from tests.helpers import all_records

OVERLONG = 102  # a completions line (102 % 4 == 2)
# (endpoint, max tokens, logprobs asked, extra body) by line number modulo 4; every line ignores EOS with
# min_tokens = max_tokens, so each completion's length shows which parameters its request really carried.
KINDS: list[tuple[str, int, int | None, dict[str, Any]]] = [
    ("chat", 8, 5, {"logprobs": True, "top_logprobs": 5, "max_tokens": 8}),
    ("chat", 6, None, {"max_completion_tokens": 6, "temperature": 0.5}),
    ("completions", 7, 3, {"logprobs": 3, "max_tokens": 7}),
    ("completions", 4, 0, {"logprobs": 0, "max_tokens": 4, "top_k": 10}),
]


def batch_lines() -> list[dict[str, Any]]:
    lines = []
    for i in range(200):
        kind, max_tokens, _, body = KINDS[i % 4]
        body = {**body, "ignore_eos": True, "min_tokens": max_tokens}
        if i == OVERLONG:  # a completions line past the teacher's 2048-token context
            lines.append(completions_line(f"req-{i}", " ".join(str(n) for n in range(4000)), **body))
        elif kind == "chat":
            lines.append(chat_line(f"req-{i}", f"def f{i}(x):", **body))
        else:
            lines.append(completions_line(f"req-{i}", f"import os\nclass C{i}:", **body))
    return lines


def stored_logprobs(record: dict[str, Any], k: int, chat: bool) -> dict[str, Any]:
    """The logprobs an output body must carry, built from the record the job stored."""
    tokens = [f"token_id:{t}" for t in record["token_ids"]]
    tops = [
        [(f"token_id:{i}", lp) for i, lp in zip(ids[:k], lps[:k], strict=True) if i != -1]
        for ids, lps in zip(record["top_logprobs_ids"], record["top_logprobs"], strict=True)
    ]
    if chat:
        content = [
            {
                "token": t,
                "logprob": lp,
                "bytes": None,
                "top_logprobs": [{"token": c, "logprob": clp, "bytes": None} for c, clp in top],
            }
            for t, lp, top in zip(tokens, record["token_logprobs"], tops, strict=True)
        ]
        return {"content": content, "refusal": None}
    return {
        "tokens": tokens,
        "token_logprobs": record["token_logprobs"],
        "top_logprobs": [dict(top) for top in tops],
        "text_offset": None,
    }


def test_mixed_batch_completes_with_each_lines_parameters_and_stored_logprobs(
    service: Service, api: httpx.Client
) -> None:
    client = openai_client(service)
    file_id = upload(client, jsonl(batch_lines()))
    created = client.batches.create(
        input_file_id=file_id, endpoint="/v1/completions", completion_window="24h", metadata={"run": "mixed"}
    )
    assert created.status in ("in_progress", "completed"), created
    assert created.input_file_id == file_id and created.metadata == {"run": "mixed"}
    batch = wait_batch(client, created.id)
    assert batch.status == "completed", batch
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (200, 199, 1)
    assert batch.completed_at is not None and batch.in_progress_at is not None
    assert batch.expires_at == batch.created_at + 24 * 3600

    outputs = file_lines(client, batch.output_file_id)
    errors = file_lines(client, batch.error_file_id)
    seen = [line["custom_id"] for line in outputs + errors]
    assert sorted(seen) == sorted(f"req-{i}" for i in range(200))  # each exactly once
    assert [e["custom_id"] for e in errors] == [f"req-{OVERLONG}"]
    message = errors[0]["response"]["body"]["error"]["message"]
    assert "context length" in message, message  # the teacher's own words

    job_id = getattr(batch, "job_id", None) or (batch.model_extra or {})["job_id"]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["params"]["top_logprobs"] == 5  # the largest k any line asked for
    records = {r["custom_id"]: r for r in all_records(api, job_id, limit=100)}
    usage_out = 0
    for line in outputs:
        i = int(line["custom_id"].split("-")[1])
        kind, max_tokens, k, _ = KINDS[i % 4]
        body = line["response"]["body"]
        record = records[line["custom_id"]]
        choice = body["choices"][0]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert body["object"] == ("chat.completion" if kind == "chat" else "text_completion")
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        assert text == record["text"]
        assert body["usage"]["completion_tokens"] == len(record["token_ids"]) == max_tokens, line["custom_id"]
        assert body["usage"]["prompt_tokens"] == record["usage"]["prompt_tokens"]
        expected = None if k is None else stored_logprobs(record, k, chat=kind == "chat")
        assert choice["logprobs"] == expected, line["custom_id"]
        usage_out += body["usage"]["completion_tokens"]
    assert batch.usage is not None and batch.usage.output_tokens == usage_out

    export = api.get(f"/v1/jobs/{job_id}/export", params={"format": "parquet"})
    assert export.status_code == 200, export.text
    table = pq.read_table(io.BytesIO(export.content))
    assert table.num_rows == 199


@pytest.mark.parametrize("k", [2])
def test_output_logprobs_are_cut_to_each_lines_own_k(service: Service, api: httpx.Client, k: int) -> None:
    """Two lines asking different k: the job keeps the larger, each body shows its own line's k."""
    client = openai_client(service)
    lines = [
        completions_line("small", "def g():", logprobs=k, max_tokens=3, ignore_eos=True),
        completions_line("large", "def h():", logprobs=k + 3, max_tokens=3, ignore_eos=True),
    ]
    batch = wait_batch(
        client,
        client.batches.create(
            input_file_id=upload(client, jsonl(lines)), endpoint="/v1/completions", completion_window="24h"
        ).id,
    )
    assert batch.status == "completed", batch
    by_id = {line["custom_id"]: line for line in file_lines(client, batch.output_file_id)}
    widths = {
        cid: {len(top) for top in line["response"]["body"]["choices"][0]["logprobs"]["top_logprobs"]}
        for cid, line in by_id.items()
    }
    assert widths == {"small": {k}, "large": {k + 3}}
