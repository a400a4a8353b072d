"""Route of the fidelity report."""

import uuid

from fastapi import APIRouter

from app.dependencies import PrincipalDep, SessionDep
from app.errors import error_responses
from app.fidelity import service
from app.fidelity.schemas import FidelityReport
from app.jobs.service import get_job

router = APIRouter(prefix="/v1/jobs", tags=["fidelity"], responses=error_responses(401, 404, 503))


@router.get("/{job_id}/fidelity", response_model=FidelityReport)
async def job_fidelity(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> FidelityReport:
    """What each top-k codec costs on this job's data: bytes per token, logprob errors and KL against the
    teacher's own values, on the job's first items (which keep those values exactly)."""
    job = await get_job(session, job_id, principal.project_id)
    return await service.fidelity_report(session, job)
