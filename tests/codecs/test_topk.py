"""Top-k codecs: exact round trip of ids, float16 logprobs, byte size per token, version choice."""

import numpy as np
import pytest

from app.codecs.topk import CODECS, DEFAULT_CODEC, MISSING_ID, TopKArrays, codec_for, encode_topk, pack_ids, unpack_ids


def arrays(t: int, k: int, seed: int = 0) -> TopKArrays:
    rng = np.random.default_rng(seed)
    lps = -np.sort(rng.exponential(2.0, size=(t, k)).astype(np.float32), axis=1)
    return TopKArrays(
        token_ids=rng.integers(0, 150_000, t, dtype=np.int32),
        token_logprobs=-rng.exponential(1.0, size=t).astype(np.float32),
        topk_ids=rng.integers(0, 150_000, (t, k), dtype=np.int32),
        topk_logprobs=lps,
    )


def test_v2_round_trip_is_exact_for_ids_and_float16_for_logprobs() -> None:
    original = arrays(37, 20)
    packed = CODECS[2].encode(original)
    decoded = codec_for(packed.codec).decode(packed)
    assert np.array_equal(decoded.token_ids, original.token_ids)
    assert np.array_equal(decoded.topk_ids, original.topk_ids)
    assert np.array_equal(decoded.topk_logprobs, original.topk_logprobs.astype(np.float16))
    assert np.allclose(decoded.token_logprobs, original.token_logprobs, rtol=1e-3, atol=1e-3)


def test_bytes_per_token_at_k20() -> None:
    packed = CODECS[2].encode(arrays(100, 20))
    total = len(packed.token_ids) + len(packed.token_logprobs) + len(packed.topk_ids) + len(packed.topk_logprobs)
    assert total == 100 * (3 + 4 + 20 * 3 + 20 * 2)
    v1 = CODECS[1].encode(arrays(100, 20))
    assert sum(map(len, (v1.token_ids, v1.token_logprobs, v1.topk_ids, v1.topk_logprobs))) == 100 * 126


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
    assert unpack_ids(pack_ids(ids)).tolist() == ids


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_version_round_trips(version: int) -> None:
    original = arrays(9, 4, seed=version)
    original.topk_ids[3, 2] = MISSING_ID
    codec = CODECS[version]
    decoded = codec_for(version).decode(codec.encode(original))
    assert decoded.topk_ids.tolist() == original.topk_ids.tolist()
    assert decoded.token_ids.tolist() == original.token_ids.tolist()


def test_ids_past_three_bytes_fall_back_to_version_1() -> None:
    a = arrays(2, 2)
    assert encode_topk(a, 2).codec == 2
    a.topk_ids[0, 0] = 0xFFFFFF  # the v2 sentinel itself is not a storable id
    packed = encode_topk(a, 2)
    assert packed.codec == 1 and codec_for(1).decode(packed).topk_ids[0, 0] == 0xFFFFFF
