"""What the auth domain hands around."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class Principal(BaseModel):
    """Who a request acts for: the project of its API key."""

    project_id: uuid.UUID
    project: str
    key_id: str


class ApiKeyRead(BaseModel):
    key_id: str
    project: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str
