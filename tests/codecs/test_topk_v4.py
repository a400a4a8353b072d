"""Codec v4: version 3's values with the top-k gaps delta- and Rice-coded; it reads back what v3 reads back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings

from app.codecs import rice
from app.codecs.topk import CODECS, PackedTopK, TopKArrays, encode_topk
from app.teachers.parsing_reference import reference_completions
from tests.codecs.test_topk_v3 import rows

V3, V4 = CODECS[3], CODECS[4]
RECORDING = Path(__file__).parents[2] / "bench" / "recordings" / "tiny_k20.json.gz"


@settings(max_examples=300, deadline=None)
@given(rows())
def test_v4_reads_back_exactly_what_v3_reads_back(original: TopKArrays) -> None:
    packed = encode_topk(original, 4)
    assert packed.codec == 4
    got, want = V4.decode(packed), V3.decode(V3.encode(original))
    for name in ("token_ids", "token_logprobs", "topk_ids", "topk_logprobs"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert packed.topk_ids == V3.encode(original).topk_ids


@settings(max_examples=100, deadline=None)
@given(rows())
def test_the_numpy_path_writes_the_same_bytes(original: TopKArrays) -> None:
    compiled = V4.encode(original).topk_logprobs
    with mock.patch.object(rice, "_rice", None):
        packed = V4.encode(original)
        assert packed.topk_logprobs == compiled
        np.testing.assert_array_equal(V4.decode(packed).topk_logprobs, V3.decode(V3.encode(original)).topk_logprobs)


def _recorded_rows() -> list[TopKArrays]:
    recording = json.loads(gzip.decompress(RECORDING.read_bytes()))
    choices = [dict(choice, index=i) for i, choice in enumerate(recording["completions"])]
    return [parsed.arrays for parsed in reference_completions(choices, n=1, k=recording["k"])]


def test_v4_stores_the_tiny_teachers_logprobs_in_under_half_of_v3() -> None:
    recorded = _recorded_rows()
    tokens = sum(a.num_tokens for a in recorded)
    v3 = sum(len(V3.encode(a).topk_logprobs) for a in recorded) / tokens
    v4 = sum(len(V4.encode(a).topk_logprobs) for a in recorded) / tokens
    assert v3 == 4 + 19 * 2  # the top-1 as float32 and 19 gaps of 2 bytes
    assert v4 < 20  # measured 17.3: gaps on the bf16 grid, ~6 bits each, plus the exact top-1


def test_corrupt_v4_blobs_are_refused() -> None:
    a = TopKArrays(
        np.array([1, 2], np.int32),
        np.zeros(2, np.float32),
        np.array([[1, 2, 3], [4, 5, 6]], np.int32),
        np.array([[-0.1, -0.2, -np.inf], [-0.3, -0.4, -0.5]], np.float32),
    )
    packed = V4.encode(a)
    lps = packed.topk_logprobs
    assert lps[8] == 1  # a row with a missing slot carries its per-position counts

    def with_logprobs(blob: bytes) -> PackedTopK:
        return PackedTopK(4, 2, 3, packed.token_ids, packed.token_logprobs, packed.topk_ids, blob)

    np.testing.assert_array_equal(V4.decode(packed).topk_logprobs, V3.decode(V3.encode(a)).topk_logprobs)
    with pytest.raises(ValueError, match="does not fit"):
        V4.decode(with_logprobs(lps[:8] + b"\x02" + lps[9:]))  # unknown flag
    with pytest.raises(ValueError, match="does not fit"):
        V4.decode(with_logprobs(lps[:9] + b"\x03" + lps[10:]))  # more candidates than k - 1
    with pytest.raises(ValueError):
        V4.decode(with_logprobs(lps[:-1]))  # cut short
    huge = V4.encode(
        TopKArrays(a.token_ids, a.token_logprobs, a.topk_ids, np.array([[0, -60, -63.9], [0, -1, -2]], np.float32))
    )
    # a gap step rewritten to push the sum beyond 16 bits
    steps = rice.rice_decode(memoryview(huge.topk_logprobs)[9:], 4).copy()
    steps[1] = 0xFFFF
    forged = huge.topk_logprobs[:9] + rice.rice_encode(steps)
    with pytest.raises(ValueError, match="beyond"):
        V4.decode(PackedTopK(4, 2, 3, huge.token_ids, huge.token_logprobs, huge.topk_ids, forged))
