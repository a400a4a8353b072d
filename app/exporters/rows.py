"""ExportRow: one (prompt, sample) as read back from the database, the input of every exporter."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from app.codecs.topk import IdArray, TopKArrays


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


class Exporter(Protocol):
    """Feed rows chunk by chunk; each call returns the bytes ready to send so far."""

    media_type: str
    extension: str

    def write(self, rows: list[ExportRow]) -> bytes: ...

    def close(self) -> bytes: ...
