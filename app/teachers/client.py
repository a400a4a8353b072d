"""TeacherClient: the HTTP calls Distillery makes to one OpenAI-compatible (vLLM) teacher server."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson

from app.settings import TeacherConfig

_MAX_ALLOWED = re.compile(r"max allowed:\s*(-?\d+)")
TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class TeacherError(Exception):
    """A failed teacher call. `transient` says whether trying again later can succeed."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.transient = transient


class TeacherClient:
    """One pooled httpx client per teacher; returns raw response bytes so parsing stays separate."""

    def __init__(self, config: TeacherConfig, *, max_connections: int = 256) -> None:
        self.config = config
        self.base_url = str(config.base_url).rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(config.request_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def completions(self, body: dict[str, Any]) -> bytes:
        return await self._post("/v1/completions", body)

    async def chat_completions(self, body: dict[str, Any]) -> bytes:
        return await self._post("/v1/chat/completions", body)

    async def get_json(self, path: str, *, timeout: float = 10.0) -> Any:
        response = await self._send("GET", path, None, timeout=timeout)
        return orjson.loads(response)

    async def post_json(self, path: str, body: dict[str, Any], *, timeout: float = 30.0) -> Any:
        return orjson.loads(await self._post(path, body, timeout=timeout))

    async def health(self) -> bool:
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

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

    async def _post(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> bytes:
        return await self._send("POST", path, orjson.dumps(body), timeout=timeout)

    async def _send(self, method: str, path: str, content: bytes | None, *, timeout: float | None) -> bytes:
        headers = {"content-type": "application/json"} if content is not None else None
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = await self._http.request(method, path, content=content, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise TeacherError(f"teacher timed out: {exc!r}", transient=True) from exc
        except httpx.HTTPError as exc:
            raise TeacherError(f"teacher unreachable: {exc!r}", transient=True) from exc
        if response.status_code != 200:
            raise TeacherError(
                f"teacher answered {response.status_code}: {_error_message(response.content)}",
                status=response.status_code,
                transient=response.status_code in TRANSIENT_STATUS or response.status_code >= 500,
            )
        return response.content


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
