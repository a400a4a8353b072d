"""TopKCodec: packs one completion's token ids and top-k logprobs into four little-endian byte strings.

Format version 1: sampled token ids int32 [T], sampled logprobs float16 [T], top-k ids int32 [T, k]
(row-major, sorted by logprob descending) and top-k logprobs float16 [T, k]. A slot the teacher did not
report holds id -1 and logprob -inf. New formats get a new version number beside this one.
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
    """Version 1: int32 ids and float16 logprobs, 126 bytes per token at k = 20."""

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

    def pack_ids(self, ids: list[int]) -> bytes:
        """A plain id list (a prompt's token ids) as int32 bytes."""
        return np.asarray(ids, dtype=self._id_dtype).tobytes()

    def unpack_ids(self, blob: bytes) -> IdArray:
        return np.frombuffer(blob, self._id_dtype)


CODECS: dict[int, TopKCodec] = {TopKCodec.version: TopKCodec()}
DEFAULT_CODEC = CODECS[TopKCodec.version]


def codec_for(version: int) -> TopKCodec:
    """The codec that reads blobs written with the given format version."""
    try:
        return CODECS[version]
    except KeyError:
        raise ValueError(f"unknown top-k codec version {version}") from None
