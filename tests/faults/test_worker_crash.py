"""Workers killed with SIGKILL at several points lose nothing and store nothing twice; SIGTERM drains.

A standalone worker process runs a 240-prompt job (n = 2) on the real teacher through a counting proxy,
on Postgres, with a 3-second lease. It is killed while claiming, while requests are in flight and right
after the teacher answered (while parsing and writing); a last worker finishes the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from distillery_tools.service_process import ServiceProcess
from tests.conftest import Teacher
from tests.fault_proxy import FaultProxy
from tests.helpers import result_stats, wait_done

MAX_ATTEMPTS = 5
PROMPTS = [{"custom_id": f"p{i}", "prompt": f"def handler_{i}(request):\n"} for i in range(240)]


@pytest.fixture
def crash_setup(
    teacher: Teacher, postgres_url: str, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, FaultProxy, str]]:
    with FaultProxy(teacher.base_url) as proxy:
        service = ServiceProcess(
            data_dir=tmp_path,
            database_url=postgres_url,
            # Its own teacher name: the suite's other services never claim these items.
            teachers=[{"name": "crashy", "base_url": proxy.url, "model": "tiny", "batch_size": 16, "max_inflight": 2}],
            embedded_worker=False,
            extra_env={
                "DISTILLERY_WORKER_LEASE_S": "3",
                "DISTILLERY_WORKER_POLL_S": "0.1",
                "DISTILLERY_WORKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                "DISTILLERY_WORKER_SHUTDOWN_GRACE_S": "20",
            },
        )
        key = service.create_key("crash")
        with service:
            service.wait_ready(key)
            yield service, proxy, key


def start_worker(service: ServiceProcess, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "app", "worker"], env=service.env, stdout=out, stderr=out)


def kill_when(
    worker: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float = 60, then: float = 0.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the kill point never came"
        assert worker.poll() is None, "the worker exited by itself"
        time.sleep(0.005)
    time.sleep(then)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()


def test_sigkill_at_several_points_loses_nothing(
    crash_setup: tuple[ServiceProcess, FaultProxy, str], tmp_path: Path
) -> None:
    service, proxy, key = crash_setup
    log = tmp_path / "workers.log"
    with httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        job = api.post(
            "/v1/jobs",
            json={"teacher": "crashy", "params": {"max_tokens": 16, "top_logprobs": 5, "n": 2}, "prompts": PROMPTS},
        ).json()

        def job_status() -> str:
            return str(api.get(f"/v1/jobs/{job['id']}").json()["status"])

        # 1. While claiming: as soon as the first batch is leased.
        kill_when(start_worker(service, log), lambda: job_status() == "running")
        # 2. While requests are in flight: the proxy holds each answer for a second.
        proxy.delay_s = 1.0
        kill_when(start_worker(service, log), lambda: proxy.in_flight > 0)
        proxy.delay_s = 0.0
        # 3. While parsing and writing: 0, 100 and 300 ms after the teacher's answer went out.
        for then in (0.0, 0.1, 0.3):
            proxy.response_sent.clear()
            kill_when(start_worker(service, log), proxy.response_sent.is_set, then=then)
        killed_at = result_stats(service.env["DISTILLERY_DATABASE_URL"], job["id"])

        final = start_worker(service, log)
        try:
            done = wait_done(api, job["id"], timeout=240)
        finally:
            final.send_signal(signal.SIGTERM)
            final.wait(timeout=30)
    stats = result_stats(service.env["DISTILLERY_DATABASE_URL"], job["id"])
    print(
        f"\nafter 5 kills: {killed_at}; at the end: {stats}; requests {proxy.requests}, "
        f"most sends of one prompt {max(proxy.sent.values())}"
    )
    assert done["status"] == "completed" and done["counts"]["done"] == len(PROMPTS)
    assert stats["results"] == 2 * len(PROMPTS)
    assert stats["items_done"] == len(PROMPTS)
    assert stats["max_attempts"] <= MAX_ATTEMPTS
    sent = {p["prompt"]: proxy.sent[p["prompt"]] for p in PROMPTS}  # the service's own probes aside
    assert min(sent.values()) >= 1
    assert max(sent.values()) <= MAX_ATTEMPTS, "a prompt was sent more often than the retry policy allows"
    assert final.returncode == 0


def test_sigterm_drains_in_flight_work_then_exits(
    crash_setup: tuple[ServiceProcess, FaultProxy, str], tmp_path: Path
) -> None:
    service, proxy, key = crash_setup
    with httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        job = api.post(
            "/v1/jobs",
            json={"teacher": "crashy", "params": {"max_tokens": 8, "top_logprobs": 2}, "prompts": PROMPTS[:64]},
        ).json()
        proxy.delay_s = 2.0
        worker = start_worker(service, tmp_path / "w.log")
        deadline = time.monotonic() + 60
        # In flight with the job's prompts (the worker's own teacher probe also goes through the proxy).
        while proxy.in_flight == 0 or not any(proxy.sent[p["prompt"]] for p in PROMPTS[:64]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        took = time.monotonic() - stopped_at
        proxy.delay_s = 0.0
        stats = result_stats(service.env["DISTILLERY_DATABASE_URL"], job["id"])
        assert stats.get("items_leased", 0) == 0, "a drained worker leaves no lease behind"
        assert stats["results"] >= 16, "the in-flight batch was finished and stored, not dropped"
        assert took < 20
        final = start_worker(service, tmp_path / "w.log")
        try:
            assert wait_done(api, job["id"], timeout=120)["counts"]["done"] == 64
        finally:
            final.send_signal(signal.SIGTERM)
            final.wait(timeout=30)
    assert result_stats(service.env["DISTILLERY_DATABASE_URL"], job["id"])["results"] == 64
