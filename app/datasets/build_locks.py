"""Which dataset builds have a live builder, across processes: a builder holds an exclusive flock on
`<datasets dir>/.building/<dataset id>.lock` from before the dataset row exists until the build ends. The
kernel drops the lock when the process dies, so a `building` dataset whose lock can be taken was left by a
killed process. Needs every service process to see the same datasets directory (it must anyway, to serve
the files) on one host's file system: flock is not reliable over network file systems.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR = ".building"


class BuildLocks:
    """Per-dataset build locks in one directory."""

    def __init__(self, datasets_dir: Path) -> None:
        self.directory = datasets_dir / LOCK_DIR

    def _path(self, dataset_id: uuid.UUID) -> Path:
        return self.directory / f"{dataset_id}.lock"

    def _try_lock(self, dataset_id: uuid.UUID) -> int | None:
        """A descriptor holding the dataset's lock, or None when another holder has it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(dataset_id), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _release(self, dataset_id: uuid.UUID, fd: int) -> None:
        # Only a holder unlinks, so a live builder's file is never removed under it.
        self._path(dataset_id).unlink(missing_ok=True)
        os.close(fd)

    @contextmanager
    def building(self, dataset_id: uuid.UUID) -> Iterator[None]:
        """Held by the builder for the whole build."""
        fd = self._try_lock(dataset_id)
        if fd is None:
            raise RuntimeError(f"dataset {dataset_id} already has a builder")
        try:
            yield
        finally:
            self._release(dataset_id, fd)

    @contextmanager
    def orphaned(self, dataset_id: uuid.UUID) -> Iterator[bool]:
        """True when no process builds the dataset; the lock is then held until the block ends."""
        fd = self._try_lock(dataset_id)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                self._release(dataset_id, fd)
