"""One JSON error shape for every 4xx: {"detail": [{"loc": [...], "msg": "...", "type": "..."}]}.

It is the shape FastAPI already uses for validation errors, so clients read one format.
"""

from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(HTTPException):
    """An HTTP error that names the field (or upload line) at fault."""

    def __init__(
        self,
        status_code: int,
        msg: str,
        *,
        loc: list[str | int] | None = None,
        type: str = "invalid",
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        """`details`, when given, replaces the single error: several at once, e.g. every bad upload line."""
        detail = details if details is not None else [{"loc": loc or [], "msg": msg, "type": type}]
        super().__init__(status_code=status_code, detail=detail, headers=headers)


def not_found(what: str, loc: list[str | int]) -> ApiError:
    return ApiError(404, f"{what} not found", loc=loc, type="not_found")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: list[ErrorItem]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the given error statuses, all with the one error body."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


ERROR_DESCRIPTIONS = {
    401: "Missing, unknown or revoked API key.",
    404: "Not found in the key's project.",
    409: "Conflicts with the current state, or with a request still running.",
    413: "The request body is too large.",
    503: "The teacher or the database is unavailable for now; retry after Retry-After seconds.",
}


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Any HTTPException in the one error shape: string details (from the framework's own 400s, 404s and
    405s) become a list, and a body the framework could not even parse is a 422 on the body."""
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    status = exc.status_code
    if not isinstance(detail, list):
        kind = "invalid_body" if status == 400 else "http_error"
        detail = [{"loc": ["body"] if status == 400 else [], "msg": str(detail), "type": kind}]
        status = 422 if status == 400 else status
    return JSONResponse({"detail": detail}, status_code=status, headers=getattr(exc, "headers", None))


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """The framework's 422, with every string in it made valid UTF-8 (an echoed input may hold a lone
    surrogate, which would otherwise turn the 422 into a 500 while encoding it)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _utf8(jsonable_encoder(exc.errors()))}, status_code=422)


def _utf8(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8(k): _utf8(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utf8(v) for v in value]
    return value
