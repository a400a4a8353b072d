"""Lines of a JSONL upload, read in chunks with a bound on each line's length."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from app.errors import ApiError


class ChunkReader(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


def line_too_long(lineno: int, max_line_bytes: int) -> ApiError:
    return ApiError(
        422,
        f"line {lineno}: longer than {max_line_bytes} bytes, more than any valid record takes",
        loc=["body", "file", "line", lineno],
        type="too_long",
    )


async def iter_lines(
    upload: ChunkReader, *, max_line_bytes: int, chunk_size: int = 1 << 20
) -> AsyncIterator[tuple[int, bytes]]:
    """(1-based line number, line) from an upload read in chunks; the file is never held whole. A line
    longer than `max_line_bytes` is a 422 as soon as that many bytes of it were read, so at most about
    `max_line_bytes + chunk_size` bytes are ever buffered."""
    lineno = 0
    partial = bytearray()  # the start of a line that runs past the chunks read so far
    while chunk := await upload.read(chunk_size):
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            lineno += 1
            if partial:
                partial += memoryview(chunk)[start:end]
                line = bytes(partial)
                partial.clear()
            else:
                line = chunk[start:end]
            if len(line) > max_line_bytes:
                raise line_too_long(lineno, max_line_bytes)
            yield lineno, line
            start = end + 1
        partial += memoryview(chunk)[start:]
        if len(partial) > max_line_bytes:
            raise line_too_long(lineno + 1, max_line_bytes)
    if partial:
        yield lineno + 1, bytes(partial)
