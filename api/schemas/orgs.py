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


class Retention(Out):
    events_days: int = Field(description="Run events are kept this long after their run ended (0: for ever).")
    tool_calls_days: int = Field(description="Tool-call records, likewise.")
    messages_days: int = Field(description="Messages, from when they were written (0: for ever).")
    checkpoints_days: int = Field(description="A session's checkpoints, after its last run ended, are pruned to "
                                  "`final_checkpoint` (0: never).")
    audit_days: int = Field(description="Audit entries (never less than the operator's minimum; 0: for ever).")
    final_checkpoint: Literal["keep", "drop"]


class RetentionOverrides(Out):
    events_days: int | None = None
    tool_calls_days: int | None = None
    messages_days: int | None = None
    checkpoints_days: int | None = None
    audit_days: int | None = None
    final_checkpoint: Literal["keep", "drop"] | None = None


class Org(Out):
    id: str
    name: str
    settings: dict[str, Any]
    created_at: datetime
    limits: OrgLimits = Field(description="The effective limits.")
    limit_overrides: LimitOverrides = Field(description="The org's own values; the rest are the defaults.")
    budgets: Budgets = Field(description="The effective budgets (null: unlimited).")
    budget_overrides: Budgets = Field(description="The org's own budgets; the rest are the operator's defaults.")
    retention: Retention = Field(description="The effective retention (core.retention).")
    retention_overrides: RetentionOverrides = Field(description="The org's own retention values.")


class OrgDeletion(Out):
    org_id: str
    status: Literal["scheduled", "restored"]
    requested_at: datetime | None = Field(description="When the owner asked for the deletion (null once restored).")
    purge_after: datetime | None = Field(description="When the org's data is removed for good, unless it is "
                                         "restored before (null once restored).")
    cancelled_runs: int = Field(description="Active runs the request cancelled.")


class OrgCreated(Out):
    org: Org
    api_key: ApiKeyCreated


class Principal(Out):
    org_id: str
    org_name: str | None = Field(default=None, description="The organisation's name, for display.")
    user_id: str | None
    role: Role
    scopes: list[str]
    credential: Literal["api_key", "jwt"]
    user: User | None = Field(default=None, description="The user acting (null for a key made by no user).")
    orgs: list[MyOrg] = Field(default_factory=list, description="Every org the user belongs to, with their role: "
                                                                "POST /v1/auth/switch-org to act in another.")
