"""Smoke run of the fleet simulator (bench.fleet_sim) on its own, no service involved: two replicas answer a
4-prompt completions request vLLM-shaped, account its tokens, show the queue on /metrics, guard /v1/* with
the API key, abort the work of a client that hangs up, and come back on the same port after a SIGKILL.
Then the fleet and fairness benches at tiny sizes, through the service on Postgres.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fleet_sim import FleetSimulator, read_metrics
from bench.sim_replica import ReplicaOptions
from tests.bench.test_smoke import positive_summary, run_bench

KEY = "sim-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_TOKENS = 300  # over the recorded 128: choices are built from several recorded completions


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetSimulator]:
    """Two slow, small replicas: 2 sequences at once, 100 tok/s each, so a 4-prompt request queues."""
    # seed 2 draws 300, 92, 96, 72 for replica 0's first request: one capped at max_tokens, none under 0.7 s
    options = ReplicaOptions(capacity=200, seq_rate=100, max_num_seqs=2, mean_tokens=100, seed=2, api_key=KEY)
    with FleetSimulator(2, options) as sim:
        yield sim


def test_completions_body_usage_and_queue(fleet: FleetSimulator) -> None:
    url = fleet.urls[0]
    body = {"model": "tiny", "prompt": ["a", "b", "c", "d"], "max_tokens": MAX_TOKENS, "logprobs": 5}
    answer: dict[str, Any] = {}

    def post() -> None:
        answer["response"] = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=60)

    sender = threading.Thread(target=post)
    sender.start()
    readings = []
    while sender.is_alive():
        readings.append(read_metrics(url))
        time.sleep(0.02)
    sender.join()
    response = answer["response"]
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion" and data["model"] == "tiny"
    choices = data["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    lengths = []
    for c in choices:
        ids, lp = c["token_ids"], c["logprobs"]
        assert 1 <= len(ids) <= MAX_TOKENS
        assert c["finish_reason"] == ("length" if len(ids) == MAX_TOKENS else "stop")
        assert lp["tokens"] == [f"token_id:{t}" for t in ids]
        assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == len(ids)
        for sampled, top in zip(lp["tokens"], lp["top_logprobs"], strict=True):
            assert sampled in top and 5 <= len(top) <= 6 and all(key.startswith("token_id:") for key in top)
        lengths.append(len(ids))
    assert max(lengths) > 128 and len(set(lengths)) > 1, lengths
    assert data["usage"]["completion_tokens"] == sum(lengths)
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + sum(lengths)
    # while it ran: never more than max_num_seqs running, the rest waiting
    assert any(r["vllm:num_requests_running"] == 2 and r["vllm:num_requests_waiting"] == 2 for r in readings)
    assert all(r["vllm:num_requests_running"] <= 2 for r in readings)
    after = read_metrics(url)
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
    assert after["vllm:generation_tokens_total"] == sum(lengths)


def test_metrics_text(fleet: FleetSimulator) -> None:
    text = httpx.get(f"{fleet.urls[1]}/metrics").text  # open without the key
    for name in ("num_requests_running", "num_requests_waiting", "generation_tokens_total"):
        assert re.search(rf'^vllm:{name}\{{engine="0",model_name="tiny"\}} [0-9.]+$', text, re.MULTILINE), text


def test_api_key(fleet: FleetSimulator) -> None:
    url = fleet.urls[1]
    body = {"model": "tiny", "prompt": "a", "max_tokens": 1}
    for request in (
        httpx.post(f"{url}/v1/completions", json=body),
        httpx.post(f"{url}/v1/completions", json=body, headers={"authorization": "Bearer nope"}),
        httpx.get(f"{url}/v1/models"),
        httpx.post(f"{url}/tokenize", json={"model": "tiny", "prompt": "a"}),
    ):
        assert request.status_code == 401
        error = request.json()["error"]
        assert error["code"] == 401 and error["message"] and error["type"]
    assert httpx.get(f"{url}/health").status_code == 200
    models = httpx.get(f"{url}/v1/models", headers=AUTH).json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 2048
    too_many = httpx.post(f"{url}/v1/completions", json={**body, "logprobs": 1_000_000}, headers=AUTH)
    assert too_many.status_code == 400 and "max allowed: 20" in too_many.json()["error"]["message"]


def test_hang_up_aborts_and_replica_restarts(fleet: FleetSimulator) -> None:
    url = fleet.urls[1]
    body = {"model": "tiny", "prompt": ["a", "b", "c", "d"], "n": 20, "max_tokens": MAX_TOKENS}
    with pytest.raises(httpx.ReadTimeout):  # 80 sequences at 200 tok/s: tens of seconds of work
        httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=0.5)
    deadline = time.monotonic() + 5
    while (m := read_metrics(url))["vllm:num_requests_running"] + m["vllm:num_requests_waiting"] > 0:
        assert time.monotonic() < deadline, m
        time.sleep(0.05)
    old = fleet.pids[1]
    fleet.stop_replica(1)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)
    fleet.start_replica(1)
    assert fleet.pids[1] != old and fleet.urls[1] == url
    assert httpx.get(f"{url}/health").status_code == 200


# The benches on the simulator, through the service on Postgres, at tiny sizes.


@pytest.mark.usefixtures("postgres")
def test_fleet_bench(tmp_path: Path) -> None:
    data = run_bench(
        "fleet", tmp_path / "f.json", *("--rounds", "1", "--sizes", "1,2", "--prompts", "10", "--ceiling-replicas", "1")
    )
    assert set(data["configs"]) == {"1x", "2x", "service-bound 1x20,000"}
    for label, runs in data["runs"].items():
        (run,) = runs
        assert run["tokens"] == run["prompts"] * 128, (label, run)
        assert 0 < run["of_capacity"] <= 1.05 and run["service_cores"] > 0
        positive_summary(data["configs"][label]["tokens_per_service_core"])


@pytest.mark.usefixtures("postgres")
def test_fairness_bench(tmp_path: Path) -> None:
    data = run_bench(
        "fairness", tmp_path / "fair.json", *("--rounds", "1", "--big", "200", "--small", "5", "--delay", "0.5")
    )
    for phase in ("alone", "contended", "priority"):
        (run,) = data["runs"][phase]
        assert run["tokens"] == 5 * 128 and run["seconds"] > 0
    positive_summary(data["ratio"])
    assert data["runs"]["priority"][0]["older_status"] in ("running", "completed")
