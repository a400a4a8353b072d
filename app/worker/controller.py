"""InflightController: how many sequences to keep in flight on one replica, found without tuning.

With the server's own metrics (vLLM's `/metrics`: sequences running and waiting, tokens generated):
- while the server queues work (it runs all it can), keep its queue between half a batch and two batches:
  enough to refill its slots the moment a batch finishes, short enough that a new job's prompts are not
  stuck behind a long queue;
- while most of what we sent is outside its engine (a busy front end parsing requests and serializing
  answers, as a CPU server's is), raise the target: the engine must not idle meanwhile;
- while it runs everything it is given, climb: raise the target a batch at a time as long as the server's
  tokens/s still rises by 5%; when a raise no longer pays, step back and hold, probing again later.
  More sequences past that knee only slow each one (longer leases, a longer wait for every other job).
Without metrics the same climb runs on the tokens/s of our own answers. Errors and timeouts halve it."""

from __future__ import annotations

import time
from collections.abc import Callable

GAIN = 1.05  # a raise must lift tokens/s by 5% to count
SETTLE_READINGS = 2  # readings at a level before it is judged
HOLD_S = 15.0  # after finding the knee, how long before probing above it again
OWN_WINDOW_S = 2.0  # without server metrics: our own tokens/s over windows this long


class InflightController:
    """A target of sequences in flight, between one batch (`step`) and `ceiling`."""

    def __init__(
        self, *, step: int, ceiling: int, start: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.step = max(1, step)
        self.ceiling = max(self.step, ceiling)
        self.floor = self.step
        self.target = min(self.ceiling, start if start is not None else 2 * self.step)
        self._previous: tuple[int, float] | None = None  # (target, tokens/s) of the level below
        self._rates: list[float] = []  # tokens/s readings at the current level
        self._hold_until = 0.0
        self._last: tuple[float, float] | None = None  # (time, generated tokens total) of the last reading
        self._own_start = self.clock()
        self._own_tokens = 0

    def on_server_load(self, running: int, waiting: int, generated: float | None, inflight: int) -> None:
        """A reading of the replica's counts (all its clients): running and waiting sequences, generated
        tokens so far (a counter), with our sequences in flight."""
        now = self.clock()
        rate = None
        if generated is not None:
            if self._last is not None and now > self._last[0] and generated >= self._last[1]:
                rate = (generated - self._last[1]) / (now - self._last[0])
            self._last = (now, generated)
        using = inflight >= 0.8 * self.target
        if waiting > 2 * self.step:
            self._set(max(self.floor, self.target - self.step))
        elif waiting > 0:
            if waiting < self.step // 2 and using:
                self._set(min(self.ceiling, self.target + self.step))
        elif using and running + waiting < inflight // 2:
            # Most of what we sent is not in the engine: it is being parsed in, or answered out, by the
            # server's front end. Nothing queues for the engine meanwhile, so send more, and fast.
            self._set(min(self.ceiling, self.target + max(self.step, self.target // 2)))
        elif using and rate is not None:
            self._climb(rate, now)

    def on_answer(self, tokens: int, inflight: int) -> None:
        """Without server metrics: climb on our own answers' tokens/s."""
        self._own_tokens += tokens
        now = self.clock()
        if now - self._own_start < OWN_WINDOW_S:
            return
        rate = self._own_tokens / (now - self._own_start)
        self._own_start, self._own_tokens = now, 0
        if inflight >= 0.8 * self.target:
            self._climb(rate, now)

    def on_error(self) -> None:
        """Errors and timeouts: back off multiplicatively."""
        self._set(max(self.floor, self.target // 2))

    def _climb(self, rate: float, now: float) -> None:
        self._rates.append(rate)
        if len(self._rates) < SETTLE_READINGS or now < self._hold_until:
            return
        level = sum(self._rates[-SETTLE_READINGS:]) / SETTLE_READINGS
        if self._previous is not None and level < self._previous[1] * GAIN:
            back = self._previous[0]  # the last raise did not pay: step back and hold
            self._previous = None
            self._set(back)
            self._hold_until = now + HOLD_S
            return
        self._previous = (self.target, level)
        self._set(min(self.ceiling, self.target + self.step))

    def _set(self, target: int) -> None:
        if target != self.target:
            self.target = target
            self._rates = []
        if target == self.ceiling:
            self._previous = None
