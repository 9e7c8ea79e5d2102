"""API keys of an org; the key itself appears once, when it is created."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.schemas.base import Out
from core.principal import Role


class ApiKey(Out):
    id: str
    name: str
    prefix: str = Field(description="The visible part of the key (`aos_<prefix>_…`).")
    role: Role
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The whole key: shown in this response only; store it.")
