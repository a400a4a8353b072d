"""Top-k codecs: pack one completion's token ids and top-k logprobs into four little-endian byte strings.

Format version 1 (TopKCodec): sampled token ids int32 [T], sampled logprobs float16 [T], top-k ids int32
[T, k] (row-major, sorted by logprob descending) and top-k logprobs float16 [T, k]: 126 B/token at k = 20.
Format version 2 (TopKCodecV2): ids as 3-byte unsigned integers (vocabularies below 2^24 - 1 ids, which
is every current LLM's), sampled logprobs as float32 (the student's cross-entropy target, kept exact) and
top-k logprobs float16 as in v1: 107 B/token at k = 20.
A slot the teacher did not report holds id -1 and logprob -inf. Each stored row records its version;
`encode_topk` picks the smallest codec that holds the ids, and `codec_for` reads any version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MISSING_ID = -1

IdArray = npt.NDArray[np.int32]
# float32 from the parser; float16 as decoded from storage (kept as stored, no copy).
LogprobArray = npt.NDArray[np.float32] | npt.NDArray[np.float16]


@dataclass(frozen=True, slots=True)
class TopKArrays:
    """One completion's arrays in memory: T generated positions, k candidates per position."""

    token_ids: IdArray
    token_logprobs: LogprobArray
    topk_ids: IdArray
    topk_logprobs: LogprobArray

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.topk_ids.shape[1])


@dataclass(frozen=True, slots=True)
class PackedTopK:
    """The stored form: four blobs plus what is needed to read them back."""

    codec: int
    num_tokens: int
    k: int
    token_ids: bytes
    token_logprobs: bytes
    topk_ids: bytes
    topk_logprobs: bytes


class TopKCodec:
    """Version 1: int32 ids and float16 logprobs, 126 bytes per token at k = 20; reads back as views."""

    version = 1
    _id_dtype = np.dtype("<i4")
    _lp_dtype = np.dtype("<f2")

    def encode(self, arrays: TopKArrays) -> PackedTopK:
        t, k = arrays.topk_ids.shape
        if arrays.token_ids.shape != (t,) or arrays.token_logprobs.shape != (t,):
            raise ValueError("token arrays and top-k arrays disagree on the number of positions")
        if arrays.topk_logprobs.shape != (t, k):
            raise ValueError("top-k ids and logprobs differ in shape")
        return PackedTopK(
            codec=self.version,
            num_tokens=t,
            k=k,
            token_ids=arrays.token_ids.astype(self._id_dtype, copy=False).tobytes(),
            token_logprobs=arrays.token_logprobs.astype(self._lp_dtype).tobytes(),
            topk_ids=arrays.topk_ids.astype(self._id_dtype, copy=False).tobytes(),
            topk_logprobs=arrays.topk_logprobs.astype(self._lp_dtype).tobytes(),
        )

    def decode(self, packed: PackedTopK) -> TopKArrays:
        """Read-only views over the blobs: int32 ids, float16 logprobs."""
        t, k = packed.num_tokens, packed.k
        return TopKArrays(
            token_ids=np.frombuffer(packed.token_ids, self._id_dtype).reshape(t),
            token_logprobs=np.frombuffer(packed.token_logprobs, self._lp_dtype).reshape(t),
            topk_ids=np.frombuffer(packed.topk_ids, self._id_dtype).reshape(t, k),
            topk_logprobs=np.frombuffer(packed.topk_logprobs, self._lp_dtype).reshape(t, k),
        )

    def fits(self, arrays: TopKArrays) -> bool:
        """Whether this codec can hold the arrays' ids."""
        return True


class TopKCodecV2(TopKCodec):
    """Version 2: ids as 3-byte little-endian unsigned integers (missing = 0xFFFFFF), sampled logprobs
    float32, top-k logprobs float16."""

    version = 2
    _missing = 0xFFFFFF
    _sampled_dtype = np.dtype("<f4")

    def fits(self, arrays: TopKArrays) -> bool:
        ids = (arrays.token_ids, arrays.topk_ids)
        return all(a.size == 0 or (int(a.max()) < self._missing and int(a.min()) >= MISSING_ID) for a in ids)

    def encode(self, arrays: TopKArrays) -> PackedTopK:
        wide = super().encode(arrays)
        return PackedTopK(
            codec=self.version,
            num_tokens=wide.num_tokens,
            k=wide.k,
            token_ids=_to_u24(arrays.token_ids),
            token_logprobs=arrays.token_logprobs.astype(self._sampled_dtype).tobytes(),
            topk_ids=_to_u24(arrays.topk_ids),
            topk_logprobs=wide.topk_logprobs,
        )

    def decode(self, packed: PackedTopK) -> TopKArrays:
        t, k = packed.num_tokens, packed.k
        return TopKArrays(
            token_ids=_from_u24(packed.token_ids).reshape(t),
            token_logprobs=np.frombuffer(packed.token_logprobs, self._sampled_dtype).reshape(t),
            topk_ids=_from_u24(packed.topk_ids).reshape(t, k),
            topk_logprobs=np.frombuffer(packed.topk_logprobs, self._lp_dtype).reshape(t, k),
        )


def _to_u24(ids: IdArray) -> bytes:
    wide = (ids.astype("<i4", copy=False).reshape(-1) & 0xFFFFFF).astype("<u4")
    return wide.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def _from_u24(blob: bytes) -> IdArray:
    three = np.frombuffer(blob, np.uint8).reshape(-1, 3)
    wide = np.zeros((three.shape[0], 4), np.uint8)
    wide[:, :3] = three
    ids = wide.view("<u4").reshape(-1).astype(np.int32)
    ids[ids == TopKCodecV2._missing] = MISSING_ID
    return ids


def pack_ids(ids: list[int]) -> bytes:
    """A plain id list (a prompt's token ids) as int32 bytes."""
    return np.asarray(ids, dtype="<i4").tobytes()


def unpack_ids(blob: bytes) -> IdArray:
    return np.frombuffer(blob, "<i4")


CODECS: dict[int, TopKCodec] = {TopKCodec.version: TopKCodec(), TopKCodecV2.version: TopKCodecV2()}
DEFAULT_CODEC = CODECS[TopKCodecV2.version]


def encode_topk(arrays: TopKArrays) -> PackedTopK:
    """Pack with the default codec, or with version 1 when an id does not fit in 3 bytes."""
    codec = DEFAULT_CODEC if DEFAULT_CODEC.fits(arrays) else CODECS[TopKCodec.version]
    return codec.encode(arrays)


def codec_for(version: int) -> TopKCodec:
    """The codec that reads blobs written with the given format version."""
    try:
        return CODECS[version]
    except KeyError:
        raise ValueError(f"unknown top-k codec version {version}") from None
