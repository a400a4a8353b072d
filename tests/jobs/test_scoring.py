"""Scoring mode: the teacher scores given responses by teacher forcing; position t holds its distribution
for response token t. Checked against the same model run directly through transformers."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import all_records, wait_done

RAW = [
    {"custom_id": "s0", "prompt": "def add(a, b):\n", "response": "    return a + b\n"},
    {"custom_id": "s1", "prompt": "import os\n", "response": "import sys\nfrom pathlib import Path\n"},
    {
        "custom_id": "s2",
        "prompt": "class Stack:\n    def push(self, item):\n",
        "response": "        self.items.append(item)",
    },
]
CHAT = [
    {
        "custom_id": "c0",
        "messages": [
            {"role": "user", "content": "Write a loop."},
            {"role": "assistant", "content": "for i in range(10):\n    print(i)"},
        ],
    },
]


def submit_score(api: httpx.Client, prompts: list[dict], k: int = 5) -> dict:
    response = api.post(
        "/v1/jobs", json={"teacher": "tiny", "kind": "score", "params": {"top_logprobs": k}, "prompts": prompts}
    )
    assert response.status_code == 201, response.text
    return wait_done(api, response.json()["id"])


def test_scores_align_with_transformers(api: httpx.Client, tiny_teacher_dir: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    job = submit_score(api, RAW, k=5)
    assert job["status"] == "completed" and job["kind"] == "score", job
    records = all_records(api, job["id"])
    model = LlamaForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()
    checked = 0
    for record, given in zip(records, RAW, strict=True):
        assert record["text"] == given["response"] and record["finish_reason"] == "scored"
        prompt_ids, response_ids = record["prompt_token_ids"], record["token_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + response_ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1).numpy()
        for t, token in enumerate(response_ids):
            expected = logprobs[len(prompt_ids) + t - 1]  # logits at i predict token i + 1
            top = np.argsort(-expected)[:5]
            assert record["top_logprobs_ids"][t][0] == int(top[0]), f"{record['custom_id']} position {t}"
            assert record["token_logprobs"][t] == pytest.approx(float(expected[token]), abs=1e-3)
            assert record["top_logprobs"][t][0] == pytest.approx(float(expected[top[0]]), abs=4e-3)  # float16
            checked += 1
    assert checked >= 15


def test_chat_scoring_takes_the_assistant_turn(api: httpx.Client) -> None:
    job = submit_score(api, CHAT, k=3)
    assert job["status"] == "completed", job
    (record,) = all_records(api, job["id"])
    assert record["text"] == CHAT[0]["messages"][1]["content"]
    assert len(record["token_ids"]) >= 5 and len(record["top_logprobs_ids"][0]) == 3


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"kind": "score", "prompts": [{"prompt": "a"}]}, ["body", "prompts", 0, "response"]),
        (
            {"kind": "score", "prompts": [{"messages": [{"role": "user", "content": "a"}]}]},
            ["body", "prompts", 0, "messages"],
        ),
        ({"kind": "score", "params": {"n": 2}, "prompts": RAW}, ["body", "params", "n"]),
        ({"prompts": [{"prompt": "a", "response": "b"}]}, ["body", "prompts", 0, "response"]),
        ({"kind": "rank", "prompts": RAW}, ["body", "kind"]),
    ],
)
def test_scoring_input_is_checked(api: httpx.Client, body: dict, loc: list) -> None:
    response = api.post("/v1/jobs", json={"teacher": "tiny", **body})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_export_of_a_scoring_job(api: httpx.Client) -> None:
    import io

    import pyarrow.parquet as pq

    job = submit_score(api, RAW[:2], k=4)
    table = pq.read_table(io.BytesIO(api.get(f"/v1/jobs/{job['id']}/export").content))
    assert table.num_rows == 2 and table.column("finish_reason").to_pylist() == ["scored", "scored"]
    assert [len(x[0]) for x in table.column("topk_ids").to_pylist()] == [4, 4]
