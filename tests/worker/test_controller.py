"""InflightController against model servers: it finds a throughput knee and stays near it, fills a server
whose front end holds requests, keeps a server's queue short, and backs off on errors."""

from __future__ import annotations

from app.worker.controller import InflightController

STEP = 64


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_climbs_to_the_knee_and_holds_there() -> None:
    """A GPU-like server: tokens/s grows with sequences up to 300 of them (its knee), then stays flat, and
    every sequence sent runs (no queue). The target must pass the start, stop near the knee and not run
    away past it while holding or probing again."""
    clock = Clock()
    controller = InflightController(step=STEP, ceiling=64 * STEP, clock=clock)
    generated = 0.0
    seen = []
    for _ in range(200):  # 200 readings, 0.5 s apart: 100 s
        clock.now += 0.5
        inflight = controller.target
        generated += 0.5 * 30.0 * min(inflight, 300)
        controller.on_server_load(running=inflight, waiting=0, generated=generated, inflight=inflight)
        seen.append(controller.target)
    assert max(seen) <= 300 + 2 * STEP, max(seen)
    assert 300 - STEP <= seen[-1] <= 300 + STEP, seen[-40:]
    assert sum(1 for t in seen[100:] if t >= 300) >= 50, "it holds at the knee rather than dropping below"


def test_a_front_end_holding_requests_makes_it_grow_fast() -> None:
    controller = InflightController(step=STEP, ceiling=64 * STEP, clock=Clock())
    start = controller.target
    controller.on_server_load(running=0, waiting=0, generated=None, inflight=start)
    assert controller.target >= start + STEP
    held = controller.target
    controller.on_server_load(running=10, waiting=0, generated=None, inflight=held // 4)
    assert controller.target == held, "not using its target: no reason to grow"


def test_keeps_the_servers_queue_between_half_a_batch_and_two() -> None:
    controller = InflightController(step=STEP, ceiling=64 * STEP, start=512, clock=Clock())
    controller.on_server_load(running=128, waiting=300, generated=None, inflight=512)
    assert controller.target == 512 - STEP
    controller.on_server_load(running=128, waiting=100, generated=None, inflight=448)
    assert controller.target == 448, "a queue of under two batches is what keeps the engine fed"
    controller.on_server_load(running=128, waiting=10, generated=None, inflight=448)
    assert controller.target == 448 + STEP


def test_errors_halve_it_down_to_one_batch() -> None:
    controller = InflightController(step=STEP, ceiling=64 * STEP, start=512, clock=Clock())
    controller.on_error()
    assert controller.target == 256
    for _ in range(10):
        controller.on_error()
    assert controller.target == STEP


def test_without_metrics_it_climbs_on_its_own_answers() -> None:
    clock = Clock()
    controller = InflightController(step=STEP, ceiling=64 * STEP, clock=clock)
    for _ in range(800):  # answers every 0.1 s for 80 s; tokens/s grows with the target up to 500 sequences
        clock.now += 0.1
        inflight = controller.target
        controller.on_answer(tokens=int(0.1 * 20 * min(inflight, 500)), inflight=inflight)
    assert 500 - STEP <= controller.target <= 500 + 2 * STEP, controller.target
