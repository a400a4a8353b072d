"""Routes of the teachers API."""

from fastapi import APIRouter

from app.dependencies import PrincipalDep, RegistryDep
from app.errors import error_responses
from app.teachers.schemas import TeacherList

router = APIRouter(prefix="/v1/teachers", tags=["teachers"], responses=error_responses(401, 503))


@router.get("", response_model=TeacherList)
async def list_teachers(registry: RegistryDep, principal: PrincipalDep) -> TeacherList:
    """The configured teachers, with health and identity as their servers last reported them."""
    return TeacherList(teachers=registry.states())
