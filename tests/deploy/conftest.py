"""Deployment tests: a database of their own per test (dropped afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import _admin


@pytest.fixture
def empty_postgres(postgres_url: str) -> Iterator[str]:
    """A new, empty Postgres database (postgres_url first: it fails or skips the run without Postgres)."""
    name = f"distillery_deploy_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
