"""FaultProxy: a tiny HTTP proxy in front of the real vLLM server that counts what is sent and injects faults.

The real teacher still answers every request that is let through; the proxy only adds what a test asks
for: a delay, a 500, a 429, a timeout, a truncated (broken) JSON body, or a dropped connection. In chaos
mode it spoils the real answer whenever a request carries a prompt marked `POISON:<kind>` (see CHAOS).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from distillery_tools.tiny_teacher.serve import free_port

FAULTS = ("500", "429", "timeout", "broken_json", "drop")
# What chaos mode does to a real /v1/completions answer that includes a prompt marked POISON:<kind>.
CHAOS = {
    "shape": "the whole answer is JSON of the wrong shape",
    "dup": "the marked prompt's choice appears twice",
    "range": "the marked prompt's choice has an index past the last prompt",
    "nologprobs": "the marked prompt's choice has no logprobs",
    "nul": "the marked prompt's generated text holds NUL (a valid answer: it must be stored)",
    "big": "a 50 MB answer",
    "cut": "the answer is cut in the middle of a string",
}
BIG_BYTES = 50 * 1024 * 1024


def spoil(content: bytes, prompts: list[str], n: int) -> bytes:
    """The chaos mutation for the first marked prompt of a completions request (unchanged if none)."""
    marked = [(i, p.split("POISON:", 1)[1].split()[0]) for i, p in enumerate(prompts) if "POISON:" in p]
    if not marked:
        return content
    index, kind = marked[0]
    if kind == "shape":
        return b'{"id": "x", "choices": {"text": "not a list"}}'
    if kind == "big":
        return b'{"choices": [], "padding": "' + b"x" * BIG_BYTES + b'"}'
    if kind == "cut":
        cut = content.index(b'"text"') + 12
        return content[:cut]
    answer = orjson.loads(content)
    choices = [c for c in answer["choices"] if c["index"] // n == index]
    if kind == "dup":
        answer["choices"].append(dict(choices[0]))
    elif kind == "range":
        choices[0]["index"] = 10_000
    elif kind == "nologprobs":
        choices[0]["logprobs"] = None
    elif kind == "nul":
        choices[0]["text"] = "a\x00b" + choices[0]["text"]
    return orjson.dumps(answer)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sent: Counter[str] = Counter()  # prompt (or chat messages as JSON) -> times forwarded
        self.requests = 0
        self.faults: list[str] = []  # consumed one per generation request, in order
        self.fault_every: str | None = None  # applied to every generation request while set
        self.delay_s = 0.0
        self.authorization: str | None = None  # when set, replaces the client's Authorization header
        self.statuses: Counter[int] = Counter()  # upstream status codes of generation requests
        self.timeout_s = 30.0
        self.chaos = False  # spoil answers to prompts marked POISON:<kind>
        self.in_flight = 0
        self.response_sent = threading.Event()
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _next_fault(self) -> str | None:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
            return self.fault_every

    def _forwarded_headers(self, request: Request) -> dict[str, str]:
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        authorization = self.authorization or request.headers.get("authorization")
        if authorization:
            headers["authorization"] = authorization
        return headers

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        generation = request.method == "POST" and request.url.path in ("/v1/completions", "/v1/chat/completions")
        fault = self._next_fault() if generation else None
        prompts: Any = None
        payload: dict[str, Any] = {}
        if generation:
            payload = orjson.loads(body)
            prompts = payload.get("prompt")
            keys = (
                [orjson.dumps(payload["messages"]).decode()]
                if "messages" in payload
                else (prompts if isinstance(prompts, list) else [prompts])
            )
            with self._lock:
                self.requests += 1
                self.sent.update(str(k) for k in keys)
        if fault == "500":
            return Response(b'{"error": {"message": "injected", "code": 500}}', status_code=500)
        if fault == "429":
            return Response(b'{"error": {"message": "slow down", "code": 429}}', status_code=429)
        if fault == "timeout":
            await asyncio.sleep(self.timeout_s)
            return Response(b"{}", status_code=504)
        self.in_flight += 1
        try:
            async with httpx.AsyncClient(base_url=self.upstream, timeout=600) as client:
                upstream = await client.request(
                    request.method,
                    request.url.path,
                    content=body,
                    headers=self._forwarded_headers(request),
                )
            if self.delay_s and generation:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        content = upstream.content
        if generation:
            with self._lock:
                self.statuses[upstream.status_code] += 1
        if fault == "broken_json":
            content = content[: len(content) // 2]
        if self.chaos and upstream.status_code == 200 and isinstance(prompts, list) and prompts:
            content = spoil(content, [str(p) for p in prompts], int(payload.get("n") or 1))
        if fault == "drop":
            return _Dropped(len(content))  # type: ignore[return-value]
        response = Response(content, status_code=upstream.status_code, media_type="application/json")
        if generation:
            self.response_sent.set()
        return response


class _Dropped:
    """Announces a body, sends half of nothing, and closes: the client sees a broken connection."""

    def __init__(self, length: int) -> None:
        self.length = length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[Any] = [(b"content-length", str(self.length).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"choi', "more_body": True})
        raise ConnectionResetError("injected drop")
