"""The fidelity report's numbers against an independent, position-by-position computation in plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.codecs.topk import CODECS, TopKArrays, encode_topk
from app.fidelity.service import kl_with_tail, measure


def teacher_row(seed: int, t: int = 30, k: int = 6) -> TopKArrays:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (t, 50))
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    order = np.argsort(-logprobs, axis=1)[:, :k]
    topk = np.take_along_axis(logprobs, order, axis=1).astype(np.float32)
    topk[0, -2:] = -np.inf  # a position the teacher reported only k - 2 candidates for
    ids = order.astype(np.int32)
    ids[0, -2:] = -1
    sampled = rng.integers(0, 50, t).astype(np.int32)
    return TopKArrays(sampled, logprobs[np.arange(t), sampled].astype(np.float32), ids, topk)


def independent(teacher: TopKArrays, decoded: TopKArrays) -> dict[str, float]:
    """Max/mean |error| over finite slots and mean KL with a tail bucket, one position at a time."""
    errors, kls = [], []
    for pos in range(teacher.num_tokens):
        p = [math.exp(float(x)) for x in teacher.topk_logprobs[pos]]
        q = [math.exp(float(x)) for x in decoded.topk_logprobs[pos]]
        for want, got in zip(teacher.topk_logprobs[pos], decoded.topk_logprobs[pos], strict=True):
            if math.isfinite(want):
                errors.append(abs(float(got) - float(want)))
        p.append(max(1 - sum(p), 0.0))
        q.append(max(1 - sum(q), 0.0))
        kls.append(sum(a * math.log(a / max(b, 1e-30)) for a, b in zip(p, q, strict=True) if a > 0))
    return {"max": max(errors), "mean": sum(errors) / len(errors), "kl": sum(kls) / len(kls)}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_report_matches_an_independent_computation(version: int) -> None:
    rows = [teacher_row(seed) for seed in range(3)]
    sample = [(row, encode_topk(row, version)) for row in rows]
    stored, codecs = measure(sample)
    assert stored.version == version
    expected = [independent(row, CODECS[version].decode(packed)) for row, packed in sample]
    errors = [e for row, packed in sample for e in _finite_errors(row, CODECS[version].decode(packed))]
    assert stored.max_abs_error == pytest.approx(max(e["max"] for e in expected), rel=1e-9)
    assert stored.mean_abs_error == pytest.approx(sum(errors) / len(errors), rel=1e-9)
    assert stored.mean_kl == pytest.approx(sum(e["kl"] * 30 for e in expected) / 90, rel=1e-6, abs=1e-15)
    assert stored.minus_inf_kept
    same = next(c for c in codecs if c.version == version)
    assert same.model_dump() == stored.model_dump()  # the stored rows are that codec's own encoding
    payload = sum(len(p.token_ids) + len(p.token_logprobs) + len(p.topk_ids) + len(p.topk_logprobs) for _, p in sample)
    assert stored.bytes_per_token == payload / 90


def _finite_errors(teacher: TopKArrays, decoded: TopKArrays) -> list[float]:
    want, got = teacher.topk_logprobs.ravel(), decoded.topk_logprobs.ravel()
    return [abs(float(g) - float(w)) for w, g in zip(want, got, strict=True) if math.isfinite(w)]


def test_codecs_rank_as_their_formats_say() -> None:
    sample = [(row, encode_topk(row)) for row in (teacher_row(s, t=64, k=20) for s in range(4))]
    _, codecs = measure(sample)
    v1, v2, v3, v4 = codecs
    assert v3.max_abs_error is not None and v3.max_abs_error <= 1 / 2048 + 1e-5
    assert v1.max_abs_error is not None and v3.max_abs_error < v1.max_abs_error
    assert v3.mean_kl is not None and v3.mean_kl < 1e-6
    assert v3.sampled_max_abs_error == 0 and v2.sampled_max_abs_error == 0
    assert v1.sampled_max_abs_error is not None and v1.sampled_max_abs_error > 0  # float16
    assert v3.bytes_per_token is not None and v2.bytes_per_token is not None and v1.bytes_per_token is not None
    assert v3.bytes_per_token < v2.bytes_per_token < v1.bytes_per_token
    assert v4.bytes_per_token is not None and v4.bytes_per_token < v3.bytes_per_token
    excluded = {"version", "bytes_per_token"}
    assert v4.model_dump(exclude=excluded) == v3.model_dump(exclude=excluded)


def test_kl_is_zero_for_identical_and_positive_for_a_moved_mass() -> None:
    lps = np.log(np.array([[0.5, 0.3, 0.1]]))
    assert kl_with_tail(lps, lps)[0] == pytest.approx(0.0, abs=1e-15)
    moved = np.log(np.array([[0.4, 0.4, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
    assert kl_with_tail(lps, moved)[0] == pytest.approx(expected)
