"""Pydantic models of the jobs API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.codecs.topk import DEFAULT_CODEC_VERSION

JobStatus = Literal["loading", "queued", "running", "completed", "failed", "cancelled"]
JobKind = Literal["generate", "score"]
ItemStatus = Literal["queued", "leased", "done", "failed", "cancelled"]


def storable_text(value: str, *, nul: bool = True) -> str:
    """Any text the databases can hold: every code point but a lone surrogate (not UTF-8); NUL only where
    `nul` (stored escaped). A JSON body can carry a lone surrogate ("\\ud800"): refused, not a 500."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a lone surrogate (U+{ord(value[exc.start]):04X} at {exc.start}), not text") from None
    if not nul and "\x00" in value:
        raise ValueError(f"holds NUL (at {value.index(chr(0))}), which this field does not take")
    return value


def storable_json(value: Any) -> Any:
    """storable_text for every key and string inside a JSON value."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_json(v) for v in value]
    return value


MAX_SEED = 2**31 - 1
MIN_PRIORITY, MAX_PRIORITY = -10, 10


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _storable(cls, value: str) -> str:
        return storable_text(value)


class PromptRecord(BaseModel):
    """One prompt: a raw `prompt` string or chat `messages`, with an optional caller id and metadata.
    In a scoring job, a raw prompt comes with the `response` to score; chat messages end with the
    assistant turn to score."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str | None = Field(default=None, min_length=1, max_length=256)
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    response: str | None = Field(default=None, min_length=1, description="Scoring jobs: the text to score.")
    metadata: dict[str, Any] | None = None

    @field_validator("prompt", "response")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return None if value is None else storable_text(value)

    @field_validator("custom_id")
    @classmethod
    def _an_id(cls, value: str | None) -> str | None:
        return None if value is None else storable_text(value, nul=False)

    @field_validator("metadata")
    @classmethod
    def _storable_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else storable_json(value)

    @model_validator(mode="after")
    def _one_of_prompt_or_messages(self) -> PromptRecord:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class StructuredOutputs(BaseModel):
    """Constrain the text (vLLM's structured outputs): exactly one of a JSON schema, a regex, a choice of
    strings or a grammar."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | None = Field(default=None, alias="json", description="A JSON schema.")
    regex: str | None = Field(default=None, min_length=1)
    choice: list[str] | None = Field(default=None, min_length=1, max_length=256)
    grammar: str | None = Field(default=None, min_length=1, description="An EBNF grammar.")

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [name for name in ("json_", "regex", "choice", "grammar") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'json', 'regex', 'choice' or 'grammar'")
        return self


class CoreParams(BaseModel):
    """The generation parameters every job has (flat fields of the upload form too)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_tokens: int = Field(default=128, ge=1, le=32768)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] | None = Field(default=None, max_length=16)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int = Field(default=1, ge=1, le=64, description="Samples per prompt.")
    top_logprobs: int = Field(default=20, ge=0, description="k: candidates kept per position.")
    codec: int = Field(
        default=DEFAULT_CODEC_VERSION,
        ge=1,
        le=DEFAULT_CODEC_VERSION,
        description="Top-k storage format (app/codecs/topk.py): 3 bit-packs ids and keeps logprobs to 0.0005 nat "
        "of the teacher's (the sampled one exact); 4 stores the same values Rice-coded, about a third smaller; 2 "
        "and 1 keep float16 logprobs. See GET /v1/jobs/{id}/fidelity.",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _storable_stop(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [storable_text(v, nul=False) for v in value]


class GenerationParams(CoreParams):
    """How the teacher generates. Logprobs are always requested; `top_logprobs` is k. Beyond the core
    seven, every field is vLLM's own sampling parameter of that name, sent only when set; the chat ones
    (`chat_template_kwargs`, `add_generation_prompt`, `continue_final_message`) only with chat messages."""

    top_k: int | None = Field(default=None, ge=-1, description="Sample among the k likeliest (-1 or 0: all).")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="Drop tokens below min_p x the top one.")
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    min_tokens: int | None = Field(default=None, ge=0, description="No EOS or stop token before this many.")
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=256)
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = Field(default=None, description="Whether the text leaves them out.")
    logit_bias: dict[str, float] | None = Field(
        default=None, max_length=300, description="Token id (as a string key) to a bias in [-100, 100]."
    )
    allowed_token_ids: list[TokenId] | None = Field(default=None, min_length=1, max_length=65536)
    bad_words: list[str] | None = Field(default=None, max_length=256)
    structured_outputs: StructuredOutputs | None = None
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=-1, description="Keep only the prompt's last N tokens (-1: the model's context)."
    )
    chat_template_kwargs: dict[str, Any] | None = Field(default=None, description="Chat: extra template variables.")
    add_generation_prompt: bool | None = Field(default=None, description="Chat: open the assistant turn.")
    continue_final_message: bool | None = Field(default=None, description="Chat: extend the final assistant turn.")

    @field_validator("bad_words")
    @classmethod
    def _storable(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [storable_text(v, nul=False) for v in value]

    @field_validator("chat_template_kwargs")
    @classmethod
    def _storable_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else storable_json(value)

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        for key, bias in value.items():
            if not key.isdigit() or int(key) >= 2**31:
                raise ValueError(f"key {key!r} is not a token id")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias {bias} of token {key} is outside [-100, 100]")
        return {str(int(k)): v for k, v in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> GenerationParams:
        if self.min_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("add_generation_prompt and continue_final_message cannot both be true")
        return self

    def lineage(self) -> dict[str, Any]:
        """The params as stored and recorded in lineage: the fields that were set (vLLM's names)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(min_length=1, max_length=64)
    kind: JobKind = Field(
        default="generate",
        description="generate: the teacher writes the responses. score: it scores given responses by teacher "
        "forcing, storing its top-k at every response position (sampling params other than top_logprobs unused).",
    )
    params: GenerationParams = Field(default_factory=GenerationParams)
    priority: int = Field(
        default=0,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="Higher first: a teacher serves a job only while no runnable job of higher priority waits.",
    )
    prompts: list[PromptRecord] = Field(min_length=1)


class JobCounts(BaseModel):
    total: int
    done: int
    failed: int
    cancelled: int
    pending: int = Field(description="Neither done, failed nor cancelled yet.")


class JobRead(BaseModel):
    id: uuid.UUID
    teacher: str
    kind: JobKind
    status: JobStatus
    priority: int
    params: GenerationParams
    counts: JobCounts
    tokens_generated: int
    tokens_per_second: float = Field(
        description="Generated tokens per second over the last 30-40 seconds, or over the part of them the job ran."
    )
    teacher_info: dict[str, Any] = Field(description="The teacher's identity as its server reported it.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    jobs: list[JobRead]
    next_cursor: str | None = None


class ItemFailure(BaseModel):
    """A prompt that failed for good, with the teacher's own message."""

    item_id: int
    seq: int
    custom_id: str | None
    attempts: int
    error: str | None


class FailurePage(BaseModel):
    failures: list[ItemFailure]
    next_cursor: str | None = None
