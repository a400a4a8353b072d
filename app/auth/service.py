"""API keys: `dk_<key id>_<secret>`, stored as a SHA-256 hash; checked in constant time.

The key id is public (it names the key in listings and finds its row); only the hash of the whole key is
kept, so a database leak does not leak usable keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import repository
from app.auth.schemas import ApiKeyCreated, ApiKeyRead, Principal
from app.models import utcnow

KEY_PREFIX = "dk"
DEFAULT_PROJECT = "default"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _split(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1]


async def create_key(session: AsyncSession, project_name: str) -> ApiKeyCreated:
    """A new key for the project, creating the project on first use. The key is returned only here."""
    project = await repository.project_by_name(session, project_name)
    if project is None:
        project = await repository.insert_project(session, project_name)
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = await repository.insert_key(session, project_id=project.id, key_id=key_id, key_hash=hash_key(key))
    return ApiKeyCreated(key=key, key_id=key_id, project=project.name, created_at=row.created_at, revoked_at=None)


async def authenticate(session: AsyncSession, key: str) -> Principal | None:
    key_id = _split(key)
    if key_id is None:
        return None
    found = await repository.key_with_project(session, key_id)
    # Hash and compare even when no row matched, so timing tells nothing about which key ids exist.
    expected = found[0].key_hash if found else "0" * 64
    if not hmac.compare_digest(hash_key(key), expected) or found is None or found[0].revoked_at is not None:
        return None
    api_key, project = found
    return Principal(project_id=project.id, project=project.name, key_id=api_key.key_id)


async def list_keys(session: AsyncSession) -> list[ApiKeyRead]:
    return [
        ApiKeyRead(key_id=k.key_id, project=p.name, created_at=k.created_at, revoked_at=k.revoked_at)
        for k, p in await repository.list_keys(session)
    ]


async def revoke_key(session: AsyncSession, key_id: str) -> bool:
    return await repository.revoke_key(session, key_id, utcnow())


async def ensure_first_key(session: AsyncSession) -> ApiKeyCreated | None:
    """On a database with no keys at all, create the default project's first key (shown once)."""
    if await repository.count_keys(session):
        return None
    return await create_key(session, DEFAULT_PROJECT)


async def key_principal(session: AsyncSession, key_id: str) -> tuple[Principal, str] | None:
    """The project of a live (unrevoked) key found by its public id, with the key's stored hash (which a
    console session's signature is bound to): None when the key is unknown or revoked."""
    found = await repository.key_with_project(session, key_id)
    if found is None or found[0].revoked_at is not None:
        return None
    api_key, project = found
    return Principal(project_id=project.id, project=project.name, key_id=api_key.key_id), api_key.key_hash
