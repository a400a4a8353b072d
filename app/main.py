"""The FastAPI application: routers, and a lifespan that migrates, probes teachers and runs the worker."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.auth.service import ensure_first_key
from app.batches.api import router as batches_router
from app.database import Database, is_transient_db_error
from app.datasets.api import router as datasets_router
from app.dependencies import PUBLIC_PATHS, authorize
from app.errors import http_error_handler, validation_error_handler
from app.fidelity.api import router as fidelity_router
from app.files.api import router as files_router
from app.health.api import router as health_router
from app.jobs.api import router as jobs_router
from app.maintenance import run_maintenance
from app.middleware import BodySizeLimit
from app.observability.api import router as observability_router
from app.observability.logs import RequestContext
from app.observability.service import GaugeRefresher
from app.records.api import router as records_router
from app.settings import Settings, get_settings
from app.teachers.api import router as teachers_router
from app.teachers.service import TeacherRegistry
from app.ui import auth as ui_auth
from app.ui.api import router as ui_router
from app.ui.docs import add_offline_docs
from app.ui.pages import router as ui_pages_router
from app.ui.render import STATIC
from app.worker.service import Worker

log = logging.getLogger(__name__)
FIRST_KEY_FILE = "first-api-key"


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A lost connection or a lost race is the client's to retry (503); anything else is our bug (500)."""
    if is_transient_db_error(exc):
        log.warning("database unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
        detail = [{"loc": [], "msg": "the database is unavailable; retry shortly", "type": "unavailable"}]
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})
    log.error("database error during %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": [{"loc": [], "msg": "internal error", "type": "internal"}]}, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.resolved_database_url, application_name=settings.database_application_name)
        await database.prepare_schema(migrate=settings.migrate_on_start)
        first_key = await database.run(ensure_first_key)
        if first_key is not None:
            path = write_secret(settings.data_dir / FIRST_KEY_FILE, first_key.key + "\n")
            print(
                f"Distillery: created project {first_key.project!r} and its first API key, written to {path} "
                "(readable by this user only)",
                file=sys.stderr,
                flush=True,
            )
        registry = TeacherRegistry(settings)
        app.state.settings = settings
        app.state.database = database
        app.state.registry = registry
        stop = asyncio.Event()
        refresher = GaugeRefresher(database, [t.name for t in settings.teachers], interval_s=settings.metrics_refresh_s)
        tasks = [
            asyncio.create_task(registry.run(stop), name="teacher-probe"),
            asyncio.create_task(refresher.run(stop), name="metrics-gauges"),
            asyncio.create_task(run_maintenance(database, settings, stop), name="maintenance"),
        ]
        app.state.worker = Worker(database, settings, registry=registry) if settings.embedded_worker else None
        if app.state.worker is not None:
            tasks.append(asyncio.create_task(app.state.worker.run(stop), name="worker"))
        # What start-up built lives as long as the app: frozen out of the collector's sight, it is not walked
        # by every full collection (a big upload's allocations set one off every few seconds: 100-250 ms
        # stalls of every request, measured with bench/giant.py).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await registry.aclose()
            await database.dispose()

    app = FastAPI(
        title="Distillery",
        version=__version__,
        summary="Teacher top-k logprobs as knowledge-distillation datasets.",
        lifespan=lifespan,
        docs_url=None,  # served offline below (add_offline_docs)
        redoc_url=None,  # ReDoc would load its script from a CDN
        dependencies=[Depends(authorize)],  # every route needs a key unless its path is in PUBLIC_PATHS
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
        upload_paths={"/v1/jobs/upload", "/v1/files"},
    )
    app.add_middleware(RequestContext)  # outermost: even a refused body gets its request id and is counted
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(health_router)
    app.include_router(teachers_router)
    app.include_router(jobs_router)
    app.include_router(records_router)
    app.include_router(fidelity_router)
    app.include_router(datasets_router)
    app.include_router(files_router)
    app.include_router(batches_router)
    app.include_router(observability_router)
    # The console: its routes check a session cookie (ui_auth), not a bearer key; see PUBLIC_PATHS.
    app.include_router(ui_auth.router)
    app.include_router(ui_router)
    app.include_router(ui_pages_router)
    app.add_exception_handler(ui_auth.SignInRequired, ui_auth.sign_in_redirect)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    add_offline_docs(app)
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The schema, without the key requirement the app-wide dependency puts on the public routes."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)  # the framework's own schema (cached in app.openapi_schema, edited in place)
    for path in PUBLIC_PATHS:
        for operation in schema.get("paths", {}).get(path, {}).values():
            operation.pop("security", None)
    return schema


def write_secret(path: Path, text: str) -> Path:
    """Write `text` to a new file only this user can read (replacing an old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path.resolve()
