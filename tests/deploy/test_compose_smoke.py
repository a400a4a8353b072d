"""The compose deployment run as local processes (no Docker engine here): the compose services' own commands
and environment, hosts pointed at 127.0.0.1: migrate, the API with --no-worker, two workers with their
metrics ports, the tiny vLLM teacher as two replicas (two servers), and the real Prometheus (Debian's
package) with the compose scrape config rewritten to those ports and the alert rules loaded. A job runs;
Prometheus must then report the job's tokens and an empty queue."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from distillery_tools.service_process import ServiceProcess, stop_process
from distillery_tools.tiny_teacher.serve import VllmServer, free_port
from tests.conftest import Teacher
from tests.helpers import wait_done

ROOT = Path(__file__).resolve().parents[2]


def compose_env(service: str) -> dict[str, str]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {k: str(v) for k, v in services[service]["environment"].items()}


def compose_command(service: str) -> list[str]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return list(services[service]["command"])


def local(command: list[str], **options: str) -> list[str]:
    """A compose command for this machine: `distillery` from this venv, options given new values."""
    out = [str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "distillery"), *command[1:]]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def prometheus_config(tmp: Path, *, api: int, workers: list[int], teachers: list[str]) -> Path:
    """deploy/prometheus.yml with each job's targets moved to the local processes, scraping every second."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    local_targets = {
        "distillery-api": [f"127.0.0.1:{api}"],
        "distillery-worker": [f"127.0.0.1:{p}" for p in workers],
        "vllm": [url.split("//")[1].rstrip("/") for url in teachers],
    }
    assert {job["job_name"] for job in config["scrape_configs"]} == set(local_targets)
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": local_targets[job["job_name"]]}]
    shutil.copy(ROOT / "deploy" / "alerts.yml", tmp / "alerts.yml")
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def scalar(url: str, promql: str) -> float | None:
    result = query(url, promql)
    return float(result[0]["value"][1]) if result else None


def test_compose_services_as_processes_with_a_real_prometheus(
    teacher: Teacher, tiny_teacher_dir: Path, empty_postgres: str, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: `make test` installs Debian's prometheus package"
    second = VllmServer(tiny_teacher_dir, log_path=tmp_path / "vllm-2.log", served_model_name="tiny", dtype="float32")
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    with second:
        second.wait_ready(timeout=300)
        replicas = [teacher.base_url, second.base_url]
        env = {**os.environ, **compose_env("api")}
        [teacher_entry] = json.loads(env["DISTILLERY_TEACHERS"])
        env.update(
            DISTILLERY_DATABASE_URL=empty_postgres,
            DISTILLERY_DATA_DIR=str(tmp_path / "data"),
            DISTILLERY_TEACHERS=json.dumps([{**teacher_entry, "model": "tiny", "replicas": replicas}]),
            DISTILLERY_METRICS_REFRESH_S="0.5",
        )
        migrated = subprocess.run(local(compose_command("migrate")), env=env, capture_output=True, text=True)
        assert migrated.returncode == 0, migrated.stderr
        api_port, worker_ports, prom_port = free_port(), [free_port(), free_port()], free_port()
        config = prometheus_config(tmp_path, api=api_port, workers=worker_ports, teachers=replicas)
        api = ServiceProcess(data_dir=tmp_path / "data", teachers=[], log_path=tmp_path / "api.log")
        api.env = env
        api.port, api.url = api_port, f"http://127.0.0.1:{api_port}"
        api.command = local(compose_command("api"), port=str(api_port))
        key = api.create_key("compose")
        try:
            api.start()
            for i, port in enumerate(worker_ports):
                log = (tmp_path / f"worker-{i}.log").open("wb")
                logs.append(log)
                command = local(compose_command("worker"), metrics_port=str(port))
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            prom_log = (tmp_path / "prometheus.log").open("wb")
            logs.append(prom_log)
            processes.append(
                subprocess.Popen(
                    [
                        prometheus,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    stdout=prom_log,
                    stderr=subprocess.STDOUT,
                )
            )
            api.wait_ready(key)
            prom = f"http://127.0.0.1:{prom_port}"
            deadline = time.monotonic() + 60
            while scalar(prom, "count(up == 1)") != 5:  # the API, two workers, two vLLM replicas
                assert time.monotonic() < deadline, query(prom, "up")
                time.sleep(0.5)
            headers = {"authorization": f"Bearer {key}"}
            with httpx.Client(base_url=api.url, headers=headers, timeout=60) as client:
                prompts = [{"prompt": f"def compose_{i}("} for i in range(48)]
                created = client.post(
                    "/v1/jobs",
                    json={"teacher": "teacher", "params": {"max_tokens": 12, "top_logprobs": 5}, "prompts": prompts},
                )
                assert created.status_code == 201, created.text
                job = wait_done(client, created.json()["id"])
            assert job["status"] == "completed" and job["counts"]["done"] == 48
            tokens_query = 'sum(distillery_generated_tokens_total{job="distillery-worker"})'
            queued_query = 'sum(distillery_queue_items{job="distillery-api",state="queued"})'
            deadline = time.monotonic() + 30
            while (scalar(prom, tokens_query), scalar(prom, queued_query)) != (job["tokens_generated"], 0):
                assert time.monotonic() < deadline, (query(prom, tokens_query), query(prom, queued_query), job)
                time.sleep(0.5)
            per_worker = query(prom, 'distillery_generated_tokens_total{job="distillery-worker"}')
            by_replica = query(prom, 'sum by (replica) (distillery_teacher_requests_total{outcome="2xx"})')
            print(f"\nPrometheus {tokens_query} = {scalar(prom, tokens_query):.0f} (job: {job['tokens_generated']})")
            print(f"Prometheus {queued_query} = {scalar(prom, queued_query):.0f}")
            print(f"per worker: {[(r['metric']['instance'], r['value'][1]) for r in per_worker]}")
            print(f"requests by replica: {[(r['metric']['replica'], r['value'][1]) for r in by_replica]}")
            assert len(by_replica) == 2, "one replica got no request"
            rules = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
            assert sum(len(g["rules"]) for g in rules) == 7
            alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            assert not [a for a in alerts if a["state"] == "firing"], alerts
        finally:
            for process in processes:
                stop_process(process, 20)
            api.stop()
            for log in logs:
                log.close()


pytestmark = pytest.mark.vllm
