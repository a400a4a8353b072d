"""A service of its own on a fresh database of each backend, with datasets kept one day and upkeep every
0.3 s, for the tests of deletion, retention, expiry and interrupted builds; and direct database access."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.models import Project
from distillery_tools.service_process import ServiceProcess
from tests.conftest import Service, Teacher, _admin, teacher_settings

T = TypeVar("T")
UPKEEP_S = 0.3


@contextmanager
def service_of_its_own(
    request: pytest.FixtureRequest,
    teacher: Teacher,
    tmp_path_factory: pytest.TempPathFactory,
    label: str,
    extra_env: dict[str, str],
) -> Iterator[Service]:
    """A service on a fresh database of the backend `request.param` names (dropped afterwards), with keys
    for projects alpha and beta. Without Postgres it skips, or fails under CI, as `postgres_url` does."""
    backend = request.param
    data_dir = tmp_path_factory.mktemp(f"{label}-{backend}")
    pg_name = f"distillery_{label}_{uuid.uuid4().hex[:10]}"
    if backend == "postgres":
        request.getfixturevalue("postgres_url")
        _admin(f'CREATE DATABASE "{pg_name}"')
        database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    else:
        database_url = f"sqlite+aiosqlite:///{data_dir / 'distillery.db'}"
    process = ServiceProcess(
        data_dir=data_dir,
        teachers=teacher_settings(teacher, batch_size=32, max_inflight=4),
        database_url=database_url,
        extra_env={"DISTILLERY_WORKER_POLL_S": "0.1", **extra_env},
    )
    try:
        api_key, other_key = process.create_key("alpha"), process.create_key("beta")
        with process:
            process.wait_ready(api_key, timeout=120)
            yield Service(process.url, database_url, backend, process, api_key, other_key)
    finally:
        if backend == "postgres":
            _admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def maintained(
    request: pytest.FixtureRequest, teacher: Teacher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    upkeep = {"DISTILLERY_RETENTION_DAYS": "1", "DISTILLERY_MAINTENANCE_INTERVAL_S": str(UPKEEP_S)}
    with service_of_its_own(request, teacher, tmp_path_factory, "maintained", upkeep) as service:
        yield service


def in_database(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction on the service's database, from the test process."""

    async def run() -> T:
        database = Database(database_url)
        try:
            return await database.run(work)
        finally:
            await database.dispose()

    return asyncio.run(run())


def project_id(service: Service, name: str = "alpha") -> uuid.UUID:
    async def read(session: AsyncSession) -> uuid.UUID:
        return (await session.execute(select(Project.id).where(Project.name == name))).scalar_one()

    return in_database(service.database_url, read)


def datasets_dir(service: Service) -> Path:
    return Path(service.process.env["DISTILLERY_DATA_DIR"]) / "datasets"


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Until `check()` holds (several upkeep passes), or fail."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(UPKEEP_S)
