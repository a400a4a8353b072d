"""The log formatters: context ids on every line, secrets masked even when a call site slips."""

from __future__ import annotations

import logging

import orjson

from app.observability.logs import ConsoleFormatter, JsonFormatter, batch_id, job_id, request_id


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("distillery.test", logging.WARNING, __file__, 1, message, args, None)


def test_json_lines_carry_the_context_ids_and_mask_keys() -> None:
    tokens = [job_id.set("job-1"), batch_id.set("17+64")]
    try:
        line = JsonFormatter().format(record("sent %s with Bearer %s", "dk_0123456789ab_s3cr3tvalue", "sk-teacher"))
    finally:
        batch_id.reset(tokens[1])
        job_id.reset(tokens[0])
    entry = orjson.loads(line)
    assert entry["job_id"] == "job-1" and entry["batch_id"] == "17+64" and "request_id" not in entry
    assert entry["level"] == "warning" and entry["logger"] == "distillery.test"
    assert "s3cr3tvalue" not in line and "sk-teacher" not in line and "dk_***" not in line


def test_console_lines_name_the_request() -> None:
    token = request_id.set("trace-1")
    try:
        line = ConsoleFormatter().format(record("hello"))
    finally:
        request_id.reset(token)
    assert "[request_id=trace-1]" in line and line.endswith(": hello")
