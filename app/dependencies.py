"""Request dependencies. The request's session is the edge that opens and commits its transaction."""

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service as auth_service
from app.auth.schemas import Principal
from app.database import Database
from app.errors import ApiError
from app.settings import Settings
from app.teachers.service import TeacherRegistry
from app.worker.service import Worker


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_registry(request: Request) -> TeacherRegistry:
    registry: TeacherRegistry = request.app.state.registry
    return registry


def get_wake_workers(request: Request) -> Callable[[], None]:
    """Wakes this process's embedded worker at once (new work); other processes hear Postgres NOTIFY."""
    worker: Worker | None = getattr(request.app.state, "worker", None)
    return worker.wake if worker is not None else _nothing


def _nothing() -> None:
    return None


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(
    request: Request, database: Annotated[Database, Depends(get_database)]
) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, rolled back when it raises.
    GET requests only read, so on SQLite they do not queue behind writers. Used with scope="function",
    so the commit happens before the response is sent: a client never sees a 201 for uncommitted data."""
    async with database.transaction(readonly=request.method in ("GET", "HEAD")) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
DatabaseDep = Annotated[Database, Depends(get_database)]

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer dk_...`.")


# Routes that answer without a key; every other route requires one (the app-wide dependency below).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# The web console: its pages take no bearer key but a session cookie, checked by their own dependency
# (app.ui.auth.session_principal) against the same key records.
CONSOLE_PREFIX = "/ui/"


def _is_public(path: str | None) -> bool:
    if path is None:
        return False
    return path in PUBLIC_PATHS or path == CONSOLE_PREFIX.rstrip("/") or path.startswith(CONSOLE_PREFIX)


async def authorize(
    request: Request,
    database: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal | None:
    """Runs for every route (an app-wide dependency): the project the request acts for, from its API key;
    401 when the key is missing, unknown or revoked, unless the route is public. Looked up in a read-only
    transaction of its own, so it never holds the request's write lock."""
    route = request.scope.get("route")
    if _is_public(getattr(route, "path", None)):
        return None
    principal = None
    if credentials is not None:
        key = credentials.credentials
        principal = await database.run(lambda s: auth_service.authenticate(s, key), readonly=True)
    if principal is None:
        raise ApiError(
            401,
            "missing, unknown or revoked API key",
            loc=["header", "authorization"],
            type="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


async def get_principal(principal: Annotated[Principal | None, Depends(authorize)]) -> Principal:
    """The authorized project (the same, cached, lookup as the app-wide check)."""
    if principal is None:
        raise ApiError(401, "this route needs an API key", loc=["header", "authorization"], type="unauthorized")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
RegistryDep = Annotated[TeacherRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
WakeWorkersDep = Annotated[Callable[[], None], Depends(get_wake_workers)]
