"""The official openai client against the test service, and helpers the batch tests share."""

from __future__ import annotations

import io
import time
from typing import Any

import orjson
from openai import OpenAI
from openai.types import Batch

from tests.conftest import Service

FINAL = {"completed", "failed", "cancelled", "expired"}


def openai_client(service: Service, api_key: str | None = None) -> OpenAI:
    return OpenAI(base_url=f"{service.url}/v1", api_key=api_key or service.api_key, max_retries=0, timeout=120)


def jsonl(lines: list[dict[str, Any]] | list[bytes]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


def upload(client: OpenAI, content: bytes, name: str = "batch.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch").id


def wait_batch(client: OpenAI, batch_id: str, statuses: set[str] = FINAL, timeout: float = 180.0) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.25)
    raise AssertionError(f"batch {batch_id} did not reach {statuses} in {timeout} s: {batch}")


def file_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines() if line.strip()]


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny", "messages": messages, **body},
    }


def completions_line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "tiny", "prompt": prompt, **body},
    }
