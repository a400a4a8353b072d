"""The FastAPI application: routers, and a lifespan that migrates, probes teachers and runs the worker."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.auth.service import ensure_first_key
from app.database import Database, is_transient_db_error
from app.datasets.api import router as datasets_router
from app.errors import http_error_handler
from app.health.api import router as health_router
from app.jobs.api import router as jobs_router
from app.middleware import BodySizeLimit
from app.records.api import router as records_router
from app.settings import Settings, get_settings
from app.teachers.api import router as teachers_router
from app.teachers.service import TeacherRegistry
from app.worker.service import Worker

log = logging.getLogger(__name__)


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
        await database.upgrade_schema()
        first_key = await database.run(ensure_first_key)
        if first_key is not None:
            print(
                f"Distillery: created project {first_key.project!r} and its first API key; it is shown only once:\n"
                f"    {first_key.key}",
                file=sys.stderr,
                flush=True,
            )
        registry = TeacherRegistry(settings)
        app.state.settings = settings
        app.state.database = database
        app.state.registry = registry
        stop = asyncio.Event()
        tasks = [asyncio.create_task(registry.run(stop), name="teacher-probe")]
        app.state.worker = Worker(database, settings, registry=registry) if settings.embedded_worker else None
        if app.state.worker is not None:
            tasks.append(asyncio.create_task(app.state.worker.run(stop), name="worker"))
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
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
        upload_paths={"/v1/jobs/upload"},
    )
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.include_router(health_router)
    app.include_router(teachers_router)
    app.include_router(jobs_router)
    app.include_router(records_router)
    app.include_router(datasets_router)
    return app
