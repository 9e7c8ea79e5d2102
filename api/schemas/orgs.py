"""Organisations with their effective limits, and the caller's principal (`/v1/me`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.api_keys import ApiKeyCreated
from api.schemas.base import Out
from core.principal import Role


class OrgLimits(Out):
    requests_per_minute: int
    burst: int
    max_active_runs: int


class LimitOverrides(Out):
    requests_per_minute: int | None = None
    burst: int | None = None
    max_active_runs: int | None = None


class Org(Out):
    id: str
    name: str
    settings: dict[str, Any]
    created_at: datetime
    limits: OrgLimits = Field(description="The effective limits.")
    limit_overrides: LimitOverrides = Field(description="The org's own values; the rest are the defaults.")


class OrgCreated(Out):
    org: Org
    api_key: ApiKeyCreated


class Principal(Out):
    org_id: str
    user_id: str | None
    role: Role
    scopes: list[str]
    credential: Literal["api_key", "jwt"]
