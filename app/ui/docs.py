"""/docs offline: Swagger UI 5 from the assets the fastapi-swagger package ships, served by this app (FastAPI's
own /docs and /redoc load theirs from a CDN, and are blank without internet)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(str(files("fastapi_swagger") / "resources"))
ASSETS_PATH = "/docs/assets"


def add_offline_docs(app: FastAPI) -> None:
    """/docs with local Swagger UI assets under /docs/assets (the app must be made with docs_url=None)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        )

    app.add_route("/docs", swagger_ui, include_in_schema=False)
