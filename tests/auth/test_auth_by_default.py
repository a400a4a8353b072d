"""Auth by default: every route of the app, including one added after it was built (a new route whose
author forgot auth), answers 401 without a key; only the explicit public list answers; the schema says
so; /readyz tells anonymous callers nothing more than "unavailable"; the first key goes to a file only
the service user can read, never to the log."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.dependencies import PUBLIC_PATHS
from app.main import FIRST_KEY_FILE, create_app
from app.settings import Settings


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = Settings(data_dir=tmp_path, teachers=[], embedded_worker=False)
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    @app.get("/v1/added-later")  # declares no dependency at all
    async def added_later() -> dict[str, str]:
        return {"secret": "data"}

    with TestClient(app) as client:
        yield client


def concrete(path: str) -> str:
    """A path with each {parameter} filled in."""
    return re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)


def test_every_route_but_the_public_ones_needs_a_key(app: FastAPI, client: TestClient) -> None:
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert "/v1/added-later" in {r.path for r in routes}
    checked = console_checked = 0
    for route in routes:
        for method in route.methods:
            response = client.request(method, concrete(route.path), json={}, follow_redirects=False)
            if route.path in PUBLIC_PATHS:
                assert response.status_code == 200, (method, route.path, response.text)
                continue
            if route.path.startswith("/ui"):
                console_checked += console_route_is_closed(client, method, route.path, response)
                continue
            assert response.status_code == 401, (method, route.path, response.status_code, response.text)
            if method != "HEAD":
                assert response.json()["detail"][0]["loc"] == ["header", "authorization"]
            checked += 1
    assert checked >= 10  # the jobs, records, datasets and teachers routes, not just the one added
    assert console_checked >= 10


def console_route_is_closed(client: TestClient, method: str, path: str, response: httpx.Response) -> int:
    """A console route without a session: its sign-in form, a refused sign-in, or a way to sign in (a redirect
    for pages, 403 for forms, whose CSRF check comes first); never the data."""
    if path in ("/ui", "/ui/sign-in") and method == "GET":
        assert response.status_code in (200, 303), (method, path, response.status_code)
    elif path == "/ui/sign-in":  # no sign-in CSRF cookie and token
        assert response.status_code == 403, (method, path, response.status_code)
    elif method == "POST":
        assert response.status_code == 403, (method, path, response.status_code, response.text)
    else:
        assert response.status_code == 303, (method, path, response.status_code)
        assert response.headers["location"].startswith("/ui/sign-in?next="), response.headers
    return 1


def test_the_schema_marks_exactly_the_public_routes_as_open(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert ("security" not in operation) == (path in PUBLIC_PATHS), (method, path)


def test_readyz_says_only_unavailable(app: FastAPI, client: TestClient) -> None:
    database = app.state.database
    original = database.engine
    database.engine = None  # the next connect fails with an AttributeError's text, which must not leak
    try:
        response = client.get("/readyz")
    finally:
        database.engine = original
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


def test_the_first_key_is_in_a_private_file_not_in_the_log(
    tmp_path: Path, app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / FIRST_KEY_FILE
    with TestClient(app) as client:
        key = key_file.read_text().strip()
        assert client.get("/v1/jobs", headers={"authorization": f"Bearer {key}"}).status_code == 200
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    logged = capsys.readouterr()
    assert key not in logged.err + logged.out
    assert str(key_file.resolve()) in logged.err
