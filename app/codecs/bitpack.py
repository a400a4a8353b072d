"""Bit packing of non-negative integers at a fixed width (1-32 bits), little-endian bit order, in numpy.

Value i occupies bits [i * width, (i + 1) * width) of the byte string read as one little-endian number.
Used by codecs v3 and v4 (app/codecs/topk.py) for token ids at the width the row's largest id needs, and
by the Rice coder (app/codecs/rice.py). `pack_bits`/`unpack_bits` use the compiled packer
(app/codecs/_bitpack.c, same bytes) when it is built.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

try:
    from app.codecs import _bitpack  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the numpy path serves alone
    _bitpack = None

MAX_WIDTH = 32
ALL_ONES = 0xFFFFFFFF


def packed_size(count: int, width: int) -> int:
    """Bytes holding `count` values of `width` bits."""
    return (count * width + 7) // 8


class _Layout(NamedTuple):
    """Where each of `count` values of `width` bits lies: its 64-bit word and bit offset in it."""

    word: npt.NDArray[np.intp]
    offset: npt.NDArray[np.uint64]
    firsts: npt.NDArray[np.intp]  # the first value starting in each word that has one
    spill: npt.NDArray[np.intp]  # the values that run into the next word
    words: int


@lru_cache(maxsize=256)
def _layout(count: int, width: int) -> _Layout:
    """Rows of one job mostly share their size and width, so the index arithmetic is done once."""
    bit = np.arange(count, dtype=np.uint64) * np.uint64(width)
    word = (bit >> np.uint64(6)).astype(np.intp)
    offset = bit & np.uint64(63)
    firsts = np.flatnonzero(np.diff(word, prepend=-1))
    spill = np.flatnonzero(offset + np.uint64(width) > np.uint64(64))
    for array in (word, offset, firsts, spill):
        array.flags.writeable = False
    return _Layout(word, offset, firsts, spill, int(word[-1]) + 2)


def pack_bits(values: npt.NDArray[np.uint32], width: int) -> bytes:
    """`values` (each below 2**width) packed at `width` bits each."""
    if _bitpack is not None and 1 <= width <= MAX_WIDTH:
        packed: bytes = _bitpack.pack(np.ascontiguousarray(values.reshape(-1), dtype="<u4"), width)
        return packed
    return numpy_pack_bits(values, width)


def unpack_bits(
    blob: bytes | memoryview, count: int, width: int, *, all_ones_as_max: bool = False
) -> npt.NDArray[np.uint32]:
    """The `count` values of `width` bits packed in `blob`; with `all_ones_as_max`, the value 2**width - 1
    reads as 2**32 - 1 (-1 once viewed as int32, the codecs' missing id)."""
    if _bitpack is not None and 1 <= width <= MAX_WIDTH and len(blob) == packed_size(count, width):
        return np.frombuffer(_bitpack.unpack(blob, count, width, all_ones_as_max), dtype="<u4")
    values = numpy_unpack_bits(blob, count, width)
    if all_ones_as_max:
        values[values == (1 << width) - 1] = ALL_ONES
    return values


def numpy_pack_bits(values: npt.NDArray[np.uint32], width: int) -> bytes:
    """pack_bits without the compiled packer."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width {width} is outside 1-{MAX_WIDTH}")
    count = values.size
    if count == 0:
        return b""
    v = values.reshape(-1).astype(np.uint64)
    at = _layout(count, width)
    words = np.zeros(at.words, dtype=np.uint64)
    # Every 64-bit word but possibly the last holds the start of a value (width <= 32), so OR-ing the
    # values' low parts by word is one reduceat over runs of equal word index.
    words[at.word[at.firsts]] = np.bitwise_or.reduceat(v << at.offset, at.firsts)
    if at.spill.size:
        words[at.word[at.spill] + 1] |= v[at.spill] >> (np.uint64(64) - at.offset[at.spill])
    return words.astype("<u8", copy=False).tobytes()[: packed_size(count, width)]


def numpy_unpack_bits(blob: bytes | memoryview, count: int, width: int) -> npt.NDArray[np.uint32]:
    """unpack_bits without the compiled packer."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width {width} is outside 1-{MAX_WIDTH}")
    if len(blob) != packed_size(count, width):
        raise ValueError(f"{len(blob)} bytes cannot hold exactly {count} values of {width} bits")
    if count == 0:
        return np.zeros(0, dtype=np.uint32)
    padded = np.zeros((len(blob) + 15) // 8 * 8, dtype=np.uint8)  # one spare word for the spill read
    padded[: len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    words = padded.view("<u8")
    at = _layout(count, width)
    word, offset = at.word, at.offset
    low = words[word] >> offset
    # The next word's bits shifted up by 64 - offset, in two steps so no shift reaches 64.
    high = (words[word + 1] << np.uint64(1)) << (np.uint64(63) - offset)
    mask = np.uint64((1 << width) - 1)
    values: npt.NDArray[np.uint32] = ((low | high) & mask).astype(np.uint32)
    return values
