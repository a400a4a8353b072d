"""Bad input: a clear 4xx naming the field or line, and nothing stored. Idempotent creation."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlparse

import httpx
import orjson
import pytest

from app.auth import repository as auth_repository
from app.database import Database
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs_service
from app.jobs.schemas import JobCreate
from app.models import utcnow
from tests.conftest import Service
from tests.helpers import job_count

PROMPT = {"prompt": "def f():"}


def post_chunked(service: Service, path: str, chunks: Iterator[bytes], content_type: str) -> httpx.Response:
    """A body with no Content-Length (chunked transfer encoding)."""
    with service.client() as client:
        return client.post(path, content=chunks, headers={"content-type": content_type})


def test_oversized_bodies_get_413_with_and_without_content_length(service: Service, api: httpx.Client) -> None:
    before = job_count(api)
    huge = {"teacher": "tiny", "prompts": [{"prompt": "x" * 1000}] * 40_000}  # ~40 MB > 32 MiB
    body = orjson.dumps(huge)
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"][0]["loc"] == ["body"]

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    chunked = post_chunked(service, "/v1/jobs", chunks(), "application/json")
    assert chunked.status_code == 413, chunked.text
    assert "exceeds" in chunked.json()["detail"][0]["msg"]
    assert job_count(api) == before


def test_declared_length_over_the_limit_is_refused_before_reading(service: Service) -> None:
    """Only headers are sent; the 413 must come without the body ever arriving."""
    url = urlparse(service.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {service.api_key}\r\nContent-Length: {1 << 40}\r\n\r\n".encode()
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


@pytest.mark.parametrize(
    ("content", "status", "loc_prefix"),
    [
        (b"{not json", 422, ["body"]),
        (b"[]", 422, ["body"]),
        (orjson.dumps({"teacher": "tiny", "prompts": [PROMPT], "extra": 1}), 422, ["body", "extra"]),
        (
            orjson.dumps({"teacher": "tiny", "params": {"top_logprobs": -1}, "prompts": [PROMPT]}),
            422,
            ["body", "params", "top_logprobs"],
        ),
        (
            orjson.dumps({"teacher": "tiny", "prompts": [{"prompt": "a", "metadata": {"x": "y" * 20_000}}]}),
            422,
            ["body", "prompts", 0, "metadata"],
        ),
        (  # found by the fuzzer: orjson (and so the export) cannot write an integer past 64 bits
            b'{"teacher": "tiny", "prompts": [{"prompt": "a", "metadata": {"n": 18446744073709551616}}]}',
            422,
            ["body", "prompts", 0, "metadata"],
        ),
        (
            orjson.dumps({"teacher": "tiny", "params": {"top_logprobs": 2}, "priority": 11, "prompts": [PROMPT]}),
            422,
            ["body", "priority"],
        ),
        (
            orjson.dumps({"teacher": "tiny", "prompts": [{"messages": [{"role": "robot", "content": "a"}]}]}),
            422,
            ["body", "prompts", 0, "messages", 0, "role"],
        ),
        (
            orjson.dumps({"teacher": "tiny", "prompts": [{"prompt": "x" * 200_001}]}),
            422,
            ["body", "prompts", 0, "prompt"],
        ),
    ],
)
def test_malformed_requests(api: httpx.Client, content: bytes, status: int, loc_prefix: list) -> None:
    before = job_count(api)
    response = api.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    loc = response.json()["detail"][0]["loc"]
    assert loc[: len(loc_prefix)] == loc_prefix, loc
    assert job_count(api) == before


def test_upload_limits_and_empty_file(api: httpx.Client) -> None:
    before = job_count(api)
    lines = b"\n".join([orjson.dumps(PROMPT), orjson.dumps({"prompt": "x", "metadata": {"a": "b" * 20_000}})])
    response = api.post("/v1/jobs/upload", data={"teacher": "tiny"}, files={"file": ("p.jsonl", lines)})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file", "line", 2, "metadata"]
    empty = api.post("/v1/jobs/upload", data={"teacher": "tiny"}, files={"file": ("p.jsonl", b"\n\n")})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "file"]
    no_k = api.post(
        "/v1/jobs/upload",
        data={"teacher": "tiny", "top_logprobs": "99"},
        files={"file": ("p.jsonl", orjson.dumps(PROMPT))},
    )
    assert no_k.status_code == 422 and no_k.json()["detail"][0]["loc"][-1] == "top_logprobs"
    assert job_count(api) == before


@pytest.mark.parametrize("ending", [b"", b'"}\n' + orjson.dumps(PROMPT)])
def test_upload_line_longer_than_any_record_is_refused_by_line(api: httpx.Client, ending: bytes) -> None:
    """A line past Settings.max_upload_line_bytes (about 5 MB by default) is refused as such, whether or
    not it ends; nothing is stored."""
    before = job_count(api)
    long_line = b'{"prompt": "' + b"z" * (6 << 20) + ending
    lines = orjson.dumps(PROMPT) + b"\n" + orjson.dumps(PROMPT) + b"\n" + long_line
    started = time.monotonic()
    response = api.post("/v1/jobs/upload", data={"teacher": "tiny"}, files={"file": ("p.jsonl", lines)})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "file", "line", 3] and error["msg"].startswith("line 3: longer than")
    assert time.monotonic() - started < 30
    assert job_count(api) == before


def test_idempotency_key_replays_and_refuses_a_different_body(api: httpx.Client) -> None:
    body = {"teacher": "tiny", "params": {"max_tokens": 2, "top_logprobs": 1}, "prompts": [PROMPT]}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = api.post("/v1/jobs", json={**body, "prompts": [{"prompt": "other"}]}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    # A refused request frees its key: the same key then works once the body is fixed.
    bad = api.post("/v1/jobs", json={**body, "teacher": "nope"}, headers={"Idempotency-Key": "k-2"})
    assert bad.status_code == 422
    fixed = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert fixed.status_code == 201


def test_a_key_held_by_a_running_request_gets_409(service: Service, api: httpx.Client) -> None:
    """A request still running holds its key as pending: a second request with it gets 409, and a pending
    key older than the TTL (its request died) is taken over."""
    body = {"teacher": "tiny", "params": {"max_tokens": 1, "top_logprobs": 0}, "prompts": [PROMPT]}
    digest = jobs_service.request_digest(JobCreate.model_validate(body).model_dump_json().encode())
    key_id = service.api_key.split("_")[1]

    async def hold(key: str, age_s: float) -> None:
        db = Database(service.database_url)
        try:
            async with db.transaction() as session:
                found = await auth_repository.key_with_project(session, key_id)
                assert found is not None
                created = utcnow() - timedelta(seconds=age_s)
                await jobs_repository.insert_idempotency_key(session, found[1].id, key, digest, created)
        finally:
            await db.dispose()

    asyncio.run(hold("held", 0))
    before = job_count(api)
    response = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "held"})
    assert response.status_code == 409 and response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert job_count(api) == before
    asyncio.run(hold("stale", 3600))
    assert api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "stale"}).status_code == 201


def test_idempotent_upload_replays(api: httpx.Client) -> None:
    lines = b"\n".join(orjson.dumps({"prompt": f"def f{i}():"}) for i in range(2000))
    form = {"teacher": "tiny", "max_tokens": "1", "top_logprobs": "0"}
    first = api.post(
        "/v1/jobs/upload", data=form, files={"file": ("p.jsonl", lines)}, headers={"Idempotency-Key": "up"}
    )
    again = api.post(
        "/v1/jobs/upload", data=form, files={"file": ("p.jsonl", lines)}, headers={"Idempotency-Key": "up"}
    )
    changed = api.post(
        "/v1/jobs/upload", data=form, files={"file": ("p.jsonl", lines + b"\n{}")}, headers={"Idempotency-Key": "up"}
    )
    assert (first.status_code, again.status_code, changed.status_code) == (201, 200, 422)
    assert again.json()["id"] == first.json()["id"]
