"""Pydantic models of the teachers API."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

LogprobsMode = Literal["raw_logprobs", "processed_logprobs", "unknown"]


class TeacherRead(BaseModel):
    """A configured teacher and what its server last reported about itself."""

    name: str
    model: str = Field(description="The served model name requests are sent to.")
    healthy: bool
    served_model: str | None = None
    model_root: str | None = Field(default=None, description="The model path or id the server loaded.")
    max_model_len: int | None = None
    max_logprobs: int | None = Field(default=None, description="Largest top_logprobs k the server accepts.")
    vllm_version: str | None = None
    logprobs_mode: LogprobsMode = "unknown"
    tokenizer_fingerprint: str | None = Field(
        default=None, description="Hash of how the server tokenizes a fixed probe: equal means the same ids."
    )
    chat_template_fingerprint: str | None = Field(default=None, description="Hash of a fixed rendered conversation.")
    checked_at: datetime | None = None
    error: str | None = None


class TeacherList(BaseModel):
    teachers: list[TeacherRead]
