"""Pydantic models of the datasets API: the build request, the manifest, and what GET returns."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.fidelity.schemas import CodecComparison

DatasetStatus = Literal["building", "ready", "failed"]
SplitName = Literal["train", "validation"]
MAX_DATASET_JOBS = 256
SPLIT_HASH = "sha256(seed + '\\0' + job_id + '\\0' + str(item_id)); first 8 bytes big-endian / 2**64"


class DatasetFilters(BaseModel):
    """Which rows (one per prompt and sample) go in; every given condition must hold."""

    model_config = ConfigDict(extra="forbid")

    finish_reasons: list[str] | None = Field(default=None, min_length=1, description="Keep these finish reasons.")
    min_tokens: int | None = Field(default=None, ge=0, description="Fewest generated tokens, inclusive.")
    max_tokens: int | None = Field(default=None, ge=0, description="Most generated tokens, inclusive.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Exact match on these top-level keys of the prompt's metadata."
    )
    drop_duplicate_prompts: bool = Field(
        default=False,
        description="Keep a prompt (text or messages) only from the first item, in job then submission order, "
        "that has a row passing the other filters.",
    )


class SplitSettings(BaseModel):
    """The deterministic train/validation split: all samples of one prompt land on the same side."""

    model_config = ConfigDict(extra="forbid")

    validation_fraction: float = Field(default=0.0, ge=0.0, le=0.5)
    seed: str = Field(default="", max_length=256)


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    jobs: list[uuid.UUID] = Field(min_length=1, max_length=MAX_DATASET_JOBS, description="Completed jobs, in order.")
    filters: DatasetFilters = Field(default_factory=DatasetFilters)
    split: SplitSettings = Field(default_factory=SplitSettings)
    top_k: int | None = Field(
        default=None, ge=0, description="Candidates kept per position; at most every job's k (default: the smallest)."
    )
    shard_rows: int | None = Field(default=None, ge=1, description="Rows per shard (the last may have fewer).")
    shard_bytes: int | None = Field(
        default=None, ge=1 << 16, description="Target shard size; a shard is closed once it reaches it."
    )


class JobLineage(BaseModel):
    job_id: uuid.UUID
    teacher: str
    kind: str
    k: int = Field(description="The job's stored top-k.")
    teacher_info: dict[str, Any]
    params: dict[str, Any]
    created_at: datetime
    fidelity: CodecComparison | None = Field(
        default=None, description="Each top-k codec's error on the job's sampled positions (as GET .../fidelity)."
    )


class SplitStats(BaseModel):
    rows: int = 0
    tokens: int = Field(default=0, description="Generated tokens.")
    files: list[str] = Field(default_factory=list)


class FileEntry(BaseModel):
    name: str
    split: SplitName
    rows: int
    size: int
    sha256: str


class DatasetManifest(BaseModel):
    """What manifest.json holds: counts, schema, lineage, settings, and a checksum per shard."""

    format: Literal["distillery.dataset"] = "distillery.dataset"
    format_version: int = 1
    id: uuid.UUID
    name: str
    created_at: datetime
    top_k: int
    codec_versions: list[int] = Field(description="Top-k codec versions of the stored rows the shards were read from.")
    splits: dict[SplitName, SplitStats]
    parquet_schema: str = Field(description="The shards' Arrow schema, as pyarrow prints it.")
    jobs: list[JobLineage]
    filters: DatasetFilters
    split: SplitSettings
    split_hash: str = SPLIT_HASH
    shard_rows: int | None
    shard_bytes: int | None
    files: list[FileEntry]


class DatasetSummary(BaseModel):
    id: uuid.UUID
    name: str
    status: DatasetStatus
    error: str | None
    rows: int
    tokens: int
    created_at: datetime
    finished_at: datetime | None


class DatasetRead(DatasetSummary):
    manifest: DatasetManifest | None = Field(description="Present once the dataset is ready.")


class DatasetPage(BaseModel):
    datasets: list[DatasetSummary]
    next_cursor: str | None = None
