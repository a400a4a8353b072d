"""Parsing vLLM responses: key by token id, sort top-k, keep the sampled token, handle chat's cut list.

Bodies follow the shapes vLLM 0.32 returns (see ../shared/FACTS.md); the real-server tests in
tests/jobs cover the same code against live responses.
"""

import math

import numpy as np
import orjson
import pytest

from app.codecs.topk import MISSING_ID
from app.teachers.parsing import TeacherResponseError, parse_chat, parse_completions


def completion_choice(index: int, steps: list[tuple[int, float, dict[int, float]]]) -> dict:
    """steps: (sampled id, its logprob, top dict in the server's order: sampled first)."""
    return {
        "index": index,
        "text": "x" * len(steps),
        "finish_reason": "length",
        "logprobs": {
            "tokens": [f"token_id:{s}" for s, _, _ in steps],
            "token_logprobs": [lp for _, lp, _ in steps],
            "top_logprobs": [{f"token_id:{i}": v for i, v in top.items()} for _, _, top in steps],
            "text_offset": [0] * len(steps),
        },
        "token_ids": [s for s, _, _ in steps],
        "prompt_token_ids": [1, 2, 3],
    }


def test_completions_sampled_outside_topk_is_the_extra_entry_and_is_dropped_from_topk() -> None:
    # k = 2; the sampled token 9 (-5.0) is outside the top-2 and comes first as a third entry.
    steps = [(9, -5.0, {9: -5.0, 4: -0.5, 7: -1.5}), (4, -0.5, {4: -0.5, 7: -1.5})]
    body = orjson.dumps({"choices": [completion_choice(0, steps)]})
    (c,) = parse_completions(body, num_prompts=1, n=1, k=2)
    assert c.arrays.token_ids.tolist() == [9, 4]
    assert c.arrays.token_logprobs.tolist() == [-5.0, -0.5]
    assert c.arrays.topk_ids.tolist() == [[4, 7], [4, 7]]
    assert c.arrays.topk_logprobs.tolist() == [[-0.5, -1.5], [-0.5, -1.5]]
    assert c.prompt_token_ids == [1, 2, 3]


def test_completions_topk_is_sorted_whatever_the_server_order() -> None:
    steps = [(3, -2.0, {3: -2.0, 1: -0.1, 2: -1.0})]
    (c,) = parse_completions(orjson.dumps({"choices": [completion_choice(0, steps)]}), num_prompts=1, n=1, k=3)
    assert c.arrays.topk_ids.tolist() == [[1, 2, 3]]


def test_completions_n_samples_are_regrouped_by_prompt() -> None:
    steps = [(1, -0.1, {1: -0.1})]
    choices = [completion_choice(i, steps) for i in (3, 0, 2, 1)]
    parsed = parse_completions(orjson.dumps({"choices": choices}), num_prompts=2, n=2, k=1)
    assert [(c.prompt_index, c.sample_index) for c in parsed] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_completions_wrong_choice_count_and_string_keys_are_errors() -> None:
    steps = [(1, -0.1, {1: -0.1})]
    with pytest.raises(TeacherResponseError, match="expected 2 choices"):
        parse_completions(orjson.dumps({"choices": [completion_choice(0, steps)]}), num_prompts=2, n=1, k=1)
    choice = completion_choice(0, steps)
    choice["logprobs"]["top_logprobs"] = [{" the": -0.1}]
    with pytest.raises(TeacherResponseError, match="token_id:N"):
        parse_completions(orjson.dumps({"choices": [choice]}), num_prompts=1, n=1, k=1)
    with pytest.raises(TeacherResponseError, match="not JSON"):
        parse_completions(b"{broken", num_prompts=1, n=1, k=1)


def chat_body(steps: list[tuple[int, float, list[tuple[int, float]]]], n: int = 1) -> bytes:
    content = [
        {
            "token": f"token_id:{s}",
            "logprob": lp,
            "bytes": [],
            "top_logprobs": [{"token": f"token_id:{i}", "logprob": v, "bytes": []} for i, v in top],
        }
        for s, lp, top in steps
    ]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop",
            "logprobs": {"content": content},
            "token_ids": [s for s, _, _ in steps],
        }
        for i in range(n)
    ]
    return orjson.dumps({"choices": choices, "prompt_token_ids": [5, 6]})


def test_chat_with_k_plus_one_requested_keeps_the_true_topk() -> None:
    # k = 2, asked for 3. Sampled 9 is outside the top-3, so chat sent [9, 4, 7] (dropping the 3rd best).
    body = chat_body([(9, -5.0, [(9, -5.0), (4, -0.5), (7, -1.5)])])
    (c,) = parse_chat(body, n=1, k=2, requested_top=3)
    assert c.arrays.topk_ids.tolist() == [[4, 7]]
    assert c.arrays.token_ids.tolist() == [9] and c.arrays.token_logprobs.tolist() == [-5.0]
    assert c.prompt_token_ids == [5, 6] and c.text == "hi"


def test_chat_at_k_marks_the_ambiguous_last_slot_missing() -> None:
    # k = 2 = requested: when the sampled token sorts last, the real 2nd best may have been dropped.
    body = chat_body([(9, -5.0, [(9, -5.0), (4, -0.5)]), (4, -0.5, [(4, -0.5), (7, -1.5)])])
    (c,) = parse_chat(body, n=1, k=2, requested_top=2)
    assert c.arrays.topk_ids.tolist() == [[4, MISSING_ID], [4, 7]]
    assert math.isinf(c.arrays.topk_logprobs[0, 1])


def test_chat_minus_9999_is_minus_inf_and_n_samples() -> None:
    body = chat_body([(1, -9999.0, [(2, -0.1), (1, -9999.0)])], n=2)
    parsed = parse_chat(body, n=2, k=2, requested_top=3)
    assert [c.sample_index for c in parsed] == [0, 1]
    assert np.isneginf(parsed[0].arrays.token_logprobs[0]) and np.isneginf(parsed[0].arrays.topk_logprobs[0, 1])


def test_k_zero() -> None:
    body = chat_body([(1, -0.3, [])])
    (c,) = parse_chat(body, n=1, k=0, requested_top=0)
    assert c.arrays.topk_ids.shape == (1, 0) and c.arrays.token_logprobs.tolist() == pytest.approx([-0.3])
