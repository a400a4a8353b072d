"""Console pages for datasets (list, manifest, downloads, a build form) and teachers (each replica's health)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app.datasets import service as datasets_service
from app.datasets.api import StorageDep, file_response
from app.datasets.schemas import DatasetCreate
from app.dependencies import DatabaseDep, RegistryDep, SessionDep, SettingsDep
from app.errors import ApiError
from app.ui import service
from app.ui.auth import CsrfChecked, UiPrincipal
from app.ui.render import error_page, page

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/datasets", response_class=HTMLResponse)
async def datasets_page(request: Request, session: SessionDep, principal: UiPrincipal) -> Response:
    listed = await datasets_service.list_datasets(session, principal.project_id, limit=100, cursor=None)
    completed = await service.jobs_view(session, principal.project_id, status="completed", teacher=None)
    return page(request, "datasets.html", datasets=listed.datasets, completed=completed.jobs, form_error=None)


@router.post("/datasets", response_class=HTMLResponse, dependencies=[CsrfChecked])
async def build_dataset(
    request: Request,
    database: DatabaseDep,
    storage: StorageDep,
    settings: SettingsDep,
    principal: UiPrincipal,
    name: Annotated[str, Form(max_length=128)] = "",
    jobs: Annotated[list[str] | None, Form()] = None,
    validation_fraction: Annotated[str, Form(max_length=16)] = "0",
) -> Response:
    """Build a dataset from the chosen completed jobs (as POST /v1/datasets does), then show it."""
    try:
        body = DatasetCreate.model_validate(
            {"name": name, "jobs": jobs or [], "split": {"validation_fraction": validation_fraction or "0"}}
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return await _datasets_with_error(request, database, principal.project_id, problems)
    try:
        built = await datasets_service.create_dataset(database, storage, settings, body, principal.project_id)
    except ApiError as exc:
        detail = exc.detail if isinstance(exc.detail, list) else [{"msg": str(exc.detail)}]
        message = "; ".join(d["msg"] for d in detail)
        return await _datasets_with_error(request, database, principal.project_id, message)
    return RedirectResponse(f"/ui/datasets/{built.id}", status_code=303)


async def _datasets_with_error(request: Request, database: DatabaseDep, project_id: uuid.UUID, error: str) -> Response:
    async def read(session):  # type: ignore[no-untyped-def]
        listed = await datasets_service.list_datasets(session, project_id, limit=100, cursor=None)
        completed = await service.jobs_view(session, project_id, status="completed", teacher=None)
        return listed.datasets, completed.jobs

    datasets, completed = await database.run(read, readonly=True)
    return page(request, "datasets.html", status_code=422, datasets=datasets, completed=completed, form_error=error)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
async def dataset_page(
    request: Request, dataset_id: uuid.UUID, session: SessionDep, principal: UiPrincipal
) -> Response:
    try:
        found = await datasets_service.get_dataset(session, dataset_id, principal.project_id)
        dataset = datasets_service.to_read(found)
    except ApiError as exc:
        return error_page(request, exc)
    manifest_json = dataset.manifest.model_dump_json(indent=2) if dataset.manifest is not None else None
    return page(request, "dataset.html", dataset=dataset, manifest_json=manifest_json)


@router.get("/datasets/{dataset_id}/files/{name}")
async def dataset_file(
    request: Request,
    dataset_id: uuid.UUID,
    name: str,
    session: SessionDep,
    storage: StorageDep,
    principal: UiPrincipal,
) -> Response:
    try:
        stored = await datasets_service.get_file(session, dataset_id, name, principal.project_id)
    except ApiError as exc:
        return error_page(request, exc)
    return file_response(storage, stored, None, None, None, with_body=True)


@router.get("/teachers", response_class=HTMLResponse)
async def teachers_page(request: Request, registry: RegistryDep, principal: UiPrincipal) -> Response:
    return page(request, "teachers.html", teachers=registry.states())
