"""Where dataset files live: a small DatasetStorage protocol and LocalStorage, a directory on disk.

Keys are "/"-separated relative names ("<project>/<dataset>/<file>"). Writers stream chunks and only
become visible on commit, so a reader never sees half a file; an S3-compatible store can implement the
same protocol with multipart uploads and ranged GETs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

READ_CHUNK = 1 << 20


class StorageWriter(Protocol):
    """One object being written: append chunks, then commit (publish) or abort (discard)."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class DatasetStorage(Protocol):
    """The operations the dataset builder and the download route need from a store."""

    def create(self, key: str) -> StorageWriter: ...
    def put(self, key: str, data: bytes) -> None: ...
    def open(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> None: ...


class _LocalWriter:
    """Writes to "<path>.partial" and renames it into place on commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.partial.open("wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)


class LocalStorage:
    """Dataset files under one root directory on the local file system."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        """The file for a key; refuses keys that would leave the root."""
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or "\\" in p for p in parts):
            raise ValueError(f"bad storage key {key!r}")
        return self.root.joinpath(*parts)

    def create(self, key: str) -> StorageWriter:
        return _LocalWriter(self.path(key))

    def put(self, key: str, data: bytes) -> None:
        writer = self.create(key)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def open(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of the object (end None: to its end), in chunks of at most READ_CHUNK."""
        with self.path(key).open("rb") as f:
            f.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = f.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under the prefix (a dataset's directory)."""
        shutil.rmtree(self.path(prefix), ignore_errors=True)
