"""Top-k codecs: pack one completion's token ids and top-k logprobs into four little-endian byte strings.

Format version 1 (TopKCodec): sampled token ids int32 [T], sampled logprobs float16 [T], top-k ids int32
[T, k] (row-major, sorted by logprob descending) and top-k logprobs float16 [T, k]: 126 B/token at k = 20.
Format version 2 (TopKCodecV2): ids as 3-byte unsigned integers (vocabularies below 2^24 - 1 ids, which
is every current LLM's), sampled logprobs as float32 (the student's cross-entropy target, kept exact) and
top-k logprobs float16 as in v1: 107 B/token at k = 20.
Format version 3 (TopKCodecV3): ~80 B/token at k = 20 with 13-bit ids, ~91 with 17-bit ones.
- token_ids and topk_ids: one byte `w`, then the ids bit-packed at w bits each (app/codecs/bitpack.py),
  w the fewest bits that hold the row's largest id + 1; the all-ones value 2^w - 1 is the missing id -1.
- token_logprobs: float32 [T], exact (the sampled token's logprob, the student's cross-entropy target).
- topk_logprobs: float32 [T] (each position's top-1, exact), then uint16 [T, k - 1]: the gap to that
  position's top-1 in steps of 1/1024 nat (half a step, 0.00049 nat, at most off), 0xFFFF for -inf;
  a candidate more than 63.99 nats below its top-1 (so below -64) is stored 65534 steps below it.
  Only for rows sorted best first without NaN (what the parsers give); others fall back to version 2.
Format version 4 (TopKCodecV4, the default): version 3's values, stored smaller; 50 B/token at k = 20 on
the tiny bf16 teacher (11-bit ids), where v3 takes 75. The same as v3 except topk_logprobs: float32 [T]
(each position's top-1), one flag byte, and then
- flag 0 (no missing slot): the T x (k - 1) gap codes of v3, each position's as differences from the one
  before it (the first from 0; they never fall, the row being sorted), Rice-coded (app/codecs/rice.py);
- flag 1: uint8 [T], each position's count of finite gaps (the missing ones come last), then the
  differences of the finite gaps only, Rice-coded the same way.
A slot the teacher did not report holds id -1 and logprob -inf. Each stored row records its version;
`encode_topk` uses the job's codec when it holds the row (else the next older one that does), and
`codec_for` reads any version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.codecs.bitpack import MAX_WIDTH, pack_bits, packed_size, unpack_bits
from app.codecs.rice import rice_decode, rice_encode

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


def _checked_shape(arrays: TopKArrays) -> tuple[int, int]:
    """(positions, k) of arrays whose shapes agree; ValueError otherwise."""
    t, k = arrays.topk_ids.shape
    if arrays.token_ids.shape != (t,) or arrays.token_logprobs.shape != (t,):
        raise ValueError("token arrays and top-k arrays disagree on the number of positions")
    if arrays.topk_logprobs.shape != (t, k):
        raise ValueError("top-k ids and logprobs differ in shape")
    return t, k


class TopKCodec:
    """Version 1: int32 ids and float16 logprobs, 126 bytes per token at k = 20; reads back as views."""

    version = 1
    _id_dtype = np.dtype("<i4")
    _lp_dtype = np.dtype("<f2")

    def encode(self, arrays: TopKArrays) -> PackedTopK:
        t, k = _checked_shape(arrays)
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


class TopKCodecV3(TopKCodecV2):
    """Version 3: ids bit-packed at the row's width, sampled and top-1 logprobs float32, the other top-k
    logprobs as 16-bit gaps to the top-1 (see the module docstring)."""

    version = 3
    STEPS_PER_NAT = 1024
    _gap_missing = 0xFFFF
    _gap_max = 0xFFFE

    def fits(self, arrays: TopKArrays) -> bool:
        ids = (arrays.token_ids, arrays.topk_ids)
        if not all(a.size == 0 or int(a.min()) >= MISSING_ID for a in ids):
            return False
        lps = arrays.topk_logprobs
        if lps.size == 0:
            return True
        # Sorted best first, no NaN (it compares false), no +inf top-1 (its gaps would read as -inf).
        return bool(np.all(lps[:, 1:] <= lps[:, :-1]) and np.all(lps[:, 0] < np.inf))

    def encode(self, arrays: TopKArrays) -> PackedTopK:
        t, k = _checked_shape(arrays)
        return PackedTopK(
            codec=self.version,
            num_tokens=t,
            k=k,
            token_ids=_pack_ids(arrays.token_ids),
            token_logprobs=arrays.token_logprobs.astype("<f4").tobytes(),
            topk_ids=_pack_ids(arrays.topk_ids),
            topk_logprobs=self._pack_logprobs(arrays.topk_logprobs.astype(np.float32)),
        )

    def decode(self, packed: PackedTopK) -> TopKArrays:
        t, k = packed.num_tokens, packed.k
        return TopKArrays(
            token_ids=_unpack_ids(packed.token_ids, t).reshape(t),
            token_logprobs=np.frombuffer(packed.token_logprobs, "<f4").reshape(t),
            topk_ids=_unpack_ids(packed.topk_ids, t * k).reshape(t, k),
            topk_logprobs=self._unpack_logprobs(packed.topk_logprobs, t, k),
        )

    def _pack_logprobs(self, lps: npt.NDArray[np.float32]) -> bytes:
        if lps.shape[1] == 0:
            return b""
        top, codes = self._gap_codes(lps)
        return top.tobytes() + codes.tobytes()

    def _unpack_logprobs(self, blob: bytes, t: int, k: int) -> npt.NDArray[np.float32]:
        if k == 0:
            return np.zeros((t, 0), dtype=np.float32)
        if len(blob) != t * (4 + 2 * (k - 1)):
            raise ValueError(f"a v3 top-k logprob blob of {len(blob)} bytes does not fit {t} x {k}")
        codes = np.frombuffer(blob, "<u2", offset=4 * t).reshape(t, k - 1)
        return self._from_gap_codes(np.frombuffer(blob, "<f4", count=t), codes)

    def _gap_codes(self, lps: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint16]]:
        """Each position's top-1 (float32 [T]) and the other candidates' gaps to it (uint16 [T, k - 1])."""
        top = lps[:, :1]
        with np.errstate(invalid="ignore"):  # -inf - -inf
            gaps = (top.astype(np.float64) - lps[:, 1:]) * self.STEPS_PER_NAT
        codes = np.full(gaps.shape, self._gap_missing, dtype="<u2")
        finite = np.isfinite(gaps)
        codes[finite] = np.minimum(np.rint(gaps[finite]), self._gap_max).astype("<u2")
        return top.reshape(-1).astype("<f4"), codes

    def _from_gap_codes(self, top: npt.NDArray[np.float32], codes: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
        t, gaps = codes.shape
        out = np.empty((t, gaps + 1), dtype=np.float32)
        out[:, 0] = top
        out[:, 1:] = out[:, :1] - codes.astype(np.float32) * np.float32(1 / self.STEPS_PER_NAT)
        out[:, 1:][codes == self._gap_missing] = -np.inf
        return out


class TopKCodecV4(TopKCodecV3):
    """Version 4: version 3's values, its top-k gaps delta-coded and Rice-coded (see the module docstring)."""

    version = 4

    def _pack_logprobs(self, lps: npt.NDArray[np.float32]) -> bytes:
        if lps.shape[1] == 0:
            return b""
        top, codes = self._gap_codes(lps)
        finite = codes != self._gap_missing
        # Rows are sorted best first, so each position's gaps rise and its missing slots come last.
        steps: npt.NDArray[np.uint16] = np.diff(codes, axis=1, prepend=np.uint16(0))
        if finite.all():
            return top.tobytes() + b"\x00" + rice_encode(steps)
        counts: npt.NDArray[np.uint8] = finite.sum(axis=1).astype(np.uint8)
        return top.tobytes() + b"\x01" + counts.tobytes() + rice_encode(steps[finite])

    def _unpack_logprobs(self, blob: bytes, t: int, k: int) -> npt.NDArray[np.float32]:
        if k == 0:
            return np.zeros((t, 0), dtype=np.float32)
        head = 4 * t + 1
        if len(blob) < head or blob[4 * t] not in (0, 1):
            raise ValueError(f"a v4 top-k logprob blob of {len(blob)} bytes does not fit {t} x {k}")
        top = np.frombuffer(blob, "<f4", count=t)
        if blob[4 * t] == 0:
            codes = rice_decode(memoryview(blob)[head:], t * (k - 1), run=max(1, k - 1), limit=self._gap_max)
            return self._from_gap_codes(top, codes.reshape(t, k - 1))
        counts = np.frombuffer(blob, np.uint8, count=t, offset=head) if len(blob) >= head + t else None
        if counts is None or int(counts.max(initial=0)) > k - 1:
            raise ValueError(f"a v4 top-k logprob blob of {len(blob)} bytes does not fit {t} x {k}")
        finite = np.arange(k - 1) < counts[:, None]
        steps = np.zeros((t, k - 1), dtype=np.uint16)
        steps[finite] = rice_decode(memoryview(blob)[head + t :], int(counts.sum(dtype=np.int64)))
        codes = np.cumsum(steps, axis=1, dtype=np.uint32)
        if codes.size and int(codes[:, -1].max()) > self._gap_max:
            raise ValueError("a v4 top-k logprob blob sums to gaps beyond 16 bits")
        codes[~finite] = self._gap_missing
        return self._from_gap_codes(top, codes.astype(np.uint16))


