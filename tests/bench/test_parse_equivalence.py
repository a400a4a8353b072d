"""The fast response parsing gives exactly what the reference (one position at a time) path gives.

Recorded k=20 responses from the real server, and random bodies built to hit ties, -inf, -9999, padding,
n > 1, k above and below the candidates offered, and malformed keys (same error either way).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
import pytest

from app.teachers import parsing
from app.teachers.parsing import TeacherResponseError, parse_chat, parse_completions
from bench.replay_teacher import DEFAULT_RECORDING, Responder, load_recording


def _same(fast: list[parsing.ParsedCompletion], slow: list[parsing.ParsedCompletion]) -> None:
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        assert (a.prompt_index, a.sample_index, a.text, a.finish_reason) == (
            b.prompt_index,
            b.sample_index,
            b.text,
            b.finish_reason,
        )
        assert a.prompt_token_ids == b.prompt_token_ids
        for name in ("token_ids", "token_logprobs", "topk_ids", "topk_logprobs"):
            x, y = getattr(a.arrays, name), getattr(b.arrays, name)
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)


def _reference_completions(body: bytes, *, n: int, k: int) -> list[parsing.ParsedCompletion]:
    out = parsing._reference_completions(orjson.loads(body)["choices"], n=n, k=k)
    return sorted(out, key=lambda c: (c.prompt_index, c.sample_index))


def _reference_chat(body: bytes, *, k: int, top: int) -> list[parsing.ParsedCompletion]:
    data = orjson.loads(body)
    out = parsing._reference_chat(data["choices"], k=k, requested_top=top, prompt_token_ids=data["prompt_token_ids"])
    return sorted(out, key=lambda c: c.sample_index)


@pytest.mark.parametrize("k", [20, 5, 1, 0])
def test_recorded_responses(k: int) -> None:
    responder = Responder(load_recording(DEFAULT_RECORDING))
    request = {"model": responder.model, "prompt": ["a"] * 20, "max_tokens": 64, "logprobs": k}
    status, body = responder.handle("POST", "/v1/completions", orjson.dumps(request))
    assert status == 200
    _same(parse_completions(body, num_prompts=20, n=1, k=k), _reference_completions(body, n=1, k=k))
    top = min(k + 1, 20) if k else 0
    chat = {"model": responder.model, "messages": [], "max_tokens": 64, "logprobs": True, "top_logprobs": top, "n": 3}
    status, body = responder.handle("POST", "/v1/chat/completions", orjson.dumps(chat))
    assert status == 200
    _same(parse_chat(body, n=3, k=k, requested_top=top), _reference_chat(body, k=k, top=top))


def _random_completions(rng: random.Random, prompts: int, n: int, k: int) -> bytes:
    """Completions choices in shuffled order; half the bodies hold only float32 values (as vLLM's do)."""
    levels = [-0.5, -1.0, -1.25, -2.0, -9999.0, -12000.0, 0.0, -0.0]
    as_f32 = rng.random() < 0.5

    def other() -> float:
        value = rng.uniform(-20, 0)
        return float(np.float32(value)) if as_f32 else value

    choices = []
    for index in rng.sample(range(prompts * n), prompts * n):
        steps = rng.randint(0, 6)
        tops: list[Any] = []
        tokens, lps = [], []
        for _ in range(steps):
            width = rng.choice([0, 1, k, k + 1, k + 3])
            ids = rng.sample(range(50), min(width, 50))
            top = {f"token_id:{i}": rng.choice(levels) if rng.random() < 0.6 else other() for i in ids}
            sampled = ids[0] if ids else rng.randrange(50)
            tokens.append(sampled)
            lps.append(top.get(f"token_id:{sampled}", -3.0))
            tops.append(top if top or rng.random() < 0.5 else None)
        choices.append(
            {
                "index": index,
                "text": "t" * steps,
                "finish_reason": rng.choice(["length", "stop", None]),
                "logprobs": {
                    "tokens": [f"token_id:{t}" for t in tokens],
                    "token_logprobs": lps,
                    "top_logprobs": tops,
                },
                "token_ids": tokens if rng.random() < 0.8 else None,
                "prompt_token_ids": [1, 2],
            }
        )
    return orjson.dumps({"choices": choices})


def _random_chat(rng: random.Random, n: int, top: int) -> bytes:
    levels = [-0.5, -1.0, -9999.0, 0.0]
    choices = []
    for index in range(n):
        content = []
        for _ in range(rng.randint(0, 6)):
            ids = rng.sample(range(60), rng.choice([0, top, max(top - 1, 0)]))
            cands = [{"token": f"token_id:{i}", "logprob": rng.choice(levels), "bytes": []} for i in ids]
            sampled = ids[0] if ids else 7
            content.append({"token": f"token_id:{sampled}", "logprob": -1.0, "bytes": [], "top_logprobs": cands})
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": "x"},
                "finish_reason": "stop",
                "logprobs": {"content": content},
                "token_ids": [int(c["token"].split(":")[1]) for c in content] if index % 2 == 0 or n == 1 else None,
            }
        )
    return orjson.dumps({"choices": choices, "prompt_token_ids": [3]})


@pytest.mark.parametrize("seed", range(60))
def test_random_bodies(seed: int) -> None:
    rng = random.Random(seed)
    k = rng.choice([0, 1, 2, 3, 5])
    prompts, n = rng.randint(1, 4), rng.randint(1, 3)
    body = _random_completions(rng, prompts, n, k)
    _same(parse_completions(body, num_prompts=prompts, n=n, k=k), _reference_completions(body, n=n, k=k))
    top = rng.choice([k, k + 1])
    body = _random_chat(rng, n, top)
    _same(parse_chat(body, n=n, k=k, requested_top=top), _reference_chat(body, k=k, top=top))


def test_errors_match_the_reference() -> None:
    good = {"token_id:1": -0.1, "token_id:2": -0.2}
    bad_key = {"token_id:1": -0.1, " the": -0.2}

    def choice(index: int, top: dict[str, float], steps: int = 1) -> dict[str, Any]:
        return {
            "index": index,
            "logprobs": {"tokens": ["token_id:1"] * steps, "token_logprobs": [-0.1] * steps, "top_logprobs": [top]},
            "token_ids": [1] * steps,
        }

    # The first choice's length mismatch is the error, though a later choice has a bad key.
    body = orjson.dumps({"choices": [choice(0, good, steps=2), choice(1, bad_key)]})
    with pytest.raises(TeacherResponseError, match="differ in length"):
        parse_completions(body, num_prompts=2, n=1, k=2)
    body = orjson.dumps({"choices": [choice(0, good), choice(1, bad_key)]})
    with pytest.raises(TeacherResponseError, match="token_id:N"):
        parse_completions(body, num_prompts=2, n=1, k=2)
    body = orjson.dumps({"choices": [{**choice(0, good), "logprobs": None}]})
    with pytest.raises(TeacherResponseError, match="no logprobs"):
        parse_completions(body, num_prompts=1, n=1, k=2)
