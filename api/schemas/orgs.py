"""Organisations with their effective limits, and the caller's principal (`/v1/me`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.api_keys import ApiKeyCreated
from api.schemas.base import Out
from api.schemas.people import MyOrg, User
from api.schemas.usage import Budgets
from core.principal import Role


class OrgLimits(Out):
    requests_per_minute: int
    burst: int
    max_active_runs: int
    sandbox_max_concurrent: int = Field(description="Code executions at once.")
    sandbox_cpu_s_per_day: int = Field(description="CPU seconds of code execution per UTC day.")


class LimitOverrides(Out):
    requests_per_minute: int | None = None
    burst: int | None = None
    max_active_runs: int | None = None
    sandbox_max_concurrent: int | None = None
    sandbox_cpu_s_per_day: int | None = None


class Org(Out):
    id: str
    name: str
    settings: dict[str, Any]
    created_at: datetime
    limits: OrgLimits = Field(description="The effective limits.")
    limit_overrides: LimitOverrides = Field(description="The org's own values; the rest are the defaults.")
    budgets: Budgets = Field(description="The effective budgets (null: unlimited).")
    budget_overrides: Budgets = Field(description="The org's own budgets; the rest are the operator's defaults.")


class OrgCreated(Out):
    org: Org
    api_key: ApiKeyCreated


class Principal(Out):
    org_id: str
    user_id: str | None
    role: Role
    scopes: list[str]
    credential: Literal["api_key", "jwt"]
    user: User | None = Field(default=None, description="The user acting (null for a key made by no user).")
    orgs: list[MyOrg] = Field(default_factory=list, description="Every org the user belongs to, with their role: "
                                                                "POST /v1/auth/switch-org to act in another.")
