"""TeacherClient against a local HTTP/1.1 server that records what it gets: connections are spread over small
httpx pools (one connection each by default) made as concurrency needs them and reused afterwards; the cap
on connections queues what is past it; every request carries the teacher's headers (and Basic auth from
credentials in the URL); timeouts, error answers and oversized answers end as before; proxies come from
the environment."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from app.settings import TeacherConfig
from app.teachers.client import TeacherClient, TeacherError, environment_proxy
from app.teachers.parsing import TeacherResponseError


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]


@dataclass
class RecordingServer:
    """Keep-alive HTTP/1.1 (Content-Length bodies) on 127.0.0.1; answers `status` with `answer` after `delay`."""

    delay: float = 0.0
    status: int = 200
    answer: bytes = b'{"ok": true}'
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    inflight: int = 0
    most_inflight: int = 0
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(Seen(method, path, headers, body, peer))
                self.inflight += 1
                self.most_inflight = max(self.most_inflight, self.inflight)
                try:
                    await asyncio.sleep(self.delay)
                finally:
                    self.inflight -= 1
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(self.answer)}\r\n\r\n".encode()
                    + self.answer
                )
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    recording = RecordingServer()
    listening = await asyncio.start_server(recording.serve, "127.0.0.1", 0)
    recording.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield recording
        listening.close()


def teacher(url: str, **fields: object) -> TeacherConfig:
    return TeacherConfig.model_validate({"name": "t", "base_url": url, "model": "m", **fields})


async def test_concurrent_requests_get_a_pool_each_and_reuse_them(server: RecordingServer) -> None:
    server.delay = 0.5  # long enough that every request of a gather is in flight at once, even on a busy machine
    client = TeacherClient(teacher(f"http://127.0.0.1:{server.port}"))
    try:
        answers = await asyncio.gather(*(client.chat_completions({"i": i}) for i in range(16)))
        assert answers == [b'{"ok": true}'] * 16
        assert server.most_inflight == 16  # none waited for another's connection
        assert client.shards == 16 and server.connections == 16  # one pool per connection
        await asyncio.gather(*(client.completions({"i": i}) for i in range(16)))
        for _ in range(5):
            await client.completions({})
        assert client.shards == 16 and server.connections == 16  # kept alive and reused, none made anew
        assert len({s.peer for s in server.seen[-5:]}) == 1  # one at a time: the warm connection each time
    finally:
        await client.aclose()
    with pytest.raises(RuntimeError):
        await client.completions({})


async def test_pools_of_several_connections(server: RecordingServer) -> None:
    server.delay = 0.5  # long enough that every request of a gather is in flight at once, even on a busy machine
    client = TeacherClient(teacher(f"http://127.0.0.1:{server.port}"), shard_connections=4)
    try:
        await asyncio.gather(*(client.completions({}) for _ in range(10)))
        assert client.shards == 3  # 4 + 4 + 2
        assert server.connections == 10 and server.most_inflight == 10
    finally:
        await client.aclose()


async def test_the_connection_cap_queues_what_is_past_it(server: RecordingServer) -> None:
    server.delay = 0.5  # long enough that every request of a gather is in flight at once, even on a busy machine
    client = TeacherClient(teacher(f"http://127.0.0.1:{server.port}"), max_connections=2)
    try:
        answers = await asyncio.gather(*(client.completions({}) for _ in range(6)))
        assert len(answers) == 6
        assert client.shards == 2 and server.connections == 2 and server.most_inflight == 2
    finally:
        await client.aclose()


async def test_every_request_carries_the_teachers_headers(server: RecordingServer) -> None:
    config = teacher(f"http://127.0.0.1:{server.port}/", api_key="sk-1", headers={"X-Team": "kd"})
    client = TeacherClient(config)
    try:
        await client.chat_completions({"model": "m"})
        assert await client.health()
        await client.get_json("/v1/models")
    finally:
        await client.aclose()
    post, health, models = server.seen
    assert (post.method, post.path, post.body) == ("POST", "/v1/chat/completions", b'{"model":"m"}')
    assert (health.method, health.path, models.path) == ("GET", "/health", "/v1/models")
    for seen in server.seen:
        assert seen.headers["authorization"] == "Bearer sk-1"
        assert seen.headers["x-team"] == "kd"
        assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert post.headers["content-type"] == "application/json"
    assert "content-type" not in health.headers


async def test_credentials_in_the_url_are_sent_as_basic_auth(server: RecordingServer) -> None:
    client = TeacherClient(teacher(f"http://user:p%40ss@127.0.0.1:{server.port}/base"))
    try:
        await client.completions({})
    finally:
        await client.aclose()
    (seen,) = server.seen
    assert seen.path == "/base/v1/completions"
    assert seen.headers["authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert "user" not in client.label


async def test_errors_timeouts_and_oversized_answers(server: RecordingServer) -> None:
    client = TeacherClient(teacher(f"http://127.0.0.1:{server.port}"))
    try:
        server.answer = b'{"error": {"message": "too long", "code": 400}}'
        server.status = 400
        with pytest.raises(TeacherError) as refused:
            await client.completions({})
        assert (refused.value.status, refused.value.message, refused.value.transient) == (
            400,
            "teacher answered 400: too long",
            False,
        )
        server.status, server.answer = 200, b'{"big": "' + b"x" * 1000 + b'"}'
        with pytest.raises(TeacherResponseError):
            await client.completions({}, max_bytes=100)
        server.delay = 1.0
        with pytest.raises(TeacherError) as slow:
            await client.post_json("/tokenize", {}, timeout=0.1)
        assert slow.value.transient and "timed out" in slow.value.message
        server.delay = 0.0
        assert await client.completions({}) == server.answer  # the pools still serve after all that
    finally:
        await client.aclose()


async def test_an_unreachable_teacher_is_a_transient_error() -> None:
    with pytest.raises(OSError):  # find a port nobody listens on
        await asyncio.open_connection("127.0.0.1", 9)
    client = TeacherClient(teacher("http://127.0.0.1:9"))
    try:
        assert not await client.health()
        with pytest.raises(TeacherError) as unreachable:
            await client.completions({})
        assert unreachable.value.transient and "unreachable" in unreachable.value.message
    finally:
        await client.aclose()


def test_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert environment_proxy("http://gpu0:8000") is None
    monkeypatch.setenv("HTTP_PROXY", "proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.cluster")
    assert environment_proxy("http://gpu0:8000") == "http://proxy.internal:3128"
    assert environment_proxy("http://127.0.0.1:8000") is None
    assert environment_proxy("http://vllm.cluster:8000") is None
    assert environment_proxy("https://gpu0") is None
    monkeypatch.setenv("ALL_PROXY", "http://all:1")
    assert environment_proxy("https://gpu0") == "http://all:1"
