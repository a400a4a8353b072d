"""Request bodies the worker sends: per-prompt seeds, chat's k+1, logprobs keyed by id."""

import uuid

from app.teachers.requests import chat_body, chat_top_logprobs, completions_body, item_seed
from app.worker.schemas import JobSpec

PARAMS = {"max_tokens": 8, "temperature": 1.0, "top_p": 1.0, "stop": None, "seed": 7}


def spec(k: int, max_logprobs: int | None = 20) -> JobSpec:
    return JobSpec(id=uuid.uuid4(), kind="generate", params=PARAMS, k=k, n=2, max_logprobs=max_logprobs)


def test_item_seeds_are_distinct_and_stable() -> None:
    seeds = [item_seed(7, seq) for seq in range(10_000)]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [item_seed(7, seq) for seq in range(10_000)]
    assert all(0 <= s < 2**31 for s in seeds) and item_seed(8, 0) != seeds[0]


def test_chat_asks_for_k_plus_one_when_the_server_allows() -> None:
    assert chat_top_logprobs(spec(5)) == 6
    assert chat_top_logprobs(spec(20)) == 20
    assert chat_top_logprobs(spec(0)) == 0
    assert chat_top_logprobs(spec(20, max_logprobs=None)) == 21
    body = chat_body("m", spec(5), [{"role": "user", "content": "hi"}], seed=3)
    assert body["top_logprobs"] == 6 and body["logprobs"] is True and body["seed"] == 3 and body["n"] == 2


def test_completions_body_keys_tokens_by_id() -> None:
    body = completions_body("m", spec(4), ["a", "b"])
    assert body["logprobs"] == 4 and body["return_tokens_as_token_ids"] and body["return_token_ids"]
    assert "seed" not in body and "stop" not in body
