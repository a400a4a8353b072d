"""Reading one batch input line: {custom_id, method, url, body} to a prompt record, its sampling parameters
and the logprobs it asked for. A line that cannot run becomes a LineError naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from app.batches.schemas import CHAT_URL, COMPLETIONS_URL
from app.jobs.schemas import GenerationParams, PromptRecord

# Body fields with a meaning of their own in the OpenAI request; every other one must be a GenerationParams
# field (vLLM's sampling parameters), else the line is refused.
OWN_FIELDS = frozenset({"model", "prompt", "messages", "logprobs", "top_logprobs", "max_completion_tokens", "stream"})
CHAT_ONLY = frozenset(
    {
        "messages",
        "top_logprobs",
        "max_completion_tokens",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
    }
)
LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})


@dataclass(frozen=True, slots=True)
class LineError(Exception):
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A line that can run: its record, teacher, sampling params (top_logprobs 0 until the job's k is known)
    and the logprobs its endpoint asked for (None: none)."""

    record: PromptRecord
    teacher: str
    params: GenerationParams
    logprobs: int | None


def parse_line(raw: bytes) -> BatchLine:
    """The line's request; its url may be either endpoint, whatever the batch's own `endpoint` says (a
    chat line becomes a `messages` item, a completions line a `prompt` item)."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineError("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(line, dict):
        raise LineError("invalid_request", "a line must be a JSON object")
    if unknown := sorted(set(line) - LINE_FIELDS):
        raise LineError("invalid_request", f"unknown field {unknown[0]!r}", unknown[0])
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 256:
        raise LineError("invalid_request", "custom_id must be a string of 1 to 256 characters", "custom_id")
    if line.get("method") != "POST":
        raise LineError("invalid_request", f"method must be POST, not {line.get('method')!r}", "method")
    if line.get("url") not in (CHAT_URL, COMPLETIONS_URL):
        raise LineError("invalid_url", f"url {line.get('url')!r} is neither {CHAT_URL} nor {COMPLETIONS_URL}", "url")
    body = line.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_request", "body must be a JSON object", "body")
    return _parse_body(custom_id, body, chat=line["url"] == CHAT_URL)


def _parse_body(custom_id: str, body: dict[str, Any], *, chat: bool) -> BatchLine:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise LineError("invalid_request", "body.model must name a teacher", "body.model")
    if body.get("stream"):
        raise LineError("invalid_request", "streaming does not apply to a batch", "body.stream")
    allowed = (set(GenerationParams.model_fields) - {"top_logprobs"}) | OWN_FIELDS
    allowed -= {"prompt"} if chat else CHAT_ONLY
    if unknown := sorted(set(body) - allowed):
        raise LineError("invalid_request", f"unknown field {unknown[0]!r}", f"body.{unknown[0]}")
    sampling = {k: v for k, v in body.items() if k not in OWN_FIELDS}
    if chat and body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") is not None:
            raise LineError("invalid_request", "give max_tokens or max_completion_tokens, not both", "body.max_tokens")
        sampling["max_tokens"] = body["max_completion_tokens"]
    if sampling.get("n", 1) != 1:
        raise LineError("invalid_request", "n must be 1: each line is one request with one completion", "body.n")
    logprobs = _requested_logprobs(body, chat=chat)
    try:
        params = GenerationParams.model_validate({**sampling, "top_logprobs": 0})
        record = PromptRecord.model_validate(
            {"custom_id": custom_id, "messages": body.get("messages")}
            if chat
            else {"custom_id": custom_id, "prompt": body.get("prompt")}
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise LineError("invalid_request", f"{field + ': ' if field else ''}{first['msg']}", f"body.{field}") from None
    return BatchLine(record=record, teacher=model, params=params, logprobs=logprobs)


def _requested_logprobs(body: dict[str, Any], *, chat: bool) -> int | None:
    """Chat: `logprobs: true` with `top_logprobs: k`; completions: `logprobs: k`. None when not asked."""
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            raise LineError("invalid_request", "chat logprobs is true or false", "body.logprobs")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 0):
            raise LineError("invalid_request", "top_logprobs must be a non-negative integer", "body.top_logprobs")
        if top is not None and not logprobs:
            raise LineError("invalid_request", "top_logprobs needs logprobs: true", "body.top_logprobs")
        return (top or 0) if logprobs else None
    if logprobs is None:
        return None
    if not isinstance(logprobs, int) or isinstance(logprobs, bool) or logprobs < 0:
        raise LineError("invalid_request", "completions logprobs must be a non-negative integer", "body.logprobs")
    return logprobs
