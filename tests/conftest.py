"""Session fixtures: the real vLLM teacher (tiny model), a fresh Postgres database, and the service on each."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher import default_cache_dir
from distillery_tools.tiny_teacher.build import ensure_tiny_teacher
from distillery_tools.tiny_teacher.serve import VllmServer

POSTGRES_ADMIN_DSN = os.environ.get("DISTILLERY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"


@dataclass(frozen=True)
class Teacher:
    base_url: str
    model: str = "tiny"
    max_logprobs: int = 20


@dataclass(frozen=True)
class Service:
    url: str
    database_url: str
    backend: str
    process: ServiceProcess
    api_key: str
    other_key: str = field(repr=False)

    def client(self, api_key: str | None = None) -> httpx.Client:
        """An HTTP client acting for the given key's project (default: the main test project)."""
        headers = {"authorization": f"Bearer {api_key or self.api_key}"}
        return httpx.Client(base_url=self.url, timeout=120, headers=headers)


@pytest.fixture(scope="session")
def tiny_teacher_dir() -> Path:
    return ensure_tiny_teacher(default_cache_dir())


@pytest.fixture(scope="session")
def teacher(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Teacher]:
    """One real vLLM server (float32, max_logprobs 20) for the whole test session."""
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VllmServer(tiny_teacher_dir, log_path=log_path, served_model_name="tiny", dtype="float32") as server:
        server.wait_ready(timeout=300)
        yield Teacher(base_url=server.base_url)


async def _admin_async(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin(sql: str) -> None:
    """Run one admin statement on its own loop in a thread (callers may be inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin_async(sql)).result()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards. Under CI=true, no Postgres fails the run."""
    name = f"distillery_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.fail(f"Postgres at {POSTGRES_ADMIN_DSN} is required under CI: {exc}")
        pytest.skip(f"Postgres unavailable: {exc}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def teacher_settings(teacher: Teacher, **overrides: object) -> list[dict[str, object]]:
    return [{"name": "tiny", "base_url": teacher.base_url, "model": teacher.model, **overrides}]


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def service(
    request: pytest.FixtureRequest, teacher: Teacher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The service with its embedded worker, once on SQLite and once on Postgres."""
    backend = request.param
    data_dir = tmp_path_factory.mktemp(f"service-{backend}")
    database_url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgres"
        else f"sqlite+aiosqlite:///{data_dir / 'distillery.db'}"
    )
    process = ServiceProcess(
        data_dir=data_dir,
        teachers=teacher_settings(teacher, batch_size=32, max_inflight=4),
        database_url=database_url,
        extra_env={"DISTILLERY_WORKER_POLL_S": "0.1"},
    )
    api_key = process.create_key("alpha")
    other_key = process.create_key("beta")
    with process:
        process.wait_ready(api_key, timeout=120)
        yield Service(
            url=process.url,
            database_url=database_url,
            backend=backend,
            process=process,
            api_key=api_key,
            other_key=other_key,
        )


@pytest.fixture
def api(service: Service) -> Iterator[httpx.Client]:
    """A client of the service for project "alpha"."""
    with service.client() as client:
        yield client


KEY_IN_TEXT = re.compile(rb"dk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run: no log any service, worker or teacher wrote holds a Distillery API key."""
    yield
    leaks = []
    for path in tmp_path_factory.getbasetemp().rglob("*.log"):
        if KEY_IN_TEXT.search(path.read_bytes()):
            leaks.append(str(path))
    assert not leaks, f"an API key appears in {leaks}"


@pytest.fixture
def empty_postgres(postgres_url: str) -> Iterator[str]:
    """A new, empty Postgres database of this test's own (postgres_url first: it fails or skips the run
    without Postgres). The session database is shared: another test's worker may claim from it."""
    name = f"distillery_deploy_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
