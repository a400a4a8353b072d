"""vLLM's sampling parameters, each sent through a job to the real tiny teacher and seen to take effect
(a check that a parameter silently left out of the request would fail), plus the refusals."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from tests.helpers import all_records, submit, wait_done

PROMPTS = [{"prompt": p} for p in ("def parse(", "import os\n", "class Cache:\n    def ", "for line in ")]
CHAT = [{"messages": [{"role": "user", "content": "write a loop"}]}]


def run(api: httpx.Client, prompts: list[dict[str, Any]] = PROMPTS, **params: Any) -> list[dict[str, Any]]:
    job = wait_done(api, submit(api, prompts, **params)["id"])
    assert job["status"] == "completed", job
    return sorted(all_records(api, job["id"], limit=100), key=lambda r: (r["seq"], r["sample_index"]))


def greedy(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    return run(api, max_tokens=12, temperature=0.0, top_logprobs=2, **params)


def test_min_tokens_and_ignore_eos_hold_off_an_end_of_sequence(api: httpx.Client) -> None:
    """With EOS (id 2 in the tiny teacher) pushed up by a logit bias, a completion ends at once; min_tokens
    holds EOS off that many tokens, ignore_eos runs to max_tokens."""
    eos_first = {"max_tokens": 12, "top_logprobs": 1, "seed": 5, "logit_bias": {"2": 100}}
    ended = run(api, **eos_first)
    assert all(len(r["token_ids"]) <= 1 and r["finish_reason"] == "stop" for r in ended), ended
    held = run(api, **eos_first, min_tokens=8)
    assert all(len(r["token_ids"]) >= 8 for r in held), [len(r["token_ids"]) for r in held]
    ignored = run(api, **eos_first, ignore_eos=True)
    assert all(len(r["token_ids"]) == 12 and r["finish_reason"] == "length" for r in ignored)


def test_logit_bias_removes_the_greedy_token(api: httpx.Client) -> None:
    first = greedy(api)[0]["token_ids"][0]
    biased = greedy(api, logit_bias={str(first): -100})
    assert first not in biased[0]["token_ids"]


def test_stop_token_ids_end_the_completion(api: httpx.Client) -> None:
    tokens = greedy(api)[0]["token_ids"]
    stop = tokens[3]
    cut = greedy(api, stop_token_ids=[stop])[0]
    assert cut["finish_reason"] == "stop" and len(cut["token_ids"]) <= tokens.index(stop) + 1


def test_allowed_token_ids_confine_the_vocabulary(api: httpx.Client) -> None:
    allowed = sorted({t for r in greedy(api) for t in r["token_ids"]})[:6]
    for record in run(api, max_tokens=10, top_logprobs=1, seed=3, allowed_token_ids=allowed):
        assert set(record["token_ids"]) <= set(allowed)


def test_top_k_one_and_min_p_one_are_greedy(api: httpx.Client) -> None:
    base = [r["token_ids"] for r in greedy(api)]
    sampled = [r["token_ids"] for r in run(api, max_tokens=12, top_logprobs=2, temperature=1.0, seed=11)]
    assert sampled != base, "sampling at T=1 matched greedy: the test shows nothing"
    assert [r["token_ids"] for r in run(api, max_tokens=12, top_logprobs=2, seed=11, top_k=1)] == base
    assert [r["token_ids"] for r in run(api, max_tokens=12, top_logprobs=2, seed=11, min_p=1.0)] == base


@pytest.mark.parametrize(
    "penalty", [{"repetition_penalty": 2.0}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}]
)
def test_penalties_change_greedy_text(api: httpx.Client, penalty: dict[str, float]) -> None:
    base = [r["token_ids"] for r in run(api, max_tokens=40, temperature=0.0, top_logprobs=1)]
    assert [r["token_ids"] for r in run(api, max_tokens=40, temperature=0.0, top_logprobs=1, **penalty)] != base


def test_bad_words_are_not_generated(api: httpx.Client) -> None:
    base = greedy(api)
    words = [w for r in base for w in re.findall(r"[A-Za-z_]{3,}", r["text"])]
    assert words, [r["text"] for r in base]
    banned = [r for r in greedy(api, bad_words=[words[0]])]
    assert [r["text"] for r in banned] != [r["text"] for r in base]


def test_include_stop_str_in_output_and_truncate_prompt_tokens(api: httpx.Client) -> None:
    kept = run(api, max_tokens=30, temperature=0.0, top_logprobs=1, stop=["\n"], include_stop_str_in_output=True)
    stopped = [r for r in kept if r["finish_reason"] == "stop"]
    assert stopped and all(r["text"].endswith("\n") for r in stopped)
    cut = greedy(api, truncate_prompt_tokens=2)
    assert {len(r["prompt_token_ids"]) for r in cut} == {2}


def whitespace_tokens(model_dir: Path) -> list[int]:
    """Ids of the tiny teacher's tokens that are only whitespace."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return [i for i in tokenizer.get_vocab().values() if tokenizer.decode([i]) and not tokenizer.decode([i]).strip()]


