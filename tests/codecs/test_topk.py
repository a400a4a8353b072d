"""TopKCodec v1: exact round trip of ids, float16 logprobs, and the byte size per token."""

import numpy as np
import pytest

from app.codecs.topk import DEFAULT_CODEC, MISSING_ID, TopKArrays, codec_for


def arrays(t: int, k: int, seed: int = 0) -> TopKArrays:
    rng = np.random.default_rng(seed)
    lps = -np.sort(rng.exponential(2.0, size=(t, k)).astype(np.float32), axis=1)
    return TopKArrays(
        token_ids=rng.integers(0, 150_000, t, dtype=np.int32),
        token_logprobs=-rng.exponential(1.0, size=t).astype(np.float32),
        topk_ids=rng.integers(0, 150_000, (t, k), dtype=np.int32),
        topk_logprobs=lps,
    )


def test_round_trip_is_exact_for_ids_and_float16_for_logprobs() -> None:
    original = arrays(37, 20)
    packed = DEFAULT_CODEC.encode(original)
    decoded = codec_for(packed.codec).decode(packed)
    assert np.array_equal(decoded.token_ids, original.token_ids)
    assert np.array_equal(decoded.topk_ids, original.topk_ids)
    assert np.array_equal(decoded.topk_logprobs, original.topk_logprobs.astype(np.float16))
    assert np.allclose(decoded.token_logprobs, original.token_logprobs, rtol=1e-3, atol=1e-3)


def test_bytes_per_token_at_k20() -> None:
    packed = DEFAULT_CODEC.encode(arrays(100, 20))
    total = len(packed.token_ids) + len(packed.token_logprobs) + len(packed.topk_ids) + len(packed.topk_logprobs)
    assert total == 100 * (4 + 2 + 20 * 4 + 20 * 2)


def test_missing_slots_and_minus_inf_survive() -> None:
    a = arrays(3, 4)
    a.topk_ids[1, 3] = MISSING_ID
    a.topk_logprobs[1, 3] = -np.inf
    decoded = DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(a))
    assert decoded.topk_ids[1, 3] == MISSING_ID and np.isneginf(decoded.topk_logprobs[1, 3])


def test_k_zero_and_empty_completions() -> None:
    for t, k in [(5, 0), (0, 20), (0, 0)]:
        decoded = DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(arrays(t, k)))
        assert decoded.topk_ids.shape == (t, k) and decoded.token_ids.shape == (t,)


def test_shape_mismatch_and_unknown_version_are_refused() -> None:
    a = arrays(4, 3)
    with pytest.raises(ValueError, match="positions"):
        DEFAULT_CODEC.encode(TopKArrays(a.token_ids[:3], a.token_logprobs, a.topk_ids, a.topk_logprobs))
    with pytest.raises(ValueError, match="unknown top-k codec version 99"):
        codec_for(99)


def test_prompt_ids_pack() -> None:
    ids = [1, 2, 150_000, 0]
    assert DEFAULT_CODEC.unpack_ids(DEFAULT_CODEC.pack_ids(ids)).tolist() == ids
