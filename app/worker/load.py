"""What one worker has in flight on each replica of a teacher, and what one batch holds of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.teachers.service import Replica
from app.worker.controller import InflightController


@dataclass(eq=False)
class ReplicaLoad:
    """What this worker has in flight on one replica, and how much it may."""

    replica: Replica
    controller: InflightController
    sequences: int = 0
    requests: int = 0
    failures: int = 0
    backoff_until: float = 0.0
    down_since: float | None = None
    metrics_retry_at: float = 0.0
    next_reading_at: float = 0.0
    uses_metrics: bool = False

    def room(self) -> int:
        return self.controller.target - self.sequences


@dataclass(eq=False)
class Hold:
    """The sequences one batch holds on its replica: each part gives its share back the moment its answer
    is in (before it is decoded and stored), so the replica is refilled while the service digests."""

    load: ReplicaLoad
    sequences: int
    on_release: Callable[[bool], None]  # called with True once the whole batch is in

    def give_back(self, sequences: int | None = None) -> None:
        if self.sequences <= 0:
            return
        n = self.sequences if sequences is None else min(sequences, self.sequences)
        self.sequences -= n
        self.load.sequences -= n
        if self.sequences == 0:
            self.load.requests -= 1
        self.on_release(self.sequences == 0)
