"""Jinja2 rendering for the console: one autoescaping environment over the package's templates."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from app.errors import ApiError

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _number(value: float | int) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == 0 else f"{value:,.1f}"


def _prob(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


_env.filters.update(when=_when, number=_number, prob=_prob)
_env.globals.update(exp=math.exp)


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The rendered template; `principal` and `csrf` come from the request's console session when signed in."""
    context.setdefault("principal", getattr(request.state, "ui_principal", None))
    context.setdefault("csrf", getattr(request.state, "ui_csrf", ""))
    html = _env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def error_page(request: Request, exc: ApiError) -> HTMLResponse:
    """An API error (404 for another project's job, 409 for a conflict) as a page with the same message."""
    detail = exc.detail if isinstance(exc.detail, list) else [{"msg": str(exc.detail)}]
    messages = [str(d.get("msg", "")) for d in detail]
    return page(request, "error.html", status_code=exc.status_code, status=exc.status_code, messages=messages)
