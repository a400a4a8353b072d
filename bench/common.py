"""Shared bench plumbing: prompt sets, a fresh Postgres database, the tiny teacher, figures to JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil

from app.api_client import DistilleryClient
from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher import default_cache_dir
from distillery_tools.tiny_teacher.build import ensure_tiny_teacher
from distillery_tools.tiny_teacher.serve import VllmServer

RESULTS_DIR = Path(__file__).parent / "results"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WORDS = ["parse", "load", "Request", "Cache", "walk", "merge", "encode", "Server", "split", "check", "read", "emit"]
STARTS = ["def ", "class ", "import ", "    return ", "for ", "with open(", "async def ", "if "]


def prompt_set(count: int) -> list[str]:
    """Deterministic code-like prompts the tiny teacher (trained on the stdlib) continues readily."""
    return [f"{STARTS[i % len(STARTS)]}{WORDS[(i // len(STARTS)) % len(WORDS)]}_{i}" for i in range(count)]


def summary(values: list[float]) -> dict[str, float]:
    """min / median / max of one figure over the runs."""
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


def write_result(name: str, figures: dict[str, Any], out: Path | None = None) -> Path:
    """Write figures (with the bench name, time and machine) to `out`, or bench/results/<name>.json."""
    figures = {
        "bench": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **figures,
    }
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def postgres_cpu_seconds() -> float:
    """User + system CPU time of every Postgres server process on the machine so far."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] in ("postgres", "postmaster") and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


class RssSampler:
    """Samples a process's resident memory on a thread until stopped; `peak` is the largest reading (bytes)."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self.process.memory_info().rss)


def service_client(url: str, api_key: str) -> DistilleryClient:
    """A client for the service, acting with the given API key."""
    return DistilleryClient(url, api_key)


def ready_service(service: ServiceProcess, *, teachers_healthy: bool = True) -> str:
    """Wait for the service (migrations applied), create an API key, wait for healthy teachers; the key."""
    service.wait_ready("", teachers_healthy=False)
    key = service.create_key("bench")
    service.wait_ready(key, teachers_healthy=teachers_healthy)
    return key


def write_prompts(path: Path, count: int) -> Path:
    """A JSONL prompt file of `count` prompt_set records with custom ids."""
    with path.open("wb") as fh:
        for i, prompt in enumerate(prompt_set(count)):
            fh.write(orjson.dumps({"prompt": prompt, "custom_id": f"p{i}"}, option=orjson.OPT_APPEND_NEWLINE))
    return path


async def _relation_sizes(database_url: str) -> dict[str, dict[str, int]]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await conn.execute("VACUUM ANALYZE")
        rows = await conn.fetch(
            """
            SELECT c.relname AS name, pg_relation_size(c.oid) AS heap,
                   COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0) AS toast,
                   pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg_toast%'
            """
        )
    finally:
        await conn.close()
    return {r["name"]: {k: int(r[k]) for k in ("heap", "toast", "indexes", "total")} for r in rows}


def relation_sizes(database_url: str) -> dict[str, dict[str, int]]:
    """After VACUUM ANALYZE: bytes of every table of the service (heap, TOAST, indexes, total)."""
    return asyncio.run(_relation_sizes(database_url))


def fmt(figure: dict[str, float], unit: str = "", scale: float = 1.0) -> str:
    """`median (min-max) unit` for a summary, e.g. '152,000 (140,000-160,000) tok/s'."""
    m, lo, hi = (figure[k] * scale for k in ("median", "min", "max"))
    return f"{m:,.0f} ({lo:,.0f}-{hi:,.0f}){' ' + unit if unit else ''}"
