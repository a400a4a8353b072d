"""The fidelity report's shape."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field


class CodecFidelity(BaseModel):
    """One codec on the sampled positions, against the logprobs as the teacher sent them (float32)."""

    version: int
    rows: int = Field(description="Sampled rows this codec holds (a row it cannot hold goes to an older one).")
    bytes_per_token: float | None = Field(description="Its encoded ids and logprobs per generated token.")
    max_abs_error: float | None = Field(description="Largest |decoded - teacher| over finite top-k logprobs.")
    max_abs_error_above_minus_20: float | None = Field(description="The same, for candidates above -20 nats.")
    mean_abs_error: float | None
    sampled_max_abs_error: float | None = Field(description="Largest error of the sampled tokens' logprobs.")
    mean_kl: float | None = Field(
        description="Mean over positions of KL(teacher top-k + tail || decoded top-k + tail), in nats; the tail "
        "bucket holds 1 - the top-k mass."
    )
    max_kl: float | None
    minus_inf_kept: bool = Field(description="Every -inf (or missing slot) decodes as -inf, and nothing else does.")


class StoredData(BaseModel):
    """What the job holds now."""

    rows: int
    tokens: int
    codec_versions: dict[str, int] = Field(description="Rows per stored codec version.")
    column_bytes_per_token: float | None = Field(
        description="Bytes of the stored top-k blobs and text per generated token (row, page and index "
        "overhead not included)."
    )
    fidelity: CodecFidelity | None = Field(description="The stored rows of the sample, decoded as stored.")


class CodecComparison(BaseModel):
    """Each codec on a job's sampled positions (as a dataset manifest carries it per job)."""

    sample_positions: int
    codecs: list[CodecFidelity]


class FidelityReport(BaseModel):
    job_id: uuid.UUID
    codec: int = Field(description="The job's codec (params.codec).")
    sample_rows: int = Field(description="Rows that kept the teacher's values (the job's first items).")
    sample_positions: int
    teacher_tail_mass_mean: float | None = Field(description="Mean probability mass outside the teacher's top-k.")
    stored: StoredData
    codecs: list[CodecFidelity] = Field(description="Each codec applied to the same sampled positions.")
