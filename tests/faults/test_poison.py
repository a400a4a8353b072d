"""Poison answers on the real path, both databases: the fault proxy in chaos mode spoils the real teacher's
answer to every request carrying a marked prompt (wrong shape, duplicate or out-of-range choice index, no
logprobs, NUL in the text, a 50 MB body, a body cut mid-string). The job completes; each spoiled prompt
fails alone with a readable error after at most max_attempts sends; every other prompt of its batches is
done; the NUL answer is a valid one and is stored exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Teacher
from tests.fault_proxy import CHAOS, FaultProxy
from tests.faults.test_teacher_and_database_faults import start_service
from tests.helpers import all_records, wait_done

MAX_ATTEMPTS = 3
EXPECTED_ERROR = {
    "shape": "choices",
    "dup": "choices",
    "range": "index",
    "nologprobs": "logprobs",
    "big": "bytes",
    "cut": "JSON",
}


@pytest.fixture(params=["sqlite", "postgres"])
def chaotic(
    request: pytest.FixtureRequest, teacher: Teacher, tmp_path: Path
) -> Iterator[tuple[httpx.Client, FaultProxy]]:
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    with FaultProxy(teacher.base_url) as proxy:
        proxy.chaos = True
        # A generous timeout: here only the spoiled answers may cost attempts. With 3 s, a slow moment of the
        # shared teacher timed whole batches out and good prompts ran out of their 3 attempts (seen in CI).
        service, key = start_service(
            tmp_path,
            database_url,
            proxy.url,
            "chaos",
            request_timeout_s=60,
            DISTILLERY_WORKER_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        )
        try:
            with httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
                yield api, proxy
        finally:
            service.stop()


def test_poison_answers_fail_alone_and_the_job_completes(chaotic: tuple[httpx.Client, FaultProxy]) -> None:
    api, proxy = chaotic
    prompts = [{"custom_id": f"ok{i}", "prompt": f"def ok_{i}():\n"} for i in range(24)]
    for at, kind in enumerate(CHAOS):  # one marked prompt in each of several batches of 16
        prompts.insert(3 * at + 1, {"custom_id": kind, "prompt": f"# POISON:{kind} \ndef f():"})
    body = {"teacher": "chaos", "params": {"max_tokens": 6, "top_logprobs": 3}, "prompts": prompts}
    created = api.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job = wait_done(api, created.json()["id"], timeout=240)

    assert job["status"] == "completed", job
    spoiled = set(EXPECTED_ERROR)
    listed = api.get(f"/v1/jobs/{job['id']}/failures").json()["failures"]
    assert (job["counts"]["done"], job["counts"]["failed"]) == (len(prompts) - len(spoiled), len(spoiled)), listed
    assert (job["counts"]["done"], job["counts"]["failed"]) == (len(prompts) - len(spoiled), len(spoiled))
    failures = {f["custom_id"]: f for f in api.get(f"/v1/jobs/{job['id']}/failures").json()["failures"]}
    assert set(failures) == spoiled
    for kind in EXPECTED_ERROR:
        # its own spoiling, or (when its last attempt shared a batch with another spoiled prompt whose
        # answer spoiled the whole body) that batch's: readable either way
        error = failures[kind]["error"]
        assert error.startswith("gave up after ") and any(w in error for w in EXPECTED_ERROR.values()), error
        assert failures[kind]["attempts"] <= MAX_ATTEMPTS
    own = sum(EXPECTED_ERROR[kind] in failures[kind]["error"] for kind in EXPECTED_ERROR)
    assert own >= len(EXPECTED_ERROR) // 2, failures
    for prompt in prompts:  # no prompt, spoiled or not, was sent more than max_attempts times
        assert proxy.sent[prompt["prompt"]] <= MAX_ATTEMPTS, (prompt["custom_id"], proxy.sent[prompt["prompt"]])

    records = {r["custom_id"]: r for r in all_records(api, job["id"], limit=100)}
    assert set(records) == {p["custom_id"] for p in prompts} - spoiled
    assert records["nul"]["text"].startswith("a\x00b")
