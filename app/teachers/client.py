"""TeacherClient: the HTTP calls Distillery makes to one replica of an OpenAI-compatible (vLLM) teacher."""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

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
# Connections per httpx pool (see TeacherClient): one, so a pool's own bookkeeping never visits another.
SHARD_CONNECTIONS = 1
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
    """httpx connection pools to one replica; returns raw response bytes so parsing stays separate.
    The teacher's api_key and headers go on every request and nowhere else (never into messages).

    The connections are spread over small httpx pools (shards) of at most `shard_connections` each (one by
    default), made as concurrency needs them and reused most recently freed first: httpcore visits every
    connection of its pool on each request and on each response (an expiry poll of each idle socket), so
    one pool of hundreds of connections costs O(pool size) per request, which was most of the service's
    CPU when chats go one request each. Requests go straight to the shard's `httpx.AsyncHTTPTransport` with
    headers built once: the client layer above it (URL and header merging, auth and redirect flows, the
    cookie jar) cost 15-20% of a request and none of it is used here; what is (credentials in the URL,
    proxies from the environment, the CA bundle's environment variables) is done in `__init__`."""

    def __init__(
        self,
        config: TeacherConfig,
        base_url: str | None = None,
        *,
        max_connections: int = 1024,
        shard_connections: int = SHARD_CONNECTIONS,
    ) -> None:
        self.config = config
        self.base_url = (base_url or config.replica_urls[0]).rstrip("/")
        self.label = display_url(self.base_url)
        self.shard_connections = max(1, min(shard_connections, max_connections))
        self.max_shards = -(-max_connections // self.shard_connections)
        base = httpx.URL(self.base_url)
        self._headers = _request_headers(base, config.request_headers())
        self._json_headers = [*self._headers, (b"content-type", b"application/json")]
        self._timeouts: dict[float | None, dict[str, float | None]] = {}
        self._default_timeout = config.request_timeout_s
        self._urls: dict[str, httpx.URL] = {}
        self._proxy = environment_proxy(self.base_url)
        self._ssl = httpx.create_ssl_context()  # one for every shard (each would load the CA bundle again)
        self._shards: list[httpx.AsyncHTTPTransport] = []
        self._busy: list[int] = []  # requests in flight per shard
        self._free: list[int] = []  # a shard's index once per connection it has free (a stack)
        self._closed = False

    def _new_shard(self) -> None:
        size = self.shard_connections
        self._shards.append(
            httpx.AsyncHTTPTransport(
                verify=self._ssl,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                proxy=self._proxy,
            )
        )
        self._busy.append(0)

    def _take_shard(self) -> int:
        """A shard with a free connection, the most recently freed first (its connection is warm); a new
        shard when none has one and the cap allows; else the least busy shard, where httpx queues it."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        if self._free:
            index = self._free.pop()
        elif len(self._shards) < self.max_shards:
            self._new_shard()
            index = len(self._shards) - 1
            self._free.extend([index] * (self.shard_connections - 1))
        else:
            index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        return index

    def _give_shard(self, index: int) -> None:
        self._busy[index] -= 1
        if self._busy[index] < self.shard_connections:
            self._free.append(index)

    @property
    def shards(self) -> int:
        """httpx pools made so far (each of at most `shard_connections` connections)."""
        return len(self._shards)

    async def aclose(self) -> None:
        self._closed = True
        for transport in self._shards:
            await transport.aclose()

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
            status, _ = await self._request("GET", "/health", None, timeout=5.0, limit=ERROR_BODY_BYTES)
        except httpx.HTTPError:
            return False
        return status == 200

    async def load(self) -> ServerLoad | None:
        """Sequences running and waiting, and tokens generated so far, from the server's Prometheus
        /metrics; None when it has no such metrics. A busy server may answer slowly: transport errors
        raise (try again later)."""
        status, body = await self._request("GET", "/metrics", None, timeout=10.0, limit=DEFAULT_MAX_ANSWER_BYTES)
        if status != 200 or body is None:
            return None
        totals: dict[str, float] = {}
        for name, value in _METRIC_LINE.findall(body.decode("utf-8", "replace")):
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
        limit = max_bytes if max_bytes is not None else DEFAULT_MAX_ANSWER_BYTES
        started = time.perf_counter()
        try:
            status, body = await self._request(method, path, content, timeout=timeout, limit=limit)
        except httpx.TimeoutException as exc:
            self._count(request_outcome(None, timeout=True))
            raise TeacherError(f"teacher timed out: {exc!r}", transient=True) from exc
        except httpx.HTTPError as exc:
            self._count(request_outcome(None))
            raise TeacherError(f"teacher unreachable: {exc!r}", transient=True) from exc
        self._count(request_outcome(status))
        if path in GENERATION_PATHS:
            TEACHER_REQUEST_SECONDS.labels(self.config.name).observe(time.perf_counter() - started)
        if status != 200:
            raise TeacherError(
                f"teacher answered {status}: {_error_message(body or b'')}",
                status=status,
                transient=status in TRANSIENT_STATUS or status >= 500,
            )
        if body is None:
            raise TeacherResponseError(f"teacher answer is larger than {limit:,} bytes, the most this request allows")
        return body

    async def _request(
        self, method: str, path: str, content: bytes | None, *, timeout: float | None, limit: int
    ) -> tuple[int, bytes | None]:
        """Status and body (None once past `limit`; an error answer is cut to ERROR_BODY_BYTES instead),
        sent through a shard with a free connection. httpx errors propagate."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        request = httpx.Request(
            method,
            url,
            headers=self._headers if content is None else self._json_headers,
            content=content,
            extensions={"timeout": self._timeout_for(timeout)},
        )
        shard = self._take_shard()
        try:
            response = await self._shards[shard].handle_async_request(request)
            try:
                status = response.status_code
                body = await _read_at_most(response, limit if status == 200 else ERROR_BODY_BYTES)
            finally:
                await response.aclose()
        finally:
            self._give_shard(shard)
        return status, body

    def _timeout_for(self, timeout: float | None) -> dict[str, float | None]:
        """httpx's timeout extension: `timeout` (else the teacher's request timeout) with a 10 s connect."""
        found = self._timeouts.get(timeout)
        if found is None:
            seconds = self._default_timeout if timeout is None else timeout
            found = self._timeouts[timeout] = httpx.Timeout(seconds, connect=10.0).as_dict()
        return found

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


def _request_headers(url: httpx.URL, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """What httpx's client would send with every request: Host, Accept, User-Agent, the teacher's headers,
    and Basic auth from credentials in the URL (which win over an Authorization header, as in httpx)."""
    merged = httpx.Headers({"accept": "*/*", "user-agent": f"python-httpx/{httpx.__version__}"})
    merged.update(headers)
    if url.username or url.password:
        token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
        merged["authorization"] = f"Basic {token}"
    return [(b"host", url.netloc), *((k.encode("latin-1"), v.encode("latin-1")) for k, v in merged.items())]


def environment_proxy(url: str) -> str | None:
    """The proxy that HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (less NO_PROXY) name for this URL, if any."""
    parts = urlsplit(url)
    proxies = getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


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
