"""Pydantic models of the records API."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class ExportFormat(StrEnum):
    parquet = "parquet"
    jsonl = "jsonl"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Record(BaseModel):
    """One (prompt, sample) result. Logprobs of -inf (and top-k slots the teacher did not report) are null;
    such slots have id -1."""

    item_id: int
    seq: int = Field(description="Position of the prompt in the submitted set.")
    custom_id: str | None
    sample_index: int
    metadata: dict[str, Any] | None
    text: str
    finish_reason: str | None
    token_ids: list[int]
    token_logprobs: list[float | None]
    top_logprobs_ids: list[list[int]] = Field(description="[T][k] candidate ids, best first.")
    top_logprobs: list[list[float | None]] = Field(description="[T][k] candidate logprobs, best first.")
    prompt_token_ids: list[int] | None
    answer_start: int | None = Field(
        default=None,
        description="Index in token_ids of the first answer token after the teacher's end-of-reasoning token "
        "(the length when the completion ends with it); null when the completion has none.",
    )
    usage: Usage


class RecordPage(BaseModel):
    records: list[Record]
    next_cursor: str | None = None