def test_structured_outputs_choice_regex_and_json(api: httpx.Client, tiny_teacher_dir: Path) -> None:
    choices = run(api, max_tokens=8, top_logprobs=1, seed=1, structured_outputs={"choice": ["yes", "no"]})
    assert {r["text"] for r in choices} <= {"yes", "no"}
    digits = run(api, max_tokens=8, top_logprobs=1, seed=1, structured_outputs={"regex": "[0-9]{3}"})
    assert all(re.fullmatch("[0-9]{3}", r["text"]) for r in digits), [r["text"] for r in digits]
    schema = {
        "type": "object",
        "properties": {"lang": {"enum": ["py", "go"]}},
        "required": ["lang"],
        "additionalProperties": False,
    }
    # JSON allows whitespace anywhere and the tiny teacher loves it: biased away, the object fits in 30 tokens
    no_space = {str(i): -100.0 for i in whitespace_tokens(tiny_teacher_dir)}
    shaped = run(api, max_tokens=30, top_logprobs=1, seed=1, structured_outputs={"json": schema}, logit_bias=no_space)
    texts = [r["text"] for r in shaped]
    assert all(r["finish_reason"] == "stop" for r in shaped), texts
    assert all(json.loads(text)["lang"] in {"py", "go"} for text in texts), texts


def test_chat_generation_prompt_and_continued_final_message(api: httpx.Client) -> None:
    opened = run(api, CHAT, max_tokens=4, temperature=0.0, top_logprobs=1)[0]["prompt_token_ids"]
    closed = run(api, CHAT, max_tokens=4, temperature=0.0, top_logprobs=1, add_generation_prompt=False)[0]
    assert len(closed["prompt_token_ids"]) < len(opened), "the assistant turn was opened anyway"
    turn = [{"messages": [*CHAT[0]["messages"], {"role": "assistant", "content": "for i in"}]}]
    extended = run(
        api,
        turn,
        max_tokens=4,
        temperature=0.0,
        top_logprobs=1,
        add_generation_prompt=False,
        continue_final_message=True,
    )[0]
    ended = run(api, turn, max_tokens=4, temperature=0.0, top_logprobs=1, add_generation_prompt=False)[0]
    assert len(extended["prompt_token_ids"]) < len(ended["prompt_token_ids"]), "the final turn was closed"


def test_params_are_in_the_job_and_its_lineage(api: httpx.Client) -> None:
    job = submit(api, PROMPTS[:1], max_tokens=4, top_k=5, logit_bias={"7": -1.5}, structured_outputs={"regex": "a+"})
    assert job["params"]["top_k"] == 5 and job["params"]["logit_bias"] == {"7": -1.5}
    assert job["params"]["structured_outputs"]["regex"] == "a+"
    wait_done(api, job["id"])
    export = api.get(f"/v1/jobs/{job['id']}/export", params={"format": "parquet"})
    lineage = json.loads(pq.read_schema(io.BytesIO(export.content)).metadata[b"distillery"])
    assert lineage["params"]["top_k"] == 5 and lineage["params"]["structured_outputs"] == {"regex": "a+"}


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"min_tokens": 9, "max_tokens": 4}, ["body", "params"]),
        ({"logit_bias": {"abc": 1.0}}, ["body", "params", "logit_bias"]),
        ({"logit_bias": {"5": 101}}, ["body", "params", "logit_bias"]),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, ["body", "params", "structured_outputs"]),
        ({"structured_outputs": {}}, ["body", "params", "structured_outputs"]),
        ({"add_generation_prompt": True, "continue_final_message": True}, ["body", "params"]),
        ({"top_k": -2}, ["body", "params", "top_k"]),
        ({"stop_token_ids": [-1]}, ["body", "params", "stop_token_ids", 0]),
        ({"guided_json": {}}, ["body", "params", "guided_json"]),
    ],
)
def test_bad_params_are_refused_naming_the_field(api: httpx.Client, params: dict[str, Any], loc: list[Any]) -> None:
    response = api.post("/v1/jobs", json={"teacher": "tiny", "params": params, "prompts": PROMPTS[:1]})
    assert response.status_code == 422, response.text
    assert any(d["loc"][: len(loc)] == loc for d in response.json()["detail"]), response.json()


def test_upload_takes_more_params_as_json_and_refuses_bad_ones(api: httpx.Client) -> None:
    body = b'{"prompt": "def f("}\n'
    good = api.post(
        "/v1/jobs/upload",
        data={
            "teacher": "tiny",
            "max_tokens": "6",
            "sampling": json.dumps({"top_k": 1, "min_tokens": 6, "ignore_eos": True}),
        },
        files={"file": ("p.jsonl", body)},
    )
    assert good.status_code == 201, good.text
    assert good.json()["params"]["ignore_eos"] is True
    record = all_records(api, wait_done(api, good.json()["id"])["id"])[0]
    assert len(record["token_ids"]) == 6
    refusals = [
        ("{", ["body", "sampling"]),
        ('{"top_k": -5}', ["body", "sampling", "top_k"]),
        ('{"max_tokens": 3}', ["body", "sampling"]),
    ]
    for sampling, loc in refusals:
        form = {"teacher": "tiny", "sampling": sampling}
        bad = api.post("/v1/jobs/upload", data=form, files={"file": ("p.jsonl", body)})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == loc, bad.text
