"""InflightController: how many sequences to keep in flight on one replica, found without tuning.

With the server's own metrics (vLLM's `/metrics`: sequences running and waiting, tokens generated):
- while the server queues work (it runs all it can), keep its queue between half a batch and two batches:
  enough to refill its slots the moment a batch finishes, short enough that a new job's prompts are not
  stuck behind a long queue;
- while most of what we sent is outside its engine (a busy front end parsing requests and serializing
  answers, as a CPU server's is), raise the target: the engine must not idle meanwhile;
- while it runs everything it is given, hill-climb on the server's tokens/s a batch at a time: down while a
  cut costs under 5%, up while a raise gains over 5%; at the edge, step back and hold, then probe again.
  It settles at the fewest sequences that give full output: more past that knee only slow each one
  (longer leases, a longer wait for every other job).
Without metrics the same climb runs on the tokens/s of our own answers. Errors and timeouts halve it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

GAIN = 1.05  # a raise must lift tokens/s by 5% to count
SETTLE_READINGS = 3  # readings at a level before it is judged
START_BATCHES = 2  # a fresh replica gets this many batches at once
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
        # Two batches, then climb. A higher start fills a busy CPU server sooner (saturation 1.02 with 4
        # against 0.93 with 2), but its first wave cannot be recalled once sent: a job arriving meanwhile
        # waits behind all of it (3.0-3.7x its time alone with 4, against 1.5x with 2; see the README).
        self.target = min(self.ceiling, start if start is not None else START_BATCHES * self.step)
        self._direction = 1
        self._climb_floor = min(self.ceiling, 2 * self.step)  # the climb never probes below two batches
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
        elif abs(inflight - self.target) <= self.step // 2 and rate is not None:
            self._climb(rate, now)  # only while the target is what is in flight: else the level is not in effect

    def on_answer(self, tokens: int, inflight: int) -> None:
        """Without server metrics: climb on our own answers' tokens/s."""
        self._own_tokens += tokens
        now = self.clock()
        if now - self._own_start < OWN_WINDOW_S:
            return
        rate = self._own_tokens / (now - self._own_start)
        self._own_start, self._own_tokens = now, 0
        if abs(inflight - self.target) <= self.step // 2:
            self._climb(rate, now)

    def on_error(self) -> None:
        """Errors and timeouts: back off multiplicatively."""
        self._set(max(self.floor, self.target // 2))

    def _climb(self, rate: float, now: float) -> None:
        """Hill-climb on tokens/s, a batch at a time: up while a raise lifts it by 5%, down while a cut
        costs less than 5% (fewer in flight for the same output is better); at the edge, step back to the
        better level and hold, then probe the other way."""
        self._rates.append(rate)
        if len(self._rates) < SETTLE_READINGS or now < self._hold_until:
            return
        level = statistics.median(self._rates)  # every reading at this level: a refill's brief dip is not the level
        if self._previous is not None:
            before_target, before = self._previous
            better = level >= before * GAIN if self._direction > 0 else level >= before / GAIN
            if not better:
                self._previous = None
                self._set(before_target)
                self._hold_until = now + HOLD_S
                self._direction = -self._direction
                return
        self._previous = (self.target, level)
        moved = self.target + self._direction * self.step
        if not self._climb_floor <= moved <= self.ceiling:
            self._previous = None
            self._direction = -self._direction
            return
        self._set(moved, climbing=True)

    def _set(self, target: int, *, climbing: bool = False) -> None:
        """A new target; any change but the climb's own starts its comparison afresh."""
        if target != self.target:
            self.target = target
            self._rates = []
            if not climbing:
                self._previous = None
