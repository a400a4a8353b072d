"""The tiny reasoning teacher, served by a real vLLM for this module: it emits </think>; the service stores
where each completion's answer starts (from token ids) and exports it; `enable_thinking: false` changes the
rendered prompt and the job's recorded chat-template rendering. Services run on SQLite and Postgres."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from distillery_tools.tiny_teacher import default_cache_dir
from distillery_tools.tiny_teacher.build import tiny_teacher_dir
from distillery_tools.tiny_teacher.reasoning import THINK_END, THINK_START, ensure_reasoning_teacher
from distillery_tools.tiny_teacher.serve import VllmServer
from tests.conftest import Service, Teacher
from tests.helpers import all_records, submit, wait_done
from tests.maintained import service_of_its_own

MODEL = "tiny-reasoning"
QUESTIONS = ["What is 23 + 45?", "Reverse the word apple.", "Which is larger, 12 or 31?", "What is 61 + 18?"]
CHATS = [{"messages": [{"role": "user", "content": q}], "custom_id": f"q{i}"} for i, q in enumerate(QUESTIONS)]
PARAMS: dict[str, Any] = {"max_tokens": 64, "temperature": 1.0, "top_logprobs": 5, "n": 4}


@pytest.fixture(scope="module")
def reasoning_dir() -> Path:
    return ensure_reasoning_teacher(default_cache_dir())


@pytest.fixture(scope="module")
def reasoning_teacher(reasoning_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Teacher]:
    log_path = tmp_path_factory.mktemp("vllm-reasoning") / "vllm.log"
    with VllmServer(reasoning_dir, log_path=log_path, served_model_name=MODEL) as server:
        server.wait_ready(timeout=300)
        yield Teacher(base_url=server.base_url, model=MODEL)


@pytest.fixture(scope="module")
def end_id(reasoning_teacher: Teacher) -> int:
    """</think>'s id as the server's own tokenizer has it (one special token)."""
    body = {"model": MODEL, "prompt": THINK_END, "add_special_tokens": False}
    tokens = httpx.post(f"{reasoning_teacher.base_url}/tokenize", json=body, timeout=30).json()["tokens"]
    assert len(tokens) == 1
    return int(tokens[0])


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def reasoning_service(
    request: pytest.FixtureRequest, reasoning_teacher: Teacher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with service_of_its_own(request, reasoning_teacher, tmp_path_factory, "reasoning", {}) as service:
        yield service


@pytest.fixture
def api(reasoning_service: Service) -> Iterator[httpx.Client]:
    with reasoning_service.client() as client:
        yield client


def test_reasoning_build_has_its_own_cache_folder_and_special_markers(reasoning_dir: Path) -> None:
    from transformers import AutoTokenizer

    assert reasoning_dir.name == "tiny-reasoning-v1-seed0"
    assert tiny_teacher_dir(reasoning_dir.parent).name == "tiny-v1-seed0", "the default teacher's cache name holds"
    tok = AutoTokenizer.from_pretrained(reasoning_dir)
    ids = [tok.convert_tokens_to_ids(t) for t in (THINK_START, THINK_END)]
    assert tok.unk_token_id not in ids and set(ids) <= set(tok.all_special_ids)
    messages = [{"role": "user", "content": "Hi"}]
    on = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<|bos|><|user|>\nHi<|eos|>\n<|assistant|>\n<think>"
    assert off == on + "</think>"


def test_the_teacher_closes_its_thinking_then_answers(reasoning_teacher: Teacher, end_id: int) -> None:
    body = {
        "model": MODEL,
        "messages": CHATS[0]["messages"],
        "max_tokens": 64,
        "n": 8,
        "logprobs": True,
        "top_logprobs": 1,
        "return_tokens_as_token_ids": True,
    }
    answer = httpx.post(f"{reasoning_teacher.base_url}/v1/chat/completions", json=body, timeout=120).json()
    closed = 0
    for choice in answer["choices"]:
        ids = [int(t["token"].removeprefix("token_id:")) for t in choice["logprobs"]["content"]]
        if end_id in ids:
            closed += 1
            assert ids.index(end_id) < len(ids) - 1, "an answer follows the thinking"
    assert closed >= 6, f"only {closed} of 8 samples closed their thinking"


def _expected_start(ids: list[int], end_id: int) -> int | None:
    return ids.index(end_id) + 1 if end_id in ids else None


def test_the_stored_boundary_is_the_position_after_think_end_and_exports(
    api: httpx.Client, reasoning_service: Service, end_id: int
) -> None:
    job = submit(api, CHATS, **PARAMS)
    done = wait_done(api, job["id"])
    assert done["status"] == "completed", done
    assert done["teacher_info"]["reasoning_end_token_id"] == end_id

    records = all_records(api, job["id"])
    assert len(records) == len(CHATS) * PARAMS["n"]
    starts = [r["answer_start"] for r in records]
    assert starts == [_expected_start(r["token_ids"], end_id) for r in records]
    assert sum(s is not None for s in starts) >= len(records) // 2, starts
    assert any(s is not None and 1 < s < len(r["token_ids"]) for s, r in zip(starts, records, strict=True))

    parquet = api.get(f"/v1/jobs/{job['id']}/export", params={"format": "parquet"})
    assert parquet.status_code == 200, parquet.text
    table = pq.read_table(io.BytesIO(parquet.content), columns=["item_id", "sample_index", "answer_start"])
    assert table.column("answer_start").to_pylist() == starts
    jsonl = api.get(f"/v1/jobs/{job['id']}/export", params={"format": "jsonl"})
    assert [json.loads(line)["answer_start"] for line in jsonl.text.splitlines()] == starts


def test_enable_thinking_false_changes_the_prompt_and_the_recorded_rendering(
    api: httpx.Client, reasoning_service: Service, end_id: int
) -> None:
    prompts = CHATS[:2]
    on = wait_done(api, submit(api, prompts, **PARAMS)["id"])
    off_params = {**PARAMS, "chat_template_kwargs": {"enable_thinking": False}}
    off = wait_done(api, submit(api, prompts, **off_params)["id"])
    assert on["status"] == off["status"] == "completed"

    on_records, off_records = all_records(api, on["id"]), all_records(api, off["id"])
    for a, b in zip(on_records, off_records, strict=True):
        # The template closes the think block in the prompt itself: one more token, </think>.
        assert b["prompt_token_ids"] == a["prompt_token_ids"] + [end_id]
    # The closing token is in the prompt, so the completions hold none: no boundary is claimed.
    assert all(r["answer_start"] == _expected_start(r["token_ids"], end_id) for r in off_records)

    on_info, off_info = on["teacher_info"], off["teacher_info"]
    assert on_info["chat_template_kwargs"] is None
    assert on_info["rendered_chat_template_fingerprint"] == on_info["chat_template_fingerprint"]
    assert off_info["chat_template_kwargs"] == {"enable_thinking": False}
    assert off_info["rendered_chat_template_fingerprint"] != on_info["rendered_chat_template_fingerprint"]
    assert off_info["chat_template_fingerprint"] == on_info["chat_template_fingerprint"], "the teacher is the same"
    assert off["params"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_kwargs_the_template_refuses_are_a_422_naming_the_field(api: httpx.Client, reasoning_service: Service) -> None:
    before = [j["id"] for j in api.get("/v1/jobs").json()["jobs"]]
    body = {"teacher": "tiny", "params": {"chat_template_kwargs": {"enable_thinking": "no"}}, "prompts": CHATS[:1]}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "params", "chat_template_kwargs"]
    assert "enable_thinking must be true or false" in error["msg"]
    assert [j["id"] for j in api.get("/v1/jobs").json()["jobs"]] == before, "no job is left behind"


def test_skip_special_tokens_decides_whether_the_text_shows_the_markers(api: httpx.Client, end_id: int) -> None:
    """The same greedy completions, decoded with and without the special tokens (</think> is one)."""
    records = {}
    for skip in (True, False):
        job = submit(api, CHATS[:2], max_tokens=48, temperature=0.0, top_logprobs=1, skip_special_tokens=skip)
        assert wait_done(api, job["id"])["status"] == "completed"
        records[skip] = all_records(api, job["id"])
    assert [r["token_ids"] for r in records[True]] == [r["token_ids"] for r in records[False]]
    closed = [r for r in records[False] if end_id in r["token_ids"]]
    assert closed, "no greedy completion closed its thinking"
    assert all(THINK_END in r["text"] for r in closed)
    assert all(THINK_END not in r["text"] for r in records[True])
