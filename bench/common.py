"""Shared bench plumbing: prompt sets, a fresh Postgres database, the tiny teacher, figures to JSON."""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from app.tiny_teacher import default_cache_dir
from app.tiny_teacher.build import ensure_tiny_teacher
from app.tiny_teacher.serve import VllmServer

RESULTS_DIR = Path(__file__).parent / "results"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WORDS = ["parse", "load", "Request", "Cache", "walk", "merge", "encode", "Server", "split", "check", "read", "emit"]
STARTS = ["def ", "class ", "import ", "    return ", "for ", "with open(", "async def ", "if "]


def prompt_set(count: int) -> list[str]:
    """Deterministic code-like prompts the tiny teacher (trained on the stdlib) continues readily."""
    return [f"{STARTS[i % len(STARTS)]}{WORDS[(i // len(STARTS)) % len(WORDS)]}_{i}" for i in range(count)]


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": len(values)}


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new database for one bench run, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"distillery_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def tiny_teacher(log_dir: Path, dtype: str = "bfloat16") -> Iterator[str]:
    """The tiny teacher under vLLM; yields its base URL."""
    model_dir = ensure_tiny_teacher(default_cache_dir())
    with VllmServer(model_dir, log_path=log_dir / "vllm.log", served_model_name="tiny", dtype=dtype) as server:
        server.wait_ready(timeout=300)
        yield server.base_url


def write_result(name: str, figures: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    figures = {
        "bench": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        **figures,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path
