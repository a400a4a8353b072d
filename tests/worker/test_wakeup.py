"""A new job starts as soon as it is created, not at the next poll: Postgres wakes idle workers with
NOTIFY (a standalone worker in another process here), SQLite's embedded worker is woken in-process. The
poll interval is set to 10 s, so jobs that start within 2 s were woken, not found by polling."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from distillery_tools.service_process import ServiceProcess, stop_process
from tests.conftest import Teacher, teacher_settings
from tests.helpers import wait_done

SLOW_POLL = {"DISTILLERY_WORKER_POLL_S": "10"}


def start_delays(api: httpx.Client, teacher: str, rounds: int = 3) -> list[float]:
    """Seconds from each job's creation to its first claim, for one-prompt jobs sent to an idle worker."""
    delays = []
    for i in range(rounds):
        time.sleep(0.5)
        body = {"teacher": teacher, "params": {"max_tokens": 2, "top_logprobs": 2}, "prompts": [{"prompt": f"w{i}"}]}
        created = api.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        job = wait_done(api, created.json()["id"], timeout=60)
        assert job["status"] == "completed"
        started, made = datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["created_at"])
        delays.append((started - made).total_seconds())
    return delays


def test_postgres_notify_wakes_a_standalone_worker(teacher: Teacher, postgres_url: str, tmp_path: Path) -> None:
    service = ServiceProcess(
        data_dir=tmp_path,
        teachers=teacher_settings(teacher, name="wake-pg"),
        database_url=postgres_url,
        extra_env=SLOW_POLL,
        embedded_worker=False,
    )
    key = service.create_key("wake")
    with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        service.wait_ready(key)
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app", "worker"], env=service.env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                time.sleep(3.0)  # the worker probes its teacher, finds nothing to do, and waits
                delays = start_delays(api, "wake-pg")
            finally:
                stop_process(worker, grace=20)
    assert max(delays) < 2.0, delays


def test_sqlite_embedded_worker_is_woken_in_process(teacher: Teacher, tmp_path: Path) -> None:
    service = ServiceProcess(data_dir=tmp_path, teachers=teacher_settings(teacher), extra_env=SLOW_POLL)
    key = service.create_key("wake")
    with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        service.wait_ready(key)
        delays = start_delays(api, "tiny")
    assert max(delays) < 2.0, delays