def id_width(ids: IdArray) -> int:
    """Bits a v3 row needs: the largest id + 1 must fit below the all-ones missing marker."""
    largest = int(ids.max()) if ids.size else 0
    return max(1, (largest + 1).bit_length())


def _pack_ids(ids: IdArray) -> bytes:
    width = id_width(ids)
    # As uint32 the missing id -1 is all ones; masked to the width it is the all-ones marker.
    values = ids.reshape(-1).astype(np.uint32) & np.uint32((1 << width) - 1)
    return bytes([width]) + pack_bits(values, width)


def _unpack_ids(blob: bytes, count: int) -> IdArray:
    if not blob:
        raise ValueError("a v3 id blob lacks its width byte")
    width = blob[0]
    if not 1 <= width <= MAX_WIDTH or len(blob) != 1 + packed_size(count, width):
        raise ValueError(f"a v3 id blob of {len(blob)} bytes does not hold {count} ids")
    # the all-ones marker reads as 2^32 - 1, which is the missing id -1 as int32
    ids: IdArray = unpack_bits(memoryview(blob)[1:], count, width, all_ones_as_max=True).view(np.int32)
    return ids


def reference_blob(arrays: TopKArrays) -> bytes:
    """The sampled and top-k logprobs exactly as parsed: float32 [T] then float32 [T, k]."""
    return arrays.token_logprobs.astype("<f4").tobytes() + arrays.topk_logprobs.astype("<f4").tobytes()


