"""InflightController: how many sequences to keep in flight on one replica, found without tuning.

With the server's own counts (vLLM's `/metrics`: sequences running and waiting) the target grows while
the server's queue is (nearly) empty and we use what we have, and shrinks when its queue grows past what
keeps it fed: the replica is never idle for want of work, and claimed items do not pile up in its queue
with their leases ticking. Growth starts multiplicative (slow start) and turns additive at the first
queue. Without metrics it climbs on observed throughput instead (AIMD): it adds a step while a step still
raised tokens/s, and halves on errors and timeouts."""

from __future__ import annotations

import time

MEASURE_WINDOW_S = 2.0


class InflightController:
    """A target of sequences in flight, between one batch (`step`) and `ceiling`."""

    def __init__(self, *, step: int, ceiling: int, start: int | None = None) -> None:
        self.step = max(1, step)
        self.ceiling = max(self.step, ceiling)
        self.floor = self.step
        self.target = min(self.ceiling, start if start is not None else 4 * self.step)
        self.slow_start = True
        self._window_start = time.monotonic()
        self._window_tokens = 0
        self._last_rate = 0.0
        self._climbing = True

    def on_server_load(self, running: int, waiting: int, inflight: int) -> None:
        """A reading of the replica's own counts (all its clients), with our sequences in flight."""
        low = self.step // 2
        high = max(2 * self.step, running)
        if waiting <= low:
            if inflight >= 0.8 * self.target:
                grown = self.target * 2 if self.slow_start else self.target + self.step
                self.target = min(self.ceiling, grown)
        else:
            self.slow_start = False
            if waiting > high:
                self.target = max(self.floor, self.target - self.step)

    def on_answer(self, tokens: int, inflight: int) -> None:
        """Without server metrics: every window, keep climbing while throughput still rises."""
        self._window_tokens += tokens
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < MEASURE_WINDOW_S:
            return
        rate = self._window_tokens / elapsed
        self._window_start, self._window_tokens = now, 0
        if inflight < 0.8 * self.target:
            return  # not using the target: its size was not what limited throughput
        if self._climbing and rate > self._last_rate * 1.05:
            self.target = min(self.ceiling, self.target + self.step)
        else:
            self._climbing = rate > self._last_rate * 1.05
        self._last_rate = rate

    def on_error(self) -> None:
        """Errors and timeouts: back off multiplicatively."""
        self.slow_start = False
        self._climbing = False
        self.target = max(self.floor, self.target // 2)
