"""What the worker passes between claiming, dispatching and storing."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.codecs.topk import DEFAULT_CODEC_VERSION, LEGACY_CODEC_VERSION
from app.teachers.parsing import ParsedCompletion


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    id: int
    job_id: uuid.UUID
    seq: int
    prompt: str | None
    messages: list[dict[str, Any]] | None
    response: str | None
    attempts: int
    variant: int | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """The parts of a job the worker needs to build teacher requests."""

    id: uuid.UUID
    kind: str
    params: dict[str, Any]
    k: int
    n: int
    max_logprobs: int | None
    reasoning_end_token_id: int | None = None
    # A job whose items differ in parameters (a batch): its parameter sets; `params` then holds the one with
    # the most max_tokens (what sizes a claim) until for_variant picks the claimed items' own.
    variants: tuple[dict[str, Any], ...] | None = None

    def for_variant(self, variant: int | None) -> JobSpec:
        """The spec of the items of one parameter set (itself for a job with a single set)."""
        if self.variants is None:
            return self
        return dataclasses.replace(self, params=self.variants[variant or 0], variants=None)

    @property
    def codec(self) -> int:
        """The top-k codec version its rows are written with (jobs from before `params.codec`: version 2)."""
        return int(self.params.get("codec", LEGACY_CODEC_VERSION))


@dataclass(frozen=True, slots=True)
class RunnableJob:
    """A job of a teacher with queued items, and what the scheduler weighs to pick the next one."""

    spec: JobSpec
    project_id: uuid.UUID
    project: str
    priority: int
    created_at: datetime
    last_claimed_at: datetime | None
    identity: tuple[object, ...] = field(default=())
    pending: int = 0  # items neither done, failed nor cancelled (queued, or in flight somewhere)


@dataclass(frozen=True, slots=True)
class Claim:
    items: list[ClaimedItem]
    jobs: dict[uuid.UUID, JobSpec]


@dataclass(slots=True)
class ItemOutcome:
    """Everything one item produced: its n samples, or the error that ends it."""

    item: ClaimedItem
    completions: list[ParsedCompletion] = field(default_factory=list)
    error: str | None = None
    teacher_fault: bool = False  # the replica refused the request as a whole: give the item back, no attempt
    reason: str | None = None  # why it goes back to the queue; kept in its failure once out of attempts
    transient: bool = False  # the teacher could not be reached or was busy: the attempt is refunded in an outage
    resent: bool = False  # sent again alone in this claim after its batch's answer was unreadable: one more attempt
    codec: int = DEFAULT_CODEC_VERSION  # the job's top-k codec version, for its completions
    reasoning_end_token_id: int | None = None  # the job teacher's end-of-thinking id: where answers start
