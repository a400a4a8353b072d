"""TeacherClient: the HTTP calls Distillery makes to one replica of an OpenAI-compatible (vLLM) teacher."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from app.observability.metrics import TEACHER_REQUEST_SECONDS, TEACHER_REQUESTS, request_outcome
from app.settings import TeacherConfig
from app.teachers.parsing import TeacherResponseError

_MAX_ALLOWED = re.compile(r"max allowed:\s*(-?\d+)")
_METRIC_LINE = re.compile(
    r"^(vllm:num_requests_running|vllm:num_requests_waiting|vllm:generation_tokens_total)(?:\{[^}]*\})?\s+([0-9.eE+-]+)",
    re.MULTILINE,
)
DEFAULT_MAX_ANSWER_BYTES = 1 << 30  # requests that do not say how much they may get back
ERROR_BODY_BYTES = 64 * 1024  # of an error answer, only this much is read (its message is near the start)
TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# The teacher, not the prompt, is wrong: a missing or rotated key, a wrong base path or model name.
TEACHER_FAULT_STATUS = frozenset({401, 403, 404, 405})
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})  # timed in the latency histogram


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """A replica's own counts: sequences running and waiting, tokens generated since it started."""

    running: int
    waiting: int
    generated: float | None


class TeacherError(Exception):
    """A failed teacher call. `transient`: trying again later can succeed. `teacher_fault`: the replica
    refuses every request (auth, routing), so no prompt is to blame."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.transient = transient
        self.teacher_fault = status in TEACHER_FAULT_STATUS


class TeacherClient:
    """One pooled httpx client per replica; returns raw response bytes so parsing stays separate.
    The teacher's api_key and headers go on every request and nowhere else (never into messages)."""

    def __init__(self, config: TeacherConfig, base_url: str | None = None, *, max_connections: int = 1024) -> None:
        self.config = config
        self.base_url = (base_url or config.replica_urls[0]).rstrip("/")
        self.label = display_url(self.base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=config.request_headers(),
            timeout=httpx.Timeout(config.request_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=256),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def completions(self, body: dict[str, Any], *, max_bytes: int | None = None) -> bytes:
        """The raw answer; one longer than `max_bytes` is refused as malformed (not held whole)."""
        return await self._post("/v1/completions", body, max_bytes=max_bytes)

    async def chat_completions(self, body: dict[str, Any], *, max_bytes: int | None = None) -> bytes:
        return await self._post("/v1/chat/completions", body, max_bytes=max_bytes)

    async def get_json(self, path: str, *, timeout: float = 10.0) -> Any:
        response = await self._send("GET", path, None, timeout=timeout)
        return orjson.loads(response)

    async def post_json(self, path: str, body: dict[str, Any], *, timeout: float = 30.0) -> Any:
        return orjson.loads(await self._post(path, body, timeout=timeout))

    async def detokenize(self, token_id: int) -> str:
        """The text of one token id, as the server's tokenizer decodes it alone (vLLM's /detokenize)."""
        answer = await self.post_json("/detokenize", {"model": self.config.model, "tokens": [token_id]})
        text = answer.get("prompt") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise TeacherError("the teacher's /detokenize answer has no prompt string", transient=False)
        return text

    async def health(self) -> bool:
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def load(self) -> ServerLoad | None:
        """Sequences running and waiting, and tokens generated so far, from the server's Prometheus
        /metrics; None when it has no such metrics. A busy server may answer slowly: transport errors
        raise (try again later)."""
        response = await self._http.get("/metrics", timeout=10.0)
        if response.status_code != 200:
            return None
        totals: dict[str, float] = {}
        for name, value in _METRIC_LINE.findall(response.text):
            totals[name] = totals.get(name, 0.0) + float(value)
        if "vllm:num_requests_running" not in totals:
            return None
        return ServerLoad(
            running=int(totals["vllm:num_requests_running"]),
            waiting=int(totals.get("vllm:num_requests_waiting", 0)),
            generated=totals.get("vllm:generation_tokens_total"),
        )

    async def score_tokens(
        self, prompt: str | None, response: str | None, messages: list[dict[str, Any]] | None
    ) -> tuple[list[int], list[int]]:
        """Prompt and response token ids for teacher forcing, from the teacher's own /tokenize.

        Raw: the prompt with the tokenizer's special tokens, the response without, each tokenized alone.
        Chat: the conversation before the assistant turn with the generation prompt; the response is what
        the full conversation adds to it (its template must extend the prompt, else the item fails)."""
        model = self.config.model
        if messages is None:
            head = await self.post_json("/tokenize", {"model": model, "prompt": prompt})
            tail = await self.post_json("/tokenize", {"model": model, "prompt": response, "add_special_tokens": False})
            return _token_list(head), _token_list(tail)
        head = await self.post_json(
            "/tokenize", {"model": model, "messages": messages[:-1], "add_generation_prompt": True}
        )
        full = await self.post_json("/tokenize", {"model": model, "messages": messages, "add_generation_prompt": False})
        prompt_ids, full_ids = _token_list(head), _token_list(full)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise TeacherError(
                "the chat template does not render the prompt as a prefix of the conversation", transient=False
            )
        return prompt_ids, full_ids[len(prompt_ids) :]

    async def probe_max_logprobs(self, prompt_token_ids: list[int]) -> int | None:
        """The server's --max-logprobs, read from the 400 it gives to an oversized request."""
        body = {
            "model": self.config.model,
            "prompt": prompt_token_ids,
            "max_tokens": 1,
            "logprobs": 1_000_000,
        }
        try:
            await self._post("/v1/completions", body, timeout=30.0)
        except TeacherError as exc:
            match = _MAX_ALLOWED.search(exc.message)
            if exc.status == 400 and match:
                return int(match.group(1))
            raise
        return None  # the server accepted a million: no cap

    async def _post(
        self, path: str, body: dict[str, Any], *, timeout: float | None = None, max_bytes: int | None = None
    ) -> bytes:
        return await self._send("POST", path, orjson.dumps(body), timeout=timeout, max_bytes=max_bytes)

    async def _send(
        self, method: str, path: str, content: bytes | None, *, timeout: float | None, max_bytes: int | None = None
    ) -> bytes:
        headers = {"content-type": "application/json"} if content is not None else None
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        limit = max_bytes if max_bytes is not None else DEFAULT_MAX_ANSWER_BYTES
        started = time.perf_counter()
        try:
            async with self._http.stream(method, path, content=content, headers=headers, **kwargs) as response:
                if response.status_code != 200:
                    limit = ERROR_BODY_BYTES
                body = await _read_at_most(response, limit)
        except httpx.TimeoutException as exc:
            self._count(request_outcome(None, timeout=True))
            raise TeacherError(f"teacher timed out: {exc!r}", transient=True) from exc
        except httpx.HTTPError as exc:
            self._count(request_outcome(None))
            raise TeacherError(f"teacher unreachable: {exc!r}", transient=True) from exc
        self._count(request_outcome(response.status_code))
        if path in GENERATION_PATHS:
            TEACHER_REQUEST_SECONDS.labels(self.config.name).observe(time.perf_counter() - started)
        if response.status_code != 200:
            raise TeacherError(
                f"teacher answered {response.status_code}: {_error_message(body or b'')}",
                status=response.status_code,
                transient=response.status_code in TRANSIENT_STATUS or response.status_code >= 500,
            )
        if body is None:
            raise TeacherResponseError(f"teacher answer is larger than {limit:,} bytes, the most this request allows")
        return body

    def _count(self, outcome: str) -> None:
        TEACHER_REQUESTS.labels(self.config.name, self.label, outcome).inc()


def display_url(url: str) -> str:
    """The URL without any user or password in it (fit for logs, metrics and the API)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def _read_at_most(response: httpx.Response, limit: int) -> bytes | None:
    """The body, or None once it grows past `limit` (an error answer is cut there instead)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if response.status_code != 200:
                chunks.append(chunk[: limit - size + len(chunk)])
                return b"".join(chunks)
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _token_list(answer: Any) -> list[int]:
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(tokens, list):
        raise TeacherError("the /tokenize answer has no token list", transient=True)
    return [int(t) for t in tokens]


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "message" in data:
            return str(data["message"])
    return body[:500].decode("utf-8", "replace")
