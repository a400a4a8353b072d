"""The replay teacher's answers longer than its recording: recorded completions joined, still well formed."""

from __future__ import annotations

import orjson

from app.teachers.parsing import parse_completions
from bench.replay_teacher import DEFAULT_RECORDING, Responder, load_recording
from tests.bench.test_parse_equivalence import _reference_completions, _same


def test_completions_past_the_recorded_length_are_joined() -> None:
    recording = load_recording(DEFAULT_RECORDING)
    responder = Responder(recording)
    length = recording["max_tokens"] * 2
    request = {"model": responder.model, "prompt": ["a"] * 3, "max_tokens": length, "logprobs": 20}
    status, body = responder.handle("POST", "/v1/completions", orjson.dumps(request))
    assert status == 200
    choices = orjson.loads(body)["choices"]
    for index, choice in enumerate(choices):
        lp = choice["logprobs"]
        assert len(choice["token_ids"]) == len(lp["tokens"]) == len(lp["top_logprobs"]) == length
        first, second = recording["completions"][index], recording["completions"][index + 1]
        shift = len(first["text"])  # the second part's offsets follow the first part's text
        half = len(first["token_ids"])
        assert lp["text_offset"][half:] == [o + shift for o in second["logprobs"]["text_offset"][: length - half]]
        assert choice["token_ids"][: len(first["token_ids"])] == first["token_ids"]
        assert choice["token_ids"][len(first["token_ids"]) :] == second["token_ids"][: length - len(first["token_ids"])]
    _same(parse_completions(body, num_prompts=3, n=1, k=20), _reference_completions(body, n=1, k=20))
    shorter = {**request, "max_tokens": recording["max_tokens"]}
    status, body = responder.handle("POST", "/v1/completions", orjson.dumps(shorter))
    assert [c["token_ids"] for c in orjson.loads(body)["choices"]] == [
        c["token_ids"][: recording["max_tokens"]] for c in recording["completions"][:3]
    ]
