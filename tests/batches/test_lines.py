"""Reading batch input lines (no service): each endpoint's logprobs semantics, its own fields, and a clear
error naming the field for everything else."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.batches.lines import LineError, parse_line
from tests.batches.openai_helpers import chat_line, completions_line


def parse(line: dict[str, Any]) -> Any:
    return parse_line(orjson.dumps(line))


def test_each_endpoint_asks_for_logprobs_its_own_way() -> None:
    assert parse(chat_line("a", "hi", logprobs=True, top_logprobs=7)).logprobs == 7
    assert parse(chat_line("a", "hi", logprobs=True)).logprobs == 0
    assert parse(chat_line("a", "hi", logprobs=False)).logprobs is None
    assert parse(chat_line("a", "hi")).logprobs is None
    assert parse(completions_line("a", "x", logprobs=3)).logprobs == 3
    assert parse(completions_line("a", "x", logprobs=0)).logprobs == 0
    assert parse(completions_line("a", "x")).logprobs is None


def test_lines_become_records_and_sampling_params() -> None:
    chat = parse(chat_line("c", "hi", max_completion_tokens=9, top_k=4, chat_template_kwargs={"x": 1}))
    assert chat.record.messages[0].content == "hi" and chat.record.prompt is None
    assert chat.params.max_tokens == 9 and chat.params.top_k == 4 and chat.params.chat_template_kwargs == {"x": 1}
    raw = parse(completions_line("r", "def f():", max_tokens=5, min_p=0.1, stop="\n"))
    assert raw.record.prompt == "def f():" and raw.record.custom_id == "r" and raw.teacher == "tiny"
    assert (raw.params.max_tokens, raw.params.min_p, raw.params.stop) == (5, 0.1, ["\n"])


@pytest.mark.parametrize(
    ("line", "param"),
    [
        (chat_line("a", "hi", top_logprobs=3), "body.top_logprobs"),  # without logprobs: true
        (chat_line("a", "hi", logprobs=3), "body.logprobs"),  # chat logprobs is a boolean
        (completions_line("a", "x", logprobs=True), "body.logprobs"),  # completions logprobs is an int
        (completions_line("a", "x", top_logprobs=3), "body.top_logprobs"),  # not a completions field
        (completions_line("a", "x", messages=[]), "body.messages"),
        (completions_line("a", "x", chat_template_kwargs={}), "body.chat_template_kwargs"),
        (chat_line("a", "hi", prompt="x"), "body.prompt"),
        (chat_line("a", "hi", max_tokens=3, max_completion_tokens=3), "body.max_tokens"),
        (completions_line("a", "x", n=2), "body.n"),
        (completions_line("a", "x", stream=True), "body.stream"),
        (completions_line("a", "x", response_format={"type": "json_object"}), "body.response_format"),
        (completions_line("a", "x", max_tokens=0), "body.max_tokens"),
        (completions_line("a", 5), "body.prompt"),
        ({**completions_line("a", "x"), "extra": 1}, "extra"),
        ({**completions_line("a", "x"), "custom_id": ""}, "custom_id"),
        ({**completions_line("a", "x"), "body": []}, "body"),
        (completions_line("a", "x", model=""), "body.model"),
    ],
)
def test_a_line_that_cannot_run_names_its_field(line: dict[str, Any], param: str) -> None:
    with pytest.raises(LineError) as caught:
        parse(line)
    assert caught.value.param == param, caught.value
    assert caught.value.message
