"""ExportRow: one (prompt, sample) as read back from the database, the input of every exporter."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from app.codecs.topk import IdArray, TopKArrays

# Decoded sizes the chunk bound counts: a generated position's id and logprob plus k candidates (int32 ids,
# float16 or float32 logprobs) at most 8 bytes each, a prompt token id 4 bytes.
BYTES_PER_TOPK_SLOT = 8
BYTES_PER_PROMPT_TOKEN = 4


@dataclass(frozen=True, slots=True)
class ExportRow:
    job_id: uuid.UUID
    item_id: int
    seq: int
    custom_id: str | None
    sample_index: int
    prompt: str | None
    messages: list[dict[str, Any]] | None
    metadata: dict[str, Any] | None
    text: str
    finish_reason: str | None
    prompt_token_ids: IdArray | None
    arrays: TopKArrays
    answer_start: int | None = None


def _json_size(value: Any) -> int:
    return 0 if value is None else len(orjson.dumps(value))


def row_bytes(row: ExportRow) -> int:
    """The row's size as the chunk bound counts it (app.records.repository.RESULT_BYTES estimates the
    same from stored sizes)."""
    a = row.arrays
    prompt_tokens = 0 if row.prompt_token_ids is None else len(row.prompt_token_ids)
    return (
        a.num_tokens * (a.k + 1) * BYTES_PER_TOPK_SLOT
        + prompt_tokens * BYTES_PER_PROMPT_TOKEN
        + len(row.text.encode(errors="surrogatepass"))
        + (0 if row.prompt is None else len(row.prompt.encode(errors="surrogatepass")))
        + _json_size(row.messages)
        + _json_size(row.metadata)
    )


class Exporter(Protocol):
    """Feed rows chunk by chunk; each call returns the bytes ready to send so far."""

    media_type: str
    extension: str

    def write(self, rows: list[ExportRow]) -> bytes: ...

    def close(self) -> bytes: ...
