"""/metrics and the worker's metrics port against a real job on the real teacher: the counters match what
the job stored, the queue gauges come back to 0, labels carry route templates and never ids; request ids
reach the JSON log lines and the answer."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from distillery_tools.service_process import ServiceProcess, stop_process
from distillery_tools.tiny_teacher.serve import free_port
from tests.conftest import Teacher, teacher_settings
from tests.helpers import submit, wait_done

FAST_GAUGES = {"DISTILLERY_METRICS_REFRESH_S": "0.2", "DISTILLERY_LOG_FORMAT": "json"}
PROMPTS = [{"prompt": f"def metric_{i}("} for i in range(12)]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page by (name, sorted labels)."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def test_api_metrics_count_what_the_job_stored(teacher: Teacher, empty_postgres: str, tmp_path: Path) -> None:
    """The embedded worker's counters are on the API's /metrics (public: no key), and agree with the job."""
    service = ServiceProcess(
        data_dir=tmp_path, teachers=teacher_settings(teacher), database_url=empty_postgres, extra_env=FAST_GAUGES
    )
    key = service.create_key("metrics")
    with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        service.wait_ready(key)
        before = scrape(f"{service.url}/metrics")
        job = wait_done(api, submit(api, PROMPTS, max_tokens=8, top_logprobs=3)["id"])
        assert job["status"] == "completed" and job["tokens_generated"] > 0
        api.get(f"/v1/jobs/{job['id']}")
        export = api.get(f"/v1/jobs/{job['id']}/export", params={"format": "jsonl"})
        wait_for(lambda: value(scrape(f"{service.url}/metrics"), "distillery_jobs", state="completed") >= 1)
        after = scrape(f"{service.url}/metrics")

    generated = value(after, "distillery_generated_tokens_total", teacher="tiny") - value(
        before, "distillery_generated_tokens_total", teacher="tiny"
    )
    assert generated == job["tokens_generated"]
    done = value(after, "distillery_items_finished_total", result="done")
    assert done - value(before, "distillery_items_finished_total", result="done") == len(PROMPTS)
    assert value(after, "distillery_stored_bytes_total", teacher="tiny") > 0
    assert value(after, "distillery_export_rows_total", format="jsonl") == len(PROMPTS)
    assert value(after, "distillery_export_bytes_total", format="jsonl") == len(export.content)
    replica = teacher.base_url.rstrip("/")
    assert value(after, "distillery_teacher_requests_total", teacher="tiny", replica=replica, outcome="2xx") >= 1
    assert value(after, "distillery_teacher_request_seconds_count", teacher="tiny") >= 1
    for name in ("distillery_claim_seconds_count", "distillery_parse_seconds_count", "distillery_store_seconds_count"):
        assert value(after, name) >= 1, name
    assert value(after, "distillery_queue_items", teacher="tiny", state="queued") == 0
    assert value(after, "distillery_queue_items", teacher="tiny", state="leased") == 0
    assert value(after, "distillery_replica_in_rotation", teacher="tiny", replica=replica) == 1
    route = ("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")
    assert after.get(("distillery_http_requests_total", tuple(sorted(route))), 0) >= 1
    labels = [v for (_, pairs) in after for _, v in pairs]
    assert not [v for v in labels if UUID.search(v)], "an id in a label"


def test_queue_gauges_see_waiting_work(teacher: Teacher, tmp_path: Path) -> None:
    """With no worker, a job's items are queued and age: the gauges say so (SQLite)."""
    service = ServiceProcess(
        data_dir=tmp_path, teachers=teacher_settings(teacher), extra_env=FAST_GAUGES, embedded_worker=False
    )
    key = service.create_key("queue")
    with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        service.wait_ready(key)
        submit(api, PROMPTS, max_tokens=4)
        metrics_url = f"{service.url}/metrics"
        wait_for(lambda: value(scrape(metrics_url), "distillery_queue_items", teacher="tiny", state="queued") == 12)
        time.sleep(1.0)
        samples = scrape(f"{service.url}/metrics")
    assert value(samples, "distillery_queue_oldest_item_age_seconds", teacher="tiny") >= 0.5
    assert value(samples, "distillery_jobs", state="queued") == 1


def test_standalone_worker_serves_its_own_metrics(teacher: Teacher, empty_postgres: str, tmp_path: Path) -> None:
    service = ServiceProcess(
        data_dir=tmp_path,
        teachers=teacher_settings(teacher),
        database_url=empty_postgres,
        extra_env=FAST_GAUGES,
        embedded_worker=False,
    )
    key = service.create_key("worker-metrics")
    port = free_port()
    with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        service.wait_ready(key)
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app", "worker", "--metrics-port", str(port)],
                env=service.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(lambda: _answers(f"http://127.0.0.1:{port}/metrics"), timeout=60)
                job = wait_done(api, submit(api, PROMPTS, max_tokens=8, top_logprobs=2)["id"])
                ours = scrape(f"http://127.0.0.1:{port}/metrics")
            finally:
                stop_process(worker, grace=20)
        api_side = scrape(f"{service.url}/metrics")
    assert value(ours, "distillery_generated_tokens_total", teacher="tiny") == job["tokens_generated"]
    replica = teacher.base_url.rstrip("/")
    assert ("distillery_inflight_sequences", (("replica", replica), ("teacher", "tiny"))) in ours
    assert value(api_side, "distillery_generated_tokens_total", teacher="tiny") == 0, "the API counted the worker's"
    raw = (tmp_path / "worker.log").read_bytes().splitlines()
    lines = [orjson.loads(line) for line in raw if line.startswith(b"{")]
    assert lines and all("msg" in line and "level" in line for line in lines)


def test_request_id_in_answer_and_json_log(teacher: Teacher, tmp_path: Path) -> None:
    service = ServiceProcess(data_dir=tmp_path, teachers=teacher_settings(teacher), extra_env=FAST_GAUGES)
    key = service.create_key("logs")
    with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        service.wait_ready(key)
        given = api.get("/v1/jobs", headers={"x-request-id": "trace-4711"})
        made = api.get("/v1/jobs", headers={"x-request-id": "bad id with spaces"})
        refused = httpx.get(f"{service.url}/v1/jobs", headers={"x-request-id": "anon-1"})
    assert given.headers["x-request-id"] == "trace-4711"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "anon-1"
    entries = [orjson.loads(line) for line in service.log_path.read_bytes().splitlines() if line.startswith(b"{")]
    access = {e.get("request_id"): e for e in entries if e["logger"] == "distillery.access"}
    assert access["trace-4711"]["status"] == 200 and access["anon-1"]["status"] == 401
    assert made.headers["x-request-id"] in access
    assert key not in service.log_path.read_text()
