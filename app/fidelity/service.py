"""The fidelity report: each codec applied to a sample of the job's own positions, measured against the
logprobs as the teacher sent them (kept exactly for the job's first items, see Settings.fidelity_sample_items).

Per position the teacher's distribution is its top-k probabilities plus a tail bucket holding the rest of
the mass (1 - sum, floored at 0); the decoded one likewise. KL(teacher || decoded) sums over those k + 1
buckets; a bucket with probability 0 on the teacher's side adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.ext.asyncio import AsyncSession

from app.codecs.topk import CODECS, LEGACY_CODEC_VERSION, PackedTopK, TopKArrays, codec_for, reference_logprobs
from app.fidelity import repository
from app.fidelity.schemas import CodecComparison, CodecFidelity, FidelityReport, StoredData
from app.models import Job

# Rows of the sample the report reads (the first items' rows; a few thousand positions).
MAX_SAMPLE_ROWS = 64
# A decoded bucket of probability 0 where the teacher's is not: KL would be infinite; this floor keeps it finite.
MIN_PROBABILITY = 1e-30
LOW_LOGPROB = -20.0


@dataclass
class _Errors:
    """Running totals of one codec's errors over the sampled rows."""

    version: int
    rows: int = 0
    tokens: int = 0
    payload: int = 0
    abs_sum: float = 0.0
    abs_count: int = 0
    max_abs: float = 0.0
    max_abs_high: float = 0.0
    sampled_max_abs: float = 0.0
    kl: list[npt.NDArray[np.float64]] = field(default_factory=list)
    inf_kept: bool = True

    def add(self, teacher: TopKArrays, decoded: TopKArrays, payload: int) -> None:
        self.rows += 1
        self.tokens += teacher.num_tokens
        self.payload += payload
        want = teacher.topk_logprobs.astype(np.float64)
        got = decoded.topk_logprobs.astype(np.float64)
        finite = np.isfinite(want)
        self.inf_kept &= bool(np.array_equal(finite, np.isfinite(got)))
        both = finite & np.isfinite(got)
        err = np.abs(got[both] - want[both])
        if err.size:
            self.abs_sum += float(err.sum())
            self.abs_count += int(err.size)
            self.max_abs = max(self.max_abs, float(err.max()))
            high = err[want[both] > LOW_LOGPROB]
            if high.size:
                self.max_abs_high = max(self.max_abs_high, float(high.max()))
        s_want = teacher.token_logprobs.astype(np.float64)
        s_got = decoded.token_logprobs.astype(np.float64)
        s_both = np.isfinite(s_want) & np.isfinite(s_got)
        if s_both.any():
            self.sampled_max_abs = max(self.sampled_max_abs, float(np.abs(s_got - s_want)[s_both].max()))
        if teacher.k:
            self.kl.append(kl_with_tail(want, got))

    def report(self) -> CodecFidelity:
        kl = np.concatenate(self.kl) if self.kl else np.zeros(0)
        some = self.tokens > 0
        return CodecFidelity(
            version=self.version,
            rows=self.rows,
            bytes_per_token=self.payload / self.tokens if some else None,
            max_abs_error=self.max_abs if self.abs_count else None,
            max_abs_error_above_minus_20=self.max_abs_high if self.abs_count else None,
            mean_abs_error=self.abs_sum / self.abs_count if self.abs_count else None,
            sampled_max_abs_error=self.sampled_max_abs if some else None,
            mean_kl=float(kl.mean()) if kl.size else None,
            max_kl=float(kl.max()) if kl.size else None,
            minus_inf_kept=self.inf_kept,
        )


def tail_distribution(logprobs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """[T, k] logprobs -> [T, k + 1] probabilities: the top-k, then the tail (1 - their sum, at least 0)."""
    probs = np.exp(logprobs)  # exp(-inf) = 0
    tail = np.maximum(1.0 - probs.sum(axis=1, keepdims=True), 0.0)
    return np.concatenate([probs, tail], axis=1)


def kl_with_tail(teacher: npt.NDArray[np.float64], decoded: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """KL(teacher || decoded) per position over the top-k and tail buckets, in nats."""
    p = tail_distribution(teacher)
    q = np.maximum(tail_distribution(decoded), MIN_PROBABILITY)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    kl: npt.NDArray[np.float64] = terms.sum(axis=1)
    return kl


def teacher_rows(rows: Iterable[Any]) -> list[tuple[TopKArrays, PackedTopK]]:
    """Each sampled row as the teacher sent it (ids are exact in every codec; logprobs from the reference)
    and as stored."""
    out = []
    for row in rows:
        stored = PackedTopK(
            row.codec, row.num_tokens, row.k, row.token_ids, row.token_logprobs, row.topk_ids, row.topk_logprobs
        )
        decoded = codec_for(row.codec).decode(stored)
        sampled, topk = reference_logprobs(row.reference_logprobs, row.num_tokens, row.k)
        out.append((TopKArrays(decoded.token_ids, sampled, decoded.topk_ids, topk), stored))
    return out


def measure(sample: Sequence[tuple[TopKArrays, PackedTopK]]) -> tuple[CodecFidelity, list[CodecFidelity]]:
    """The stored rows' fidelity, and every codec's on the same rows."""
    stored = _Errors(version=sample[0][1].codec if sample else 0)  # the stored rows' codec (the first's)
    per_codec = {version: _Errors(version) for version in sorted(CODECS)}
    for teacher, packed in sample:
        stored.add(teacher, codec_for(packed.codec).decode(packed), _payload(packed))
        for version, errors in per_codec.items():
            codec = CODECS[version]
            if codec.fits(teacher):
                encoded = codec.encode(teacher)
                errors.add(teacher, codec.decode(encoded), _payload(encoded))
    return stored.report(), [e.report() for e in per_codec.values()]


def _payload(packed: PackedTopK) -> int:
    return len(packed.token_ids) + len(packed.token_logprobs) + len(packed.topk_ids) + len(packed.topk_logprobs)


async def codec_comparison(session: AsyncSession, job: Job) -> CodecComparison:
    """Every codec on the job's sampled positions, without the scan of all its rows (for a manifest)."""
    sample = teacher_rows(await repository.sample_rows(session, job.id, MAX_SAMPLE_ROWS))
    _, codecs = measure(sample)
    return CodecComparison(sample_positions=sum(teacher.num_tokens for teacher, _ in sample), codecs=codecs)


async def fidelity_report(session: AsyncSession, job: Job) -> FidelityReport:
    sample = teacher_rows(await repository.sample_rows(session, job.id, MAX_SAMPLE_ROWS))
    totals = await repository.stored_totals(session, job.id)
    stored_fidelity, codecs = measure(sample)
    tokens = sum(t for _, _, t, _ in totals)
    positions = sum(teacher.num_tokens for teacher, _ in sample)
    tails = [tail_distribution(t.topk_logprobs.astype(np.float64))[:, -1] for t, _ in sample if t.k and t.num_tokens]
    return FidelityReport(
        job_id=job.id,
        codec=int(job.params.get("codec", LEGACY_CODEC_VERSION)),
        sample_rows=len(sample),
        sample_positions=positions,
        teacher_tail_mass_mean=float(np.concatenate(tails).mean()) if tails else None,
        stored=StoredData(
            rows=sum(n for _, n, _, _ in totals),
            tokens=tokens,
            codec_versions={str(c): n for c, n, _, _ in totals},
            column_bytes_per_token=sum(b for _, _, _, b in totals) / tokens if tokens else None,
            fidelity=stored_fidelity if sample else None,
        ),
        codecs=codecs,
    )
