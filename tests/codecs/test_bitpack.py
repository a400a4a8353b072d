"""Bit packing (app/codecs/bitpack.py): the compiled and numpy packers write and read the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.codecs import bitpack
from app.codecs.bitpack import ALL_ONES, numpy_pack_bits, numpy_unpack_bits, pack_bits, unpack_bits
from tests.conftest import IN_CI

# Skipped only outside CI: under CI=true the normal install must have built it (the test then fails).
compiled = pytest.mark.skipif(bitpack._bitpack is None and not IN_CI, reason="the compiled packer is not built")


@compiled
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=32), st.integers(min_value=0, max_value=3000), st.integers(0, 2**32 - 1))
def test_compiled_and_numpy_packers_agree(width: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 1 << width, count, dtype=np.uint64).astype(np.uint32)
    if count:
        values[0] = (1 << width) - 1  # the all-ones value, which the codecs read as the missing id
    blob = numpy_pack_bits(values, width)
    assert bitpack._bitpack.pack(values.astype("<u4").tobytes(), width) == blob == pack_bits(values, width)
    np.testing.assert_array_equal(unpack_bits(blob, count, width), numpy_unpack_bits(blob, count, width))
    marked = unpack_bits(blob, count, width, all_ones_as_max=True)
    want = numpy_unpack_bits(blob, count, width).copy()
    want[want == (1 << width) - 1] = ALL_ONES
    np.testing.assert_array_equal(marked, want)
    assert count == 0 or marked.view(np.int32)[0] == -1


@compiled
def test_compiled_packer_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError):
        bitpack._bitpack.pack(np.array([4], "<u4").tobytes(), 2)
    with pytest.raises(ValueError):
        bitpack._bitpack.pack(np.array([1], "<u4").tobytes(), 33)
    with pytest.raises(ValueError):
        bitpack._bitpack.unpack(b"\x00\x00", 3, 8, False)  # 3 bytes needed
