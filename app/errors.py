"""One JSON error shape for every 4xx: {"detail": [{"loc": [...], "msg": "...", "type": "..."}]}.

It is the shape FastAPI already uses for validation errors, so clients read one format.
"""

from typing import Any

from fastapi import HTTPException


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
