"""Rice coding of 16-bit unsigned integers, for codec v4's top-k logprob gaps (app/codecs/topk.py).

Layout: one byte `s` (the values' common trailing zero bits, dropped), one byte `r` (the Rice parameter),
then the low `r` bits of every value (after the shift) bit-packed (app/codecs/bitpack.py), then the high
parts in unary: value i's `v >> r` as that many 0 bits followed by a 1 bit, little-endian bit order,
padded with 0 bits to a byte. Keeping the two parts apart lets numpy decode without a loop: the unary
part's 1 bits are where each value ends. `r` is chosen per blob near the one that makes it shortest, so a
blob is never much longer than its values at 17 bits each.
The shift exists because teachers running in bf16 report logprob gaps on a coarse grid (multiples of 1/64
nat on the tiny teacher), which a plain Rice code would spend bits on.
Decoding can also undo a delta coding: with `run=n`, each n consecutive values are summed cumulatively.
`rice_encode`/`rice_decode` use the compiled coder (app/codecs/_rice.c, same bytes) when it is built.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from app.codecs.bitpack import pack_bits, packed_size, unpack_bits

try:
    from app.codecs import _rice  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the numpy path serves alone
    _rice = None

MAX_VALUE = 0xFFFF
_HEADER = 2

U16Array = npt.NDArray[np.uint16]


def rice_encode(values: U16Array) -> bytes:
    """`values` as a Rice-coded blob."""
    if _rice is not None:
        encoded: bytes = _rice.encode(np.ascontiguousarray(values.reshape(-1), dtype="<u2"))
        return encoded
    return numpy_rice_encode(values)


def rice_decode(blob: bytes | memoryview, count: int, *, run: int = 1, limit: int = MAX_VALUE) -> U16Array:
    """The `count` values rice_encode wrote into `blob`, each `run` of them summed cumulatively (1: as
    written); ValueError if the blob does not hold exactly `count` values or a sum exceeds `limit`."""
    if _rice is not None:
        return np.frombuffer(_rice.decode(blob, count, run, limit), dtype="<u2")
    return numpy_rice_decode(blob, count, run=run, limit=limit)


def _unary_bits(values: npt.NDArray[np.uint32], r: int) -> int:
    return int((values >> np.uint32(r)).sum(dtype=np.int64)) + values.size * (1 + r)


def _best_parameter(values: npt.NDArray[np.uint32]) -> int:
    """The parameter giving the fewest bits among the three around log2 of the mean (where the optimum of
    a geometric-like distribution lies); the smallest on ties."""
    guess = max(0, min(16, int(float(values.mean())).bit_length() - 1))
    candidates = [r for r in (guess - 1, guess, guess + 1) if 0 <= r <= 16]
    return min(candidates, key=lambda r: _unary_bits(values, r))


def numpy_rice_encode(values: U16Array) -> bytes:
    """rice_encode without the compiled coder."""
    v = values.reshape(-1).astype(np.uint32)
    if v.size == 0:
        return bytes([0, 0])
    combined = int(np.bitwise_or.reduce(v))
    shift = (combined & -combined).bit_length() - 1 if combined else 0
    v >>= np.uint32(shift)
    r = _best_parameter(v)
    low = pack_bits(v & np.uint32((1 << r) - 1), r) if r else b""
    ends = np.cumsum((v >> np.uint32(r)).astype(np.int64) + 1) - 1
    bits = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    bits[ends] = 1
    return bytes([shift, r]) + low + np.packbits(bits, bitorder="little").tobytes()


def numpy_rice_decode(blob: bytes | memoryview, count: int, *, run: int = 1, limit: int = MAX_VALUE) -> U16Array:
    """rice_decode without the compiled coder."""
    if count < 0 or run < 1:
        raise ValueError("a negative count or a run below 1")
    if len(blob) < _HEADER:
        raise ValueError("a Rice blob lacks its header")
    shift, r = blob[0], blob[1]
    if shift > 15 or r > 16:
        raise ValueError("a Rice blob has an impossible header")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    low_size = packed_size(count, r) if r else 0
    if len(blob) < _HEADER + low_size:
        raise ValueError("a Rice blob is shorter than its values")
    unary = np.frombuffer(blob, dtype=np.uint8, offset=_HEADER + low_size)
    ends = np.flatnonzero(np.unpackbits(unary, bitorder="little"))
    if ends.size != count:
        raise ValueError(f"a Rice blob holds {ends.size} values, not {count}")
    values = (np.diff(ends, prepend=-1) - 1).astype(np.uint64) << np.uint64(r)
    if r:
        values |= unpack_bits(memoryview(blob)[_HEADER : _HEADER + low_size], count, r)
    values <<= np.uint64(shift)
    if run > 1:
        if count % run:
            values = np.concatenate([values, np.zeros(run - count % run, dtype=np.uint64)])
        values = np.cumsum(values.reshape(-1, run), axis=1).reshape(-1)[:count]
    if int(values.max()) > limit:
        raise ValueError("a Rice blob decodes to values beyond its limit")
    return values.astype(np.uint16)
