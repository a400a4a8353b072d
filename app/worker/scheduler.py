"""Fair share: which runnable job of a teacher gets the next batch.

Strict priority first (a higher `priority` job is served before any lower one). Within a priority, the
project served least recently goes next, and within a project the job served least recently, so one big
job cannot hold back another project's small one: every claim turns to the next in line. Projects at their
cap on items in flight are skipped. Batches are budgeted in logprob entries, so a turn is about the same
amount of teacher work whatever the job's max_tokens."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from app.worker.schemas import RunnableJob

NEVER = datetime.min.replace(tzinfo=UTC)


def order_jobs(jobs: list[RunnableJob]) -> list[RunnableJob]:
    """Jobs in the order they should be offered the next batch."""
    last_served: dict[uuid.UUID, datetime] = {}
    for job in jobs:
        served = job.last_claimed_at or NEVER
        last_served[job.project_id] = max(last_served.get(job.project_id, NEVER), served)
    return sorted(
        jobs,
        key=lambda j: (-j.priority, last_served[j.project_id], j.last_claimed_at or NEVER, j.created_at, j.spec.id),
    )


def room_under_cap(job: RunnableJob, inflight: dict[uuid.UUID, int], cap_of: Callable[[str], int | None]) -> int | None:
    """How many more items the job's project may put in flight (None: no cap)."""
    cap = cap_of(job.project)
    if cap is None:
        return None
    return max(0, cap - inflight.get(job.project_id, 0))
