"""Pydantic models of the teachers API."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

LogprobsMode = Literal["raw_logprobs", "processed_logprobs", "unknown"]
# What makes two replicas interchangeable inside one job: the same model, ids, template and k limit.
IDENTITY_FIELDS = ("served_model", "tokenizer_fingerprint", "chat_template_fingerprint", "max_logprobs")


class TeacherIdentity(BaseModel):
    """What a replica's server reported about itself when last probed."""

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
    reasoning_end_token_id: int | None = Field(
        default=None, description="The id of the end-of-reasoning marker, when the tokenizer has it as one token."
    )

    def key(self) -> tuple[object, ...]:
        """The fields that must agree for replicas to serve the same job."""
        return tuple(getattr(self, f) for f in IDENTITY_FIELDS)


class ReplicaRead(TeacherIdentity):
    """One replica of a teacher: its health, whether dispatch uses it, and why not."""

    url: str = Field(description="The replica's base URL (without any credentials).")
    healthy: bool = Field(description="It answers and its identity is known.")
    in_rotation: bool = Field(description="Healthy and its identity matches the teacher's: new work goes to it.")
    status: int | None = Field(default=None, description="The HTTP status of a teacher-level refusal (401, 403, ...).")
    error: str | None = None
    checked_at: datetime | None = None


class TeacherRead(TeacherIdentity):
    """A configured teacher: the identity its replicas share, and each replica's state."""

    name: str
    model: str = Field(description="The served model name requests are sent to.")
    healthy: bool = Field(description="At least one replica is in rotation.")
    checked_at: datetime | None = None
    error: str | None = None
    replicas: list[ReplicaRead] = Field(default_factory=list)


class TeacherList(BaseModel):
    teachers: list[TeacherRead]
