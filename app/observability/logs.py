"""Logging: JSON lines (one object a line) or console text, with the request, job and batch a line is about.

The ids ride in context variables: `RequestContext` sets the request id for everything one HTTP request
logs (taken from `X-Request-ID` when the client sends a sane one, and returned in the answer); the worker
sets the job and batch ids around each batch. Secrets never reach a log line: API keys and teacher keys
are not logged by any call site, and as a second line of defence, Bearer tokens and Distillery keys in a
message are masked."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
batch_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_id", default=None)

_CONTEXT = (("request_id", request_id), ("job_id", job_id), ("batch_id", batch_id))
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_SECRET = re.compile(r"(?i)(bearer\s+)\S+|\bdk_[A-Za-z0-9_-]{12}_[A-Za-z0-9_-]+")
LogFormat = Literal["json", "console"]

access_log = logging.getLogger("distillery.access")


def mask_secrets(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or "") + "***", text)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the context ids that are set, and any extra
    fields a call site passes in `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        for name, var in _CONTEXT:
            value = var.get()
            if value is not None:
                entry[name] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = mask_secrets(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """Text for a terminal, with the context ids in brackets after the logger name."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{name}={var.get()}" for name, var in _CONTEXT if var.get() is not None]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        return mask_secrets(super().format(record))


def configure_logging(fmt: LogFormat | None = None, level: int = logging.INFO) -> None:
    """Root logging for a service process: JSON lines unless told otherwise or writing to a terminal."""
    chosen = fmt or ("console" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True  # RequestContext logs each request, with its id


class RequestContext:
    """Per HTTP request: its id (the client's X-Request-ID, else a new one) in the log context and in the
    answer's headers, one access log line, and the request counter and latency by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                _observe(scope, status, time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"fields": {"status": status, "ms": round((time.perf_counter() - started) * 1000, 1)}},
            )
            request_id.reset(token)


def _observe(scope: Scope, status: int, seconds: float) -> None:
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"  # a template, never the raw path (no ids)
    HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(scope["method"], template).observe(seconds)
