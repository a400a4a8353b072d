"""Routes of the OpenAI-compatible batches API: create, read, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.batches import service
from app.batches.schemas import BatchCreate, BatchObject, BatchPage
from app.dependencies import DatabaseDep, PrincipalDep, RegistryDep, SessionDep, SettingsDep, WakeWorkersDep
from app.errors import error_responses
from app.files.service import file_storage

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=error_responses(401, 404))


@router.post("", response_model=BatchObject)
async def create_batch(
    body: BatchCreate,
    database: DatabaseDep,
    registry: RegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    wake_workers: WakeWorkersDep,
) -> BatchObject:
    """Validate the input file and run its lines as one job. An invalid file gives a `failed` batch whose
    `errors` name each bad line; nothing else is kept of it."""
    storage = file_storage(settings.resolved_files_dir)
    batch = await service.create_batch(database, registry, settings, storage, body, principal.project_id)
    wake_workers()
    return batch


@router.get("", response_model=BatchPage)
async def list_batches(
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchPage:
    return await service.list_batches(session, principal.project_id, after=after, limit=limit)


@router.get("/{batch_id}", response_model=BatchObject)
async def get_batch(batch_id: str, session: SessionDep, principal: PrincipalDep) -> BatchObject:
    return await service.read_batch(session, batch_id, principal.project_id)


@router.post("/{batch_id}/cancel", response_model=BatchObject, responses=error_responses(409))
async def cancel_batch(
    batch_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep, wake_workers: WakeWorkersDep
) -> BatchObject:
    batch = await service.cancel_batch(
        session, batch_id, principal.project_id, batch_rows=settings.job_sweep_batch_rows
    )
    wake_workers()
    return batch
