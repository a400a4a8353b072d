"""Codec v3: bit-packed ids, exact sampled and top-1 logprobs, 16-bit gaps to the top-1 for the rest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.codecs.bitpack import pack_bits, packed_size, unpack_bits
from app.codecs.topk import CODECS, MISSING_ID, TopKArrays, TopKCodecV3, codec_for, encode_topk, id_width

V3 = CODECS[3]
STEP = 1 / TopKCodecV3.STEPS_PER_NAT


@st.composite
def rows(draw: st.DrawFn) -> TopKArrays:
    """Random rows as the parsers give them: sorted best first, -inf and missing slots at the tail."""
    vocab = draw(st.integers(min_value=2, max_value=2**24))
    t = draw(st.integers(min_value=0, max_value=40))
    k = draw(st.integers(min_value=0, max_value=64))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (t, k), dtype=np.int64).astype(np.int32)
    if ids.size and draw(st.booleans()):
        ids.flat[0] = vocab - 1  # the largest id
    scale = draw(st.sampled_from([0.01, 1.0, 10.0, 40.0]))
    lps = -np.sort(rng.exponential(scale, (t, k)), axis=1).astype(np.float32)
    lps[rng.random((t, k)) < 0.05] = -np.inf
    lps = -np.sort(-lps, axis=1)  # -inf entries sort last
    missing = rng.integers(0, k + 1, t) if k else np.zeros(t, dtype=np.int64)
    for pos, first_missing in enumerate(missing):
        if rng.random() < 0.3:
            ids[pos, first_missing:] = MISSING_ID
            lps[pos, first_missing:] = -np.inf
    sampled = rng.integers(0, vocab, t, dtype=np.int64).astype(np.int32)
    sampled_lps = (-rng.exponential(3.0, t)).astype(np.float32)
    if t:
        sampled_lps[rng.random(t) < 0.1] = -np.inf
    return TopKArrays(sampled, sampled_lps, ids, lps)


@settings(max_examples=300, deadline=None)
@given(rows())
def test_round_trip(original: TopKArrays) -> None:
    packed = encode_topk(original, 3)
    assert packed.codec == 3
    decoded = codec_for(3).decode(packed)
    t, k = original.topk_ids.shape
    assert decoded.topk_ids.shape == (t, k) and decoded.topk_logprobs.shape == (t, k)
    np.testing.assert_array_equal(decoded.token_ids, original.token_ids)
    np.testing.assert_array_equal(decoded.topk_ids, original.topk_ids)
    np.testing.assert_array_equal(decoded.token_logprobs, original.token_logprobs)  # exact, -inf included
    if k == 0:
        return
    np.testing.assert_array_equal(decoded.topk_logprobs[:, 0], original.topk_logprobs[:, 0])
    want, got = original.topk_logprobs[:, 1:], decoded.topk_logprobs[:, 1:]
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    with np.errstate(invalid="ignore"):  # -inf - -inf where a whole row is -inf
        gap = original.topk_logprobs[:, :1] - want
    near = finite & (gap <= 0xFFFE * STEP)
    err = np.abs(got[near].astype(np.float64) - want[near])
    assert err.size == 0 or err.max() <= STEP / 2 + 1e-5  # half a step, plus float32 rounding near 64 nats
    far = finite & ~near  # beyond the gaps' range: kept at the range's end, never above it
    assert np.all(got[far] >= want[far]) and np.all(got[far] <= original.topk_logprobs[:, :1].repeat(k - 1, 1)[far])


@pytest.mark.parametrize("largest", [0, 1, 2, 4095, 4096, 2**17 - 2, 2**17 - 1, 2**24, 2**31 - 2, 2**31 - 1])
def test_id_widths_at_their_edges(largest: int) -> None:
    ids = np.array([[largest, 0, MISSING_ID]], dtype=np.int32)
    a = TopKArrays(
        np.array([largest], dtype=np.int32),
        np.zeros(1, np.float32),
        ids,
        np.array([[-0.5, -1.0, -np.inf]], np.float32),
    )
    width = id_width(ids)
    assert (1 << width) - 1 > largest and (width == 1 or (1 << (width - 1)) - 1 <= largest)
    packed = V3.encode(a)
    assert packed.topk_ids[0] == width and len(packed.topk_ids) == 1 + packed_size(3, width)
    decoded = V3.decode(packed)
    assert decoded.topk_ids.tolist() == [[largest, 0, MISSING_ID]] and decoded.token_ids.tolist() == [largest]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=32), st.integers(min_value=0, max_value=300), st.integers(0, 2**32 - 1))
def test_bit_packing(width: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 1 << width, count, dtype=np.uint64).astype(np.uint32)
    blob = pack_bits(values, width)
    assert len(blob) == packed_size(count, width)
    np.testing.assert_array_equal(unpack_bits(blob, count, width), values)
    # Independently: value i is bits [i * width, (i + 1) * width) of the blob as one little-endian number.
    as_int = int.from_bytes(blob, "little")
    assert [(as_int >> (i * width)) & ((1 << width) - 1) for i in range(count)] == values.tolist()


def test_rows_v3_cannot_hold_fall_back() -> None:
    base = TopKArrays(
        np.array([1, 2], np.int32),
        np.array([-0.1, -0.2], np.float32),
        np.array([[1, 2], [3, 4]], np.int32),
        np.array([[-0.1, -0.2], [-0.3, -0.4]], np.float32),
    )
    unsorted = TopKArrays(base.token_ids, base.token_logprobs, base.topk_ids, base.topk_logprobs[:, ::-1].copy())
    nan = TopKArrays(base.token_ids, base.token_logprobs, base.topk_ids, base.topk_logprobs.copy())
    nan.topk_logprobs[0, 1] = np.nan
    negative = TopKArrays(
        base.token_ids, base.token_logprobs, np.array([[1, -2], [3, 4]], np.int32), base.topk_logprobs
    )
    assert encode_topk(base).codec == 4
    assert encode_topk(base, 3).codec == 3
    assert encode_topk(unsorted).codec == 2
    assert encode_topk(nan).codec == 2
    assert encode_topk(negative).codec == 1
    for a in (unsorted, nan, negative):
        decoded = codec_for(encode_topk(a).codec).decode(encode_topk(a))
        np.testing.assert_array_equal(decoded.topk_ids, a.topk_ids)


def test_a_job_can_ask_for_an_older_codec() -> None:
    a = TopKArrays(
        np.array([1], np.int32), np.zeros(1, np.float32), np.array([[1]], np.int32), np.zeros((1, 1), np.float32)
    )
    assert [encode_topk(a, v).codec for v in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_bytes_per_token_at_k20_for_a_128k_vocabulary() -> None:
    rng = np.random.default_rng(0)
    t, k = 128, 20
    ids = rng.integers(0, 128_256, (t, k), dtype=np.int32)
    ids[0, 0] = 128_255
    a = TopKArrays(
        rng.integers(0, 128_256, t, dtype=np.int32),
        np.zeros(t, np.float32),
        ids,
        -np.sort(rng.exponential(1.0, (t, k)), axis=1).astype(np.float32),
    )
    packed = V3.encode(a)
    assert packed.topk_ids[0] == 17
    size = sum(map(len, (packed.token_ids, packed.token_logprobs, packed.topk_ids, packed.topk_logprobs)))
    # 21 ids of 17 bits, the sampled and top-1 logprobs as float32, 19 gaps of 2 bytes; 2 width bytes a row.
    assert size == 2 + packed_size(t, 17) + packed_size(t * k, 17) + t * 4 + t * 4 + t * (k - 1) * 2
    assert size / t < 91


def test_corrupt_blobs_are_refused() -> None:
    a = TopKArrays(
        np.array([1], np.int32), np.zeros(1, np.float32), np.array([[1]], np.int32), np.zeros((1, 1), np.float32)
    )
    packed = V3.encode(a)
    with pytest.raises(ValueError, match="does not hold"):
        V3.decode(
            type(packed)(
                3, 1, 1, packed.token_ids, packed.token_logprobs, packed.topk_ids + b"\0", packed.topk_logprobs
            )
        )
    with pytest.raises(ValueError, match="width byte"):
        V3.decode(type(packed)(3, 1, 1, b"", packed.token_logprobs, packed.topk_ids, packed.topk_logprobs))
