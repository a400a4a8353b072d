"""All SQL of the auth domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiKey, Project


async def project_by_name(session: AsyncSession, name: str) -> Project | None:
    return (await session.execute(select(Project).where(Project.name == name))).scalar_one_or_none()


async def insert_project(session: AsyncSession, name: str) -> Project:
    project = Project(id=uuid.uuid4(), name=name)
    session.add(project)
    await session.flush()
    return project


async def insert_key(session: AsyncSession, *, project_id: uuid.UUID, key_id: str, key_hash: str) -> ApiKey:
    key = ApiKey(id=uuid.uuid4(), project_id=project_id, key_id=key_id, key_hash=key_hash)
    session.add(key)
    await session.flush()
    return key


async def key_with_project(session: AsyncSession, key_id: str) -> tuple[ApiKey, Project] | None:
    row = (
        await session.execute(
            select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id).where(ApiKey.key_id == key_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def list_keys(session: AsyncSession) -> list[tuple[ApiKey, Project]]:
    rows = await session.execute(
        select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.created_at)
    )
    return [(k, p) for k, p in rows.all()]


async def revoke_key(session: AsyncSession, key_id: str, now: datetime) -> bool:
    result = await session.execute(
        update(ApiKey).where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def count_keys(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)
