"""The compiled top-k scanner (app/teachers/_scan.c): built by the normal install, taken on real bodies, and
equal to the reference path on the bodies it accepts; bodies outside its grammar still parse (or fail) as
the reference path decides.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.teachers import parsing, parsing_scan
from app.teachers.parsing import TeacherResponseError, parse_chat, parse_completions
from bench.replay_teacher import DEFAULT_RECORDING, Responder, load_recording
from tests.bench.test_parse_equivalence import _reference_chat, _reference_completions, _same


def test_the_scanner_is_built() -> None:
    # optional = true in pyproject: a failed build would otherwise only show as a slower service.
    assert parsing_scan._scan is not None, "app/teachers/_scan.c is not built: run `pip install -e .`"


def test_recorded_bodies_take_the_scanner_path() -> None:
    responder = Responder(load_recording(DEFAULT_RECORDING))
    request = {"model": responder.model, "prompt": ["a"] * 64, "max_tokens": 128, "logprobs": 20}
    status, body = responder.handle("POST", "/v1/completions", orjson.dumps(request))
    assert status == 200
    scanned = parsing_scan.scanned_completions(body, num_prompts=64, n=1, k=20)
    assert scanned is not None
    _same(sorted(scanned, key=lambda c: c.prompt_index), _reference_completions(body, n=1, k=20))
    chat = {"model": responder.model, "messages": [], "max_tokens": 128, "logprobs": True, "top_logprobs": 20, "n": 2}
    status, body = responder.handle("POST", "/v1/chat/completions", orjson.dumps(chat))
    assert status == 200
    for top, k in ((20, 20), (20, 19), (20, 5)):
        got = parsing_scan.scanned_chat(body, n=2, k=k, requested_top=top)
        assert got is not None
        _same(got, _reference_chat(body, k=k, top=top))


def _completions_body(tops: list[str], *, text: str = "t") -> bytes:
    """One choice whose positions' top-k dicts are given as raw JSON text (to control number spelling)."""
    choice = {
        "index": 0,
        "text": text,
        "finish_reason": "length",
        "logprobs": {"tokens": ["token_id:1"] * len(tops), "token_logprobs": [-1.0] * len(tops), "top_logprobs": 0},
        "token_ids": [1] * len(tops),
    }
    body = orjson.dumps({"choices": [choice]})
    return body.replace(b'"top_logprobs":0', b'"top_logprobs":[' + ",".join(tops).encode() + b"]")


def _both(body: bytes, k: int) -> tuple[Any, Any]:
    """The scanner's answer (None if it declined) and the reference path's."""
    return parsing_scan.scanned_completions(body, num_prompts=1, n=1, k=k), _reference_completions(body, n=1, k=k)


def test_text_that_looks_like_a_list_is_left_alone() -> None:
    text = 'x "top_logprobs": [{"token_id:5": 0.0}] \\" "content": [] y'
    body = _completions_body(['{"token_id:2": -0.5, "token_id:3": -0.25}'], text=text)
    scanned, reference = _both(body, 2)
    assert scanned is not None and scanned[0].text == text
    _same(scanned, reference)


@pytest.mark.parametrize(
    "top",
    [
        '{"token_id:\\u0031": -0.5}',  # an escape in a key
        '{"token_id:2147483648": -0.5}',  # above int32
        '{"token_id:2": -0.5, "token_id:02": -0.25}',  # one id twice
        '{"token_id:x": -0.5}',
        '{"token_id:": -0.5}',
        '{" the": -0.5}',
    ],
)
def test_bodies_outside_the_grammar_go_the_reference_way(top: str) -> None:
    body = _completions_body([top])
    assert parsing_scan.scanned_completions(body, num_prompts=1, n=1, k=2) is None
    try:
        expected = _reference_completions(body, n=1, k=2)
    except (ValueError, OverflowError) as exc:
        with pytest.raises(type(exc)):
            parse_completions(body, num_prompts=1, n=1, k=2)
    else:
        _same(parse_completions(body, num_prompts=1, n=1, k=2), expected)


def test_non_json_numbers_are_the_reference_errors() -> None:
    for value in ("-Infinity", "NaN", "-1.", ".5", "--1", "1e"):
        body = _completions_body([f'{{"token_id:2": {value}}}'])
        assert parsing_scan.scanned_completions(body, num_prompts=1, n=1, k=1) is None
        with pytest.raises(TeacherResponseError, match="not JSON"):
            parse_completions(body, num_prompts=1, n=1, k=1)


def test_ids_at_the_int32_edges_and_minus_9999() -> None:
    top = '{"token_id:2147483647": -9999, "token_id:-2147483648": -10000.5, "token_id:0": -0.0, "token_id:7": 0}'
    scanned, reference = _both(_completions_body([top, "{}", "null"]), 5)
    assert scanned is not None
    _same(scanned, reference)
    assert scanned[0].arrays.topk_ids[0].tolist() == [0, 7, -(2**31), 2**31 - 1, -1]
    assert np.isneginf(scanned[0].arrays.topk_logprobs[0, 2:]).all()


