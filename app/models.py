"""SQLAlchemy tables. One row per job, per prompt item, and per stored completion (arrays packed as bytes)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


ESCAPE = "\U0010ffff"  # a noncharacter: never meaningful text, so escaping it costs nothing in practice
_ENCODE = re.compile("[\x00\U0010ffff]")
_DECODE = re.compile("\U0010ffff(.)", re.DOTALL)


def escape_nul(value: str) -> str:
    """NUL as ESCAPE + "0" and ESCAPE as ESCAPE + ESCAPE: Postgres text cannot hold NUL; this round-trips
    every string exactly, on both databases alike."""
    if "\x00" not in value and ESCAPE not in value:
        return value
    return _ENCODE.sub(lambda m: ESCAPE + ("0" if m.group() == "\x00" else ESCAPE), value)


def unescape_nul(value: str) -> str:
    if ESCAPE not in value:
        return value
    return _DECODE.sub(lambda m: "\x00" if m.group(1) == "0" else m.group(1), value)


class AnyText(TypeDecorator[str]):
    """Text that may hold any code point, NUL included (escaped in the database; see escape_nul)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else escape_nul(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else unescape_nul(value)


class AnyString(AnyText):
    """AnyText in a VARCHAR of a given length."""

    impl = String  # type: ignore[assignment]
    cache_ok = True


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Project(Base):
    """The owner of jobs: every API key belongs to one project and sees only that project's jobs."""

    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the whole key; `key_id` is its public, non-secret part."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


SWEEP_DUE = text("sweep IS NOT NULL")


class Job(Base):
    """A prompt set sent to one teacher. Status: loading (items still being stored, never claimed), queued,
    running, completed, failed, cancelled; "deleted" jobs are hidden from the API while the sweeper purges them."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    teacher: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="generate")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    top_logprobs: Mapped[int] = mapped_column(Integer)
    num_samples: Mapped[int] = mapped_column(Integer)
    teacher_info: Mapped[dict[str, Any]] = mapped_column(JSON)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    done_items: Mapped[int] = mapped_column(Integer, default=0)
    failed_items: Mapped[int] = mapped_column(Integer, default=0)
    cancelled_items: Mapped[int] = mapped_column(Integer, default=0)
    tokens_generated: Mapped[int] = mapped_column(BigInteger, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    last_claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    # While loading: when its latest chunk of items was stored (a load silent for long died with its request).
    loaded_at: Mapped[datetime | None] = mapped_column(default=None)
    # What the background sweeper still has to do to the job's rows, in bounded batches: "cancel" (queued
    # items to cancelled), "retry" (failed items to queued, in id order past sweep_cursor), "purge" (delete).
    sweep: Mapped[str | None] = mapped_column(String(16), default=None)
    sweep_cursor: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # A job whose items differ in sampling parameters (a batch): the distinct parameter sets, each item
    # naming its own by index (Item.variant). None: every item uses `params`.
    variants: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)

    __table_args__ = (
        Index("ix_jobs_project_created", "project_id", "created_at"),
        Index("ix_jobs_teacher_status", "teacher", "status"),
        Index("ix_jobs_sweep", "sweep", postgresql_where=SWEEP_DUE, sqlite_where=SWEEP_DUE),
        Index("ix_jobs_finished", "finished_at"),
    )


QUEUED = text("status = 'queued'")
LEASED = text("status = 'leased'")
FAILED = text("status = 'failed'")


class Item(Base):
    """One prompt record of a job; the unit that workers claim under a lease."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    teacher: Mapped[str] = mapped_column(String(64))
    custom_id: Mapped[str | None] = mapped_column(String(256), default=None)
    prompt: Mapped[str | None] = mapped_column(AnyText, default=None)
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    response: Mapped[str | None] = mapped_column(AnyText, default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(AnyText, default=None)
    prompt_token_ids: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    variant: Mapped[int | None] = mapped_column(Integer, default=None)  # index into Job.variants, if any

    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_items_job_seq"),
        UniqueConstraint("job_id", "custom_id", name="uq_items_job_custom_id"),
        # Partial indexes: each holds only the items in one state, so the claim, the reaper and the
        # failures page stay small however many items are done.
        Index("ix_items_queued", "job_id", "id", postgresql_where=QUEUED, sqlite_where=QUEUED),
        Index("ix_items_leased", "lease_expires_at", postgresql_where=LEASED, sqlite_where=LEASED),
        Index("ix_items_failed", "job_id", "id", postgresql_where=FAILED, sqlite_where=FAILED),
    )


class Result(Base):
    """One completion (item, sample) with its token ids and top-k packed by a TopKCodec. Keyed by (job,
    item, sample): the one index serves export order, the per-item lookup and the insert's conflict check."""

    __tablename__ = "results"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(AnyText)
    finish_reason: Mapped[str | None] = mapped_column(AnyString(32))
    num_tokens: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    codec: Mapped[int] = mapped_column(Integer)
    k: Mapped[int] = mapped_column(Integer)
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    token_logprobs: Mapped[bytes] = mapped_column(LargeBinary)
    topk_ids: Mapped[bytes] = mapped_column(LargeBinary)
    topk_logprobs: Mapped[bytes] = mapped_column(LargeBinary)
    # For a job's first items only (fidelity_sample_items): the sampled and top-k logprobs as the teacher
    # sent them, float32 [T] then [T, k], so the fidelity report can measure every codec against them.
    reference_logprobs: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    # Index in token_ids of the first answer token after the teacher's end-of-reasoning token (null: none).
    answer_start: Mapped[int | None] = mapped_column(Integer, default=None)


class IdempotencyKey(Base):
    """A client's Idempotency-Key for job creation: pending while its request runs, then the job it made."""

    __tablename__ = "idempotency_keys"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobProgress(Base):
    """Tokens stored per job per 10-second bucket, for the current tokens/s figure."""

    __tablename__ = "job_progress"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)


# --- datasets -------------------------------------------------------------------------------------------


class Dataset(Base):
    """A build of completed jobs into Parquet shards; `spec` is the request, `manifest` is set once ready."""

    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="building")
    error: Mapped[str | None] = mapped_column(AnyText, default=None)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_datasets_project_created", "project_id", "created_at"),)


class DatasetFile(Base):
    """One stored file of a dataset (a shard, or manifest.json with split None), with its checksum."""

    __tablename__ = "dataset_files"

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    split: Mapped[str | None] = mapped_column(String(16), default=None)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


# --- OpenAI-compatible files and batches -----------------------------------------------------------------


class StoredFile(Base):
    """A file uploaded through /v1/files, its bytes on disk under `storage_key`."""

    __tablename__ = "files"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(AnyString(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_files_project_created", "project_id", "created_at"),)


class Batch(Base):
    """An OpenAI-style batch: its input file, and the job that runs its lines (None when validation failed)."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    input_file_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    endpoint: Mapped[str] = mapped_column(String(32))
    completion_window: Mapped[str] = mapped_column(String(16))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), default=None)
    # Set only where the job cannot say: "failed" (validation) and "expired"; otherwise the job's status rules.
    status: Mapped[str | None] = mapped_column(String(16), default=None)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # Per job variant, the logprobs its lines asked for (None: none); the job stores the largest k of all.
    variant_logprobs: Mapped[list[int | None]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    failed_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelling_at: Mapped[datetime | None] = mapped_column(default=None)
    expired_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_batches_project_created", "project_id", "created_at"),)
