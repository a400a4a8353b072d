"""Console sign-in and sign-out, and the dependency that resolves a request's session to its project."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.auth import service as auth_service
from app.auth.schemas import Principal
from app.dependencies import DatabaseDep, SettingsDep
from app.ui import sessions
from app.ui.render import page

router = APIRouter(prefix="/ui", include_in_schema=False)


class SignInRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in form."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


async def sign_in_redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(f"/ui/sign-in?next={quote(exc.next_path)}", status_code=303)


async def session_principal(request: Request, database: DatabaseDep, settings: SettingsDep) -> Principal:
    """The project of the session's key, looked up on every request as the API looks up a key (a revoked
    key ends its sessions); else a redirect to sign in."""
    claim = sessions.parse_cookie(request.cookies.get(sessions.COOKIE))
    found = None
    if claim is not None:
        found = await database.run(lambda s: auth_service.key_principal(s, claim.key_id), readonly=True)
    secret = sessions.server_secret(settings)
    if claim is None or found is None or not sessions.verify(secret, found[1], claim):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    request.state.ui_principal = found[0]
    request.state.ui_csrf = sessions.csrf_token(secret, request.cookies[sessions.COOKIE])
    return found[0]


UiPrincipal = Annotated[Principal, Depends(session_principal)]


def check_csrf(request: Request, settings: SettingsDep, csrf: Annotated[str, Form()] = "") -> None:
    """Every state-changing form carries the session's CSRF token; a form without it changes nothing."""
    cookie = request.cookies.get(sessions.COOKIE, "")
    if not sessions.csrf_ok(sessions.server_secret(settings), cookie, csrf):
        from app.errors import ApiError

        raise ApiError(403, "missing or wrong CSRF token; reload the page and try again", loc=["body", "csrf"])


CsrfChecked = Depends(check_csrf)


def _safe_next(next_path: str | None) -> str:
    """Only a path inside the console (never another site) to go to after signing in."""
    if next_path and next_path.startswith("/ui/") and not next_path.startswith("//"):
        return next_path
    return "/ui/jobs"


@router.get("", response_class=HTMLResponse)
async def home() -> Response:
    return RedirectResponse("/ui/jobs", status_code=303)


def _sign_in_page(request: Request, next_path: str, error: str | None, status_code: int = 200) -> Response:
    """The form, with a fresh sign-in CSRF token in the form and in a SameSite=Strict cookie: another site
    cannot post a key of its own choosing to sign the browser in to its project."""
    token = sessions.new_sign_in_token()
    response = page(
        request, "sign_in.html", status_code=status_code, next=next_path, error=error, principal=None, csrf=token
    )
    response.set_cookie(
        sessions.SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, next: str | None = None) -> Response:
    return _sign_in_page(request, _safe_next(next), None)


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    if not sessions.sign_in_token_ok(request.cookies.get(sessions.SIGN_IN_COOKIE), csrf):
        return _sign_in_page(request, _safe_next(next), "The form expired; sign in again.", status_code=403)
    key = api_key.strip()
    principal = await database.run(lambda s: auth_service.authenticate(s, key), readonly=True) if key else None
    found = None
    if principal is not None:
        found = await database.run(lambda s: auth_service.key_principal(s, principal.key_id), readonly=True)
    if principal is None or found is None:
        error = "That API key is unknown or revoked." if key else "Enter an API key."
        return _sign_in_page(request, _safe_next(next), error, status_code=401)
    lifetime = settings.ui_session_hours * 3600
    cookie = sessions.make_cookie(sessions.server_secret(settings), found[1], principal.key_id, lifetime)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.delete_cookie(sessions.SIGN_IN_COOKIE, path="/ui", httponly=True, samesite="strict")
    response.set_cookie(
        sessions.COOKIE,
        cookie,
        max_age=int(lifetime),
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/sign-out", dependencies=[CsrfChecked])
async def sign_out(principal: UiPrincipal) -> Response:
    response = RedirectResponse("/ui/sign-in", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/ui", httponly=True, samesite="strict")
    return response