def _spellings(value: float) -> list[str]:
    """Decimal spellings of `value` and near it: shortest, 17-19 significant digits, and with an exponent."""
    exact = Decimal(value)
    return [repr(value), f"{value:.17g}", f"{value:.18e}", f"{exact:.19g}", f"{exact:.25g}", f"{value:.16e}"]


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=-1e30, max_value=-1e-30, allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-30, max_value=0, allow_nan=False)
)
def test_numbers_parse_exactly(value: float) -> None:
    # Neighbours one ulp apart with ids against the logprob order: any misread number reorders them.
    up, down = math.nextafter(value, math.inf), math.nextafter(value, -math.inf)
    for spelling in _spellings(value):
        parsed = float(spelling)
        pairs = [
            (1, repr(math.nextafter(parsed, -math.inf))),
            (2, spelling),
            (3, repr(math.nextafter(parsed, math.inf))),
        ]
        pairs += [(4, repr(up)), (5, repr(down)), (6, repr(parsed))]
        top = "{" + ", ".join(f'"token_id:{i}": {s}' for i, s in pairs) + "}"
        scanned, reference = _both(_completions_body([top]), 6)
        assert scanned is not None, spelling
        _same(scanned, reference)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**19 - 1), st.integers(min_value=-30, max_value=30))
def test_decimal_strings_parse_exactly(mantissa: int, exponent: int) -> None:
    spelling = f"-{mantissa}e{exponent}"
    parsed = float(spelling)
    pairs = [(1, repr(math.nextafter(parsed, -math.inf))), (2, spelling), (3, repr(math.nextafter(parsed, math.inf)))]
    pairs.append((4, repr(parsed)))
    top = "{" + ", ".join(f'"token_id:{i}": {s}' for i, s in pairs) + "}"
    scanned, reference = _both(_completions_body([top]), 4)
    assert scanned is not None
    _same(scanned, reference)


def test_chat_entries_with_other_keys_nulls_and_key_orders() -> None:
    content = [
        {"bytes": None, "logprob": -0.5, "token": "token_id:3", "top_logprobs": None, "extra": {"a": [1, "}"]}},
        {"token": "token_id:4", "logprob": -9999.0, "top_logprobs": [{"logprob": -1, "token": "token_id:8"}]},
        {"top_logprobs": [], "token": "token_id:5", "logprob": 0},
    ]
    choice = {"index": 0, "message": {"role": "assistant", "content": "abc"}, "logprobs": {"content": content}}
    body = orjson.dumps({"choices": [choice], "prompt_token_ids": [1]})
    for k, top in ((1, 1), (1, 2), (0, 0)):
        got = parsing_scan.scanned_chat(body, n=1, k=k, requested_top=top)
        assert got is not None
        _same(got, _reference_chat(body, k=k, top=top))


def test_chat_outside_the_grammar_goes_the_reference_way() -> None:
    entry = {"token": "token_id:3", "logprob": -0.5, "top_logprobs": [{"token": "token_id:3"}]}  # no logprob
    choice = {"index": 0, "message": {"content": "x"}, "logprobs": {"content": [entry]}}
    body = orjson.dumps({"choices": [choice]})
    assert parsing_scan.scanned_chat(body, n=1, k=1, requested_top=1) is None
    with pytest.raises(KeyError):
        parse_chat(body, n=1, k=1, requested_top=1)


def test_the_module_keeps_the_reference_names() -> None:
    assert parsing._reference_completions is parsing.reference_completions


FIXTURES = Path(__file__).parents[1] / "fixtures" / "vllm"


def _fixture_cases() -> list[str]:
    """Recorded generation answers with logprobs (not errors, not teacher-forced scoring)."""
    names = []
    for request_path in sorted(FIXTURES.glob("*.request.json")):
        name = request_path.name.removesuffix(".request.json")
        body = orjson.loads(request_path.read_bytes())["body"]
        answer = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
        wanted = body.get("logprobs") is not None and body.get("logprobs") is not False
        if wanted and "prompt_logprobs" not in body and isinstance(answer, dict) and "choices" in answer:
            names.append(name)
    return names


@pytest.mark.parametrize("name", _fixture_cases())
def test_every_recorded_fixture_body_parses_as_the_reference(name: str) -> None:
    request = orjson.loads((FIXTURES / f"{name}.request.json").read_bytes())["body"]
    body = (FIXTURES / f"{name}.json").read_bytes()
    n = int(request.get("n", 1))
    if "messages" in request:
        top = int(request.get("top_logprobs") or 0)
        for k in sorted({top, max(top - 1, 0)}):
            try:
                expected = _reference_chat(body, k=k, top=top)
            except (ValueError, KeyError) as exc:
                with pytest.raises(type(exc)):
                    parse_chat(body, n=n, k=k, requested_top=top)
                continue
            _same(parse_chat(body, n=n, k=k, requested_top=top), expected)
        return
    prompts = request["prompt"] if isinstance(request["prompt"], list) else [request["prompt"]]
    k = int(request["logprobs"])
    try:
        expected = _reference_completions(body, n=n, k=k)
    except (ValueError, KeyError) as exc:  # e.g. decoded-string keys: both paths refuse them alike
        with pytest.raises(type(exc)):
            parse_completions(body, num_prompts=len(prompts), n=n, k=k)
        return
    _same(parse_completions(body, num_prompts=len(prompts), n=n, k=k), expected)


def test_a_number_where_a_list_was_expected_is_not_taken_for_an_ordinal() -> None:
    entry = {"token": "token_id:3", "logprob": -0.5, "top_logprobs": [{"token": "token_id:3", "logprob": -0.5}]}
    good = {"index": 0, "message": {"content": "x"}, "logprobs": {"content": [entry]}}
    odd = {"index": 1, "message": {"content": "y"}, "logprobs": {"content": 0}}
    body = orjson.dumps({"choices": [good, odd]})
    assert parsing_scan.scanned_chat(body, n=2, k=1, requested_top=1) is None
    with pytest.raises(TypeError):  # the reference path's own error
        parse_chat(body, n=2, k=1, requested_top=1)
    body = _completions_body(['{"token_id:2": -0.5}']).replace(b'"top_logprobs":[', b'"top_logprobs":0,"x":[')
    assert parsing_scan.scanned_completions(body, num_prompts=1, n=1, k=1) is None
