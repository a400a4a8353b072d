"""Upload lines read in chunks: split exactly wherever the chunks fall, and a line past the bound is a 422
naming it as soon as the bound is passed, even if the line never ends."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.errors import ApiError
from app.jobs.lines import ChunkReader, iter_lines


class Chunks:
    """An upload that hands out its data in reads of random sizes up to the size asked for."""

    def __init__(self, data: bytes, seed: int) -> None:
        self.data = data
        self.offset = 0
        self.rng = random.Random(seed)

    async def read(self, size: int = -1) -> bytes:
        n = self.rng.randint(1, size)
        chunk = self.data[self.offset : self.offset + n]
        self.offset += len(chunk)
        return chunk


class EndlessLine:
    """An upload whose first line is fine and whose second never ends; counts the bytes read."""

    def __init__(self) -> None:
        self.read_bytes = 0
        self.started = False

    async def read(self, size: int = -1) -> bytes:
        chunk = b'{"prompt": "a"}\n{"prompt": "' if not self.started else b"x" * size
        self.started = True
        self.read_bytes += len(chunk)
        await asyncio.sleep(0)
        return chunk


async def collect(upload: ChunkReader, max_line_bytes: int, chunk_size: int) -> list[tuple[int, bytes]]:
    return [pair async for pair in iter_lines(upload, max_line_bytes=max_line_bytes, chunk_size=chunk_size)]


@pytest.mark.parametrize("seed", range(5))
def test_lines_split_the_same_wherever_chunks_fall(seed: int) -> None:
    rng = random.Random(seed)
    lines = [bytes(rng.choice(b"ab{} ") for _ in range(rng.choice([0, 1, 5, 40, 200]))) for _ in range(300)]
    data = b"\n".join(lines)
    got = asyncio.run(collect(Chunks(data, seed), max_line_bytes=200, chunk_size=64))
    want = list(enumerate(lines, start=1))
    if not lines[-1]:
        want.pop()
    assert got == want


@pytest.mark.parametrize("data", [b"ok\n" + b"y" * 101 + b"\nok", b"ok\n" + b"y" * 101])
def test_one_byte_over_the_bound_is_refused_at_its_line(data: bytes) -> None:
    assert asyncio.run(collect(Chunks(b"ok\n" + b"y" * 100 + b"\nok", 1), max_line_bytes=100, chunk_size=16))
    with pytest.raises(ApiError) as refused:
        asyncio.run(collect(Chunks(data, 1), max_line_bytes=100, chunk_size=16))
    assert refused.value.status_code == 422
    assert refused.value.detail[0]["loc"] == ["body", "file", "line", 2]


def test_a_line_that_never_ends_is_refused_after_about_the_bound() -> None:
    upload = EndlessLine()
    max_line_bytes, chunk_size = 1 << 20, 1 << 16

    async def read_all() -> None:
        await asyncio.wait_for(collect(upload, max_line_bytes, chunk_size), timeout=10)

    with pytest.raises(ApiError) as refused:
        asyncio.run(read_all())
    assert refused.value.detail[0]["loc"] == ["body", "file", "line", 2]
    assert "line 2" in refused.value.detail[0]["msg"]
    assert upload.read_bytes <= max_line_bytes + 2 * chunk_size, "stopped reading once the bound was passed"
