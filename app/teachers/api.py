"""Routes of the teachers API."""

from fastapi import APIRouter

from app.dependencies import PrincipalDep, RegistryDep
from app.teachers.schemas import TeacherList

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])


@router.get("", response_model=TeacherList)
async def list_teachers(registry: RegistryDep, principal: PrincipalDep) -> TeacherList:
    """The configured teachers, with health and identity as their servers last reported them."""
    return TeacherList(teachers=registry.states())