def reference_logprobs(blob: bytes, t: int, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """What reference_blob wrote: the sampled logprobs [T] and the top-k logprobs [T, k]."""
    if len(blob) != 4 * t * (1 + k):
        raise ValueError(f"a reference blob of {len(blob)} bytes does not fit {t} x {k}")
    values = np.frombuffer(blob, "<f4").astype(np.float32)
    return values[:t], values[t:].reshape(t, k)


def pack_ids(ids: list[int]) -> bytes:
    """A plain id list (a prompt's token ids) as int32 bytes."""
    return np.asarray(ids, dtype="<i4").tobytes()


def unpack_ids(blob: bytes) -> IdArray:
    return np.frombuffer(blob, "<i4")


CODECS: dict[int, TopKCodec] = {c.version: c for c in (TopKCodec(), TopKCodecV2(), TopKCodecV3(), TopKCodecV4())}
DEFAULT_CODEC_VERSION = TopKCodecV4.version
DEFAULT_CODEC = CODECS[DEFAULT_CODEC_VERSION]
# Jobs created before `params.codec` existed wrote version 2 rows; they keep doing so.
LEGACY_CODEC_VERSION = TopKCodecV2.version


def encode_topk(arrays: TopKArrays, version: int = DEFAULT_CODEC_VERSION) -> PackedTopK:
    """Pack with the given codec version, or the newest older one that holds the row (v1 holds any)."""
    for candidate in range(version, TopKCodec.version, -1):
        codec = codec_for(candidate)
        if codec.fits(arrays):
            return codec.encode(arrays)
    return CODECS[TopKCodec.version].encode(arrays)


def codec_for(version: int) -> TopKCodec:
    """The codec that reads blobs written with the given format version."""
    try:
        return CODECS[version]
    except KeyError:
        raise ValueError(f"unknown top-k codec version {version}") from None
