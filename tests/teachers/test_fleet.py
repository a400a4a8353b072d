"""A teacher's replicas on the real path: a replica with another tokenizer stays out of rotation and out of
every job; a teacher behind an API key works with the key, pauses without failing anything when the key is
refused (a real 401 from vLLM started with --api-key) and resumes when it is accepted again; a replica
that goes away mid-job leaves the job to the other, with nothing lost and nothing stored twice."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher.build import TinyTeacherSpec, build_tiny_teacher
from distillery_tools.tiny_teacher.serve import VllmServer
from tests.conftest import Teacher
from tests.fault_proxy import FaultProxy
from tests.helpers import result_stats, wait_done

API_KEY = "sk-teacher-secret-0123456789"


@pytest.fixture(scope="module")
def keyed_other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second tiny teacher with its own tokenizer (vocab 1,024), served as "tiny" behind --api-key."""
    root = tmp_path_factory.mktemp("keyed")
    spec = TinyTeacherSpec(vocab_size=1024, corpus_max_bytes=1 << 20, batch_size=2, seq_len=32)
    model_dir = build_tiny_teacher(root / "model", seed=1, train_steps=2, spec=spec)
    with VllmServer(
        model_dir, log_path=root / "vllm.log", served_model_name="tiny", extra_args=("--api-key", API_KEY)
    ) as server:
        server.wait_ready(timeout=300)
        yield server.base_url


@contextmanager
def started(
    tmp_path: Path, teachers: list[dict[str, Any]], **env: str
) -> Iterator[tuple[ServiceProcess, httpx.Client]]:
    """The service on SQLite with these teachers, and a client of it, once its API answers."""
    service = ServiceProcess(data_dir=tmp_path, teachers=teachers, extra_env=env)
    key = service.create_key("fleet")
    with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
        service.wait_ready(key, teachers_healthy=False)
        yield service, api


def wait_for(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def teacher_state(api: httpx.Client, name: str) -> dict[str, Any]:
    return next(t for t in api.get("/v1/teachers").json()["teachers"] if t["name"] == name)  # type: ignore[no-any-return]


def submit(api: httpx.Client, teacher: str, prompts: list[str], **params: Any) -> dict[str, Any]:
    body = {"teacher": teacher, "params": {"max_tokens": 8, "top_logprobs": 5, **params}}
    response = api.post("/v1/jobs", json={**body, "prompts": [{"prompt": p} for p in prompts]})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_replica_with_another_tokenizer_is_kept_out_of_every_job(
    teacher: Teacher, keyed_other: str, tmp_path: Path
) -> None:
    with FaultProxy(teacher.base_url) as same, FaultProxy(keyed_other) as odd:
        config = {"name": "tiny", "replicas": [same.url, odd.url], "model": "tiny", "api_key": API_KEY}
        with started(tmp_path, [config]) as (service, api):
            state = wait_for(
                lambda: (s := teacher_state(api, "tiny"))["healthy"] and all(r["healthy"] for r in s["replicas"]) and s,
                what="both replicas probed",
            )
            first, second = state["replicas"]
            assert first["in_rotation"] and not second["in_rotation"]
            assert "out of rotation" in second["error"] and "tokenizer_fingerprint" in second["error"]
            assert second["tokenizer_fingerprint"] != first["tokenizer_fingerprint"] == state["tokenizer_fingerprint"]
            prompts = [f"def replica_{i}():" for i in range(40)]
            job = wait_done(api, submit(api, "tiny", prompts)["id"])
            assert job["status"] == "completed" and job["counts"]["done"] == 40
            assert job["teacher_info"]["tokenizer_fingerprint"] == first["tokenizer_fingerprint"]
            assert all(same.sent[p] == 1 for p in prompts)
            assert not any(odd.sent[p] for p in prompts), "a prompt went to the replica with the other tokenizer"
            shown = json.dumps(api.get("/v1/teachers").json())
        assert API_KEY not in shown and API_KEY not in service.log_path.read_text()


def test_a_refused_key_pauses_the_teacher_and_fails_nothing(keyed_other: str, tmp_path: Path) -> None:
    with FaultProxy(keyed_other) as gateway:
        config = {"name": "keyed", "base_url": gateway.url, "model": "tiny", "api_key": API_KEY}
        config["headers"] = {"X-Team": "distillers"}
        with started(tmp_path, [config]) as (service, api):
            service.wait_ready(api.headers["authorization"].removeprefix("Bearer "))
            # The key stops working after the probe (rotated at the gateway): the next generation request gets
            # vLLM's own 401; the dispatcher must pause the replica, not fail the prompts.
            gateway.authorization = "Bearer not-the-key"
            prompts = [f"def keyed_{i}():" for i in range(24)]
            job = submit(api, "keyed", prompts)
            wait_for(lambda: gateway.statuses[401] > 0, what="a refused generation request")
            state = wait_for(lambda: (s := teacher_state(api, "keyed"))["replicas"][0]["status"] == 401 and s)
            assert not state["healthy"] and "401" in state["replicas"][0]["error"]
            time.sleep(2.0)
            paused = api.get(f"/v1/jobs/{job['id']}").json()
            assert paused["counts"]["failed"] == 0 and paused["status"] in ("queued", "running"), paused
            refused = gateway.statuses[401]
            gateway.authorization = None  # the key is accepted again
            done = wait_done(api, job["id"], timeout=120)
            assert done["status"] == "completed" and done["counts"]["done"] == 24 and done["counts"]["failed"] == 0
            assert teacher_state(api, "keyed")["healthy"]
            assert refused <= 4, f"{refused} refused requests: dispatch kept sending to a refusing replica"
            shown = json.dumps(api.get("/v1/teachers").json())
        log = service.log_path.read_text()
        assert API_KEY not in shown and API_KEY not in log and "distillers" not in shown


def test_a_replica_that_goes_away_mid_job_leaves_the_job_to_the_other(
    teacher: Teacher, postgres_url: str, tmp_path: Path
) -> None:
    with FaultProxy(teacher.base_url) as steady, FaultProxy(teacher.base_url) as doomed:
        doomed.delay_s = 0.5
        config = {"name": "pair", "replicas": [steady.url, doomed.url], "model": "tiny", "batch_size": 8}
        service = ServiceProcess(
            data_dir=tmp_path,
            teachers=[config],
            database_url=postgres_url,
            extra_env={"DISTILLERY_TEACHER_PROBE_INTERVAL_S": "1"},
        )
        key = service.create_key("pair")
        with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
            service.wait_ready(key)
            wait_for(lambda: all(r["in_rotation"] for r in teacher_state(api, "pair")["replicas"]), what="two replicas")
            prompts = [f"def pair_{i}():" for i in range(160)]
            job = submit(api, "pair", prompts, max_tokens=16)
            wait_for(lambda: doomed.in_flight > 0, what="requests in flight on the second replica")
            doomed.__exit__(None, None, None)  # the replica goes away with requests in flight
            done = wait_done(api, job["id"], timeout=180)
            state = wait_for(lambda: (s := teacher_state(api, "pair"))["replicas"][1]["healthy"] is False and s)
        assert done["status"] == "completed" and done["counts"]["done"] == 160 and done["counts"]["failed"] == 0
        stats = result_stats(postgres_url, job["id"])
        assert stats["results"] == 160 and stats.get("items_done") == 160
        assert not state["replicas"][1]["healthy"] and state["replicas"][0]["in_rotation"]
        assert sum(steady.sent[p] for p in prompts) >= 160 - sum(doomed.sent[p] for p in prompts)
