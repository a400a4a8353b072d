"""Faults on the real path: teacher errors of every transient kind, a bad prompt in a batch, a teacher
restart mid-job, and Postgres terminating the service's connections mid-job."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher.serve import VllmServer
from tests.conftest import Teacher
from tests.fault_proxy import FaultProxy
from tests.helpers import all_records, result_stats, wait_done


def start_service(
    tmp_path: Path, database_url: str, teacher_url: str, name: str, request_timeout_s: float = 3, **env: str
) -> tuple[ServiceProcess, str]:
    service = ServiceProcess(
        data_dir=tmp_path,
        database_url=database_url,
        teachers=[
            {
                "name": name,
                "base_url": teacher_url,
                "model": "tiny",
                "batch_size": 16,
                "max_inflight": 2,
                "request_timeout_s": request_timeout_s,
            }
        ],
        extra_env={"DISTILLERY_WORKER_POLL_S": "0.1", "DISTILLERY_TEACHER_PROBE_INTERVAL_S": "1", **env},
    )
    key = service.create_key("faults")
    service.start()
    service.wait_ready(key)
    return service, key


@pytest.fixture
def proxied(teacher: Teacher, postgres_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, FaultProxy, str]]:
    with FaultProxy(teacher.base_url) as proxy:
        service, key = start_service(tmp_path, postgres_url, proxy.url, "proxied", DISTILLERY_WORKER_MAX_ATTEMPTS="8")
        try:
            with httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
                yield api, proxy, postgres_url
        finally:
            service.stop()


def test_transient_teacher_errors_are_retried_and_a_bad_prompt_fails_alone(
    proxied: tuple[httpx.Client, FaultProxy, str],
) -> None:
    api, proxy, database_url = proxied
    proxy.timeout_s = 5.0  # longer than the service's 3 s request timeout
    proxy.faults = ["500", "429", "broken_json", "drop", "timeout", "500"]
    too_long = "x " * 5000  # far past the tiny teacher's 2,048-token context: a permanent 400
    prompts = [{"custom_id": f"p{i}", "prompt": f"import module_{i}\n"} for i in range(40)]
    prompts.insert(17, {"custom_id": "too-long", "prompt": too_long})
    job = api.post(
        "/v1/jobs", json={"teacher": "proxied", "params": {"max_tokens": 8, "top_logprobs": 3}, "prompts": prompts}
    ).json()
    done = wait_done(api, job["id"], timeout=180)
    assert proxy.faults == [], "every injected fault was consumed"
    assert done["status"] == "completed"
    assert (done["counts"]["done"], done["counts"]["failed"]) == (40, 1)
    failures = api.get(f"/v1/jobs/{job['id']}/failures").json()["failures"]
    assert [f["custom_id"] for f in failures] == ["too-long"]
    assert "context" in failures[0]["error"] and 1 <= failures[0]["attempts"] <= 8
    assert [r["custom_id"] for r in all_records(api, job["id"], limit=100)] == [
        p["custom_id"] for p in prompts if p["custom_id"] != "too-long"
    ]
    stats = result_stats(database_url, job["id"])
    assert stats["results"] == 40
    retried = api.post(f"/v1/jobs/{job['id']}/retry").json()
    assert retried["counts"]["failed"] == 0 and retried["counts"]["pending"] == 1
    again = wait_done(api, job["id"])
    assert (again["counts"]["done"], again["counts"]["failed"]) == (40, 1)


def test_teacher_restart_mid_job_loses_nothing(tiny_teacher_dir: Path, postgres_url: str, tmp_path: Path) -> None:
    """The teacher's server is stopped and started again mid-job; with only 3 attempts per item, an outage
    that counted against them would fail items."""
    first = VllmServer(tiny_teacher_dir, log_path=tmp_path / "vllm1.log", served_model_name="tiny")
    with first:
        first.wait_ready(timeout=300)
        service, key = start_service(
            tmp_path, postgres_url, first.base_url, "restartable", DISTILLERY_WORKER_MAX_ATTEMPTS="3"
        )
        try:
            with httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
                prompts = [{"prompt": f"class Widget{i}:\n    def "} for i in range(300)]
                job = api.post(
                    "/v1/jobs",
                    json={
                        "teacher": "restartable",
                        "params": {"max_tokens": 24, "top_logprobs": 5},
                        "prompts": prompts,
                    },
                ).json()
                deadline = time.monotonic() + 120
                while api.get(f"/v1/jobs/{job['id']}").json()["counts"]["done"] < 30:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                first.stop()
                time.sleep(3)
                down = api.get(f"/v1/jobs/{job['id']}").json()
                second = VllmServer(
                    tiny_teacher_dir, log_path=tmp_path / "vllm2.log", served_model_name="tiny", port=first.port
                )
                with second:
                    second.wait_ready(timeout=300)
                    done = wait_done(api, job["id"], timeout=240)
        finally:
            service.stop()
    stats = result_stats(postgres_url, job["id"])
    print(f"\nteacher restart: done {down['counts']['done']} when stopped; final {done['counts']}; {stats}")
    assert down["status"] == "running" and down["counts"]["failed"] == 0
    assert done["status"] == "completed" and done["counts"]["done"] == 300 and done["counts"]["failed"] == 0
    assert stats["results"] == 300 and stats["max_attempts"] <= 3


async def _terminate(admin_dsn: str, application_name: str) -> int:
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    finally:
        await conn.close()
    return len(rows)


def test_terminated_database_connections_mid_job(teacher: Teacher, postgres_url: str, tmp_path: Path) -> None:
    app_name = f"dbfault-{uuid.uuid4().hex[:8]}"
    service, key = start_service(
        tmp_path, postgres_url, teacher.base_url, "dbfault", DISTILLERY_DATABASE_APPLICATION_NAME=app_name
    )
    answers: Counter[str] = Counter()
    stop = threading.Event()
    try:
        with httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as api:
            prompts = [{"prompt": f"def route_{i}(path):\n"} for i in range(400)]
            job = api.post(
                "/v1/jobs",
                json={"teacher": "dbfault", "params": {"max_tokens": 24, "top_logprobs": 5}, "prompts": prompts},
            ).json()

            def poll() -> None:
                with httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c:
                    while not stop.is_set():
                        try:
                            answers[str(c.get(f"/v1/jobs/{job['id']}").status_code)] += 1
                        except httpx.HTTPError as exc:
                            answers[type(exc).__name__] += 1
                        time.sleep(0.05)

            poller = threading.Thread(target=poll)
            poller.start()
            killed = 0
            admin = postgres_url.replace("postgresql+asyncpg", "postgresql")
            for _ in range(6):
                time.sleep(1.0)
                killed += asyncio.run(_terminate(admin, app_name))
            done = wait_done(api, job["id"], timeout=240)
            stop.set()
            poller.join()
    finally:
        stop.set()
        service.stop()
    stats = result_stats(postgres_url, job["id"])
    print(f"\ndatabase faults: {killed} connections terminated; API answers {dict(answers)}; {stats}")
    assert killed > 0
    assert done["status"] == "completed" and done["counts"]["done"] == 400 and done["counts"]["failed"] == 0
    assert stats["results"] == 400
    assert set(answers) <= {"200", "503"}, answers
    assert answers["200"] > 0


def test_a_cancelled_job_is_never_sent_again(proxied: tuple[httpx.Client, FaultProxy, str]) -> None:
    """Cancel while requests are in flight that then fail (transient 504s): their items come back from the
    teacher after the cancel, and must be cancelled, not queued and sent again."""
    api, proxy, database_url = proxied
    proxy.timeout_s = 2.0  # each hung request answers 504 after 2 s (the service's own timeout is 3 s)
    proxy.faults = ["timeout"] * 4
    prompts = [{"prompt": f"def cancelled_{i}():"} for i in range(120)]
    body = {"teacher": "proxied", "params": {"max_tokens": 8, "top_logprobs": 3}, "prompts": prompts}
    keys = [p["prompt"] for p in prompts]
    job = api.post("/v1/jobs", json=body).json()
    deadline = time.monotonic() + 30
    while sum(proxy.sent[k] for k in keys) < 32 and time.monotonic() < deadline:  # two batches of 16 hang
        time.sleep(0.05)
    assert sum(proxy.sent[k] for k in keys) >= 32, "no request in flight to cancel under"
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    settled = wait_done(api, job["id"], timeout=60)  # pending 0: every in-flight item came back and settled
    sent_at_settle = {k: proxy.sent[k] for k in keys}
    time.sleep(3.0)  # several poll intervals and backoffs: anything released as queued would go out again
    assert {k: proxy.sent[k] for k in keys} == sent_at_settle, "a prompt of the cancelled job was sent again"
    assert max(sent_at_settle.values()) == 1, "a prompt of the cancelled job went out twice"
    counts = settled["counts"]
    assert counts["cancelled"] > 0 and counts["done"] + counts["failed"] + counts["cancelled"] == 120
    stats = result_stats(database_url, job["id"])
    assert stats.get("items_queued", 0) == 0 and stats.get("items_leased", 0) == 0
    assert stats["results"] == counts["done"]
