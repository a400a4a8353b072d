"""Rice coding (app/codecs/rice.py): the compiled and numpy coders write the same bytes and read them back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.codecs import rice
from app.codecs.rice import numpy_rice_decode, numpy_rice_encode, rice_decode, rice_encode
from tests.conftest import IN_CI

# Skipped only outside CI: under CI=true the normal install must have built it (the test then fails).
compiled = pytest.mark.skipif(rice._rice is None and not IN_CI, reason="the compiled Rice coder is not built")


@st.composite
def value_sets(draw: st.DrawFn) -> np.ndarray:
    """Gap-like values: mostly small, on a grid of 2^shift, with rare large outliers."""
    count = draw(st.integers(min_value=0, max_value=3000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.0, 0.5, 3.0, 100.0, 5000.0, 40000.0]))
    shift = draw(st.integers(0, 8))
    values = np.minimum(rng.exponential(scale, count), 0xFFFF).astype(np.uint32) >> shift << shift
    if count and draw(st.booleans()):
        values[rng.integers(0, count)] = draw(st.sampled_from([0, 1, 0xFFFE, 0xFFFF]))
    return values.astype(np.uint16)


def _independent_decode(blob: bytes, count: int) -> list[int]:
    """The layout read bit by bit from the module docstring, to check the coders against."""
    shift, r = blob[0], blob[1]
    low_bytes = (count * r + 7) // 8
    low = int.from_bytes(blob[2 : 2 + low_bytes], "little")
    unary = int.from_bytes(blob[2 + low_bytes :], "little")
    out, pos = [], 0
    for i in range(count):
        high = 0
        while not (unary >> pos) & 1:
            high, pos = high + 1, pos + 1
        pos += 1
        out.append(((high << r) | ((low >> (i * r)) & ((1 << r) - 1))) << shift)
    assert unary >> pos == 0  # nothing after the last value
    return out


@settings(max_examples=300, deadline=None)
@given(value_sets())
def test_round_trip_and_layout(values: np.ndarray) -> None:
    blob = rice_encode(values)
    np.testing.assert_array_equal(rice_decode(blob, values.size), values)
    assert _independent_decode(blob, values.size) == values.tolist()
    # never much longer than the values at 17 bits each (2 header bytes, 2 bytes of padding)
    assert len(blob) <= 4 + (values.size * 17 + 7) // 8


@compiled
@settings(max_examples=300, deadline=None)
@given(value_sets(), st.integers(1, 70))
def test_compiled_and_numpy_coders_agree(values: np.ndarray, run: int) -> None:
    blob = numpy_rice_encode(values)
    assert rice._rice.encode(values.astype("<u2").tobytes()) == blob
    limit = 0xFFFF * 70
    compiled_values = np.frombuffer(rice._rice.decode(blob, values.size, 1, limit), "<u2")
    np.testing.assert_array_equal(compiled_values, numpy_rice_decode(blob, values.size))
    # the delta decoding: each run of `run` values summed cumulatively, as far as the sums fit 16 bits
    padded = np.concatenate([values.astype(np.int64), np.zeros(-values.size % run, np.int64)])
    sums = np.cumsum(padded.reshape(-1, run), axis=1).reshape(-1)[: values.size]
    if sums.size == 0 or sums.max() <= 0xFFFF:
        want = sums.astype(np.uint16)
        np.testing.assert_array_equal(numpy_rice_decode(blob, values.size, run=run), want)
        np.testing.assert_array_equal(np.frombuffer(rice._rice.decode(blob, values.size, run, 0xFFFF), "<u2"), want)
    else:
        for decode in (numpy_rice_decode, rice_decode):
            with pytest.raises(ValueError, match="limit"):
                decode(blob, values.size, run=run)


def test_the_shift_takes_the_grid_and_the_parameter_fits_the_values() -> None:
    values = np.array([64, 128, 0, 192, 64 * 40], dtype=np.uint16)
    blob = rice_encode(values)
    assert blob[0] == 6  # every value a multiple of 64
    assert blob[1] <= 4  # values / 64 average ~9: a parameter near log2 of that
    np.testing.assert_array_equal(rice_decode(blob, 5), values)


@pytest.mark.parametrize("decode", [numpy_rice_decode, rice_decode])
def test_malformed_blobs_are_refused(decode) -> None:  # type: ignore[no-untyped-def]
    values = np.array([3, 0, 7, 1], dtype=np.uint16)
    blob = rice_encode(values)
    with pytest.raises(ValueError):
        decode(blob, 5)  # fewer values than asked
    with pytest.raises(ValueError):
        decode(blob, 3)  # more values than asked
    with pytest.raises(ValueError):
        decode(blob[:1], 4)  # no header
    with pytest.raises(ValueError):
        decode(bytes([16, blob[1]]) + blob[2:], 4)  # impossible shift
    with pytest.raises(ValueError):
        decode(bytes([0, 17]) + blob[2:], 4)  # impossible parameter
    with pytest.raises(ValueError, match="limit"):
        decode(blob, 4, limit=6)
    assert decode(bytes([0, 0]), 0).size == 0
