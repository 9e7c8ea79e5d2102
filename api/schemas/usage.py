"""Usage, budgets and their state (`/v1/usage`, `/v1/budgets`, the org's `budgets`)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field

from api.schemas.base import Out


class Budgets(Out):
    """An org's budgets; null: unlimited."""

    monthly_tokens: int | None = None
    monthly_cost_usd: float | None = Field(default=None, description="US dollars.")
    max_runs_per_day: int | None = None


class BudgetState(Out):
    """One budget that is set, with its use in the current period."""

    budget: Literal["monthly_tokens", "monthly_cost_usd", "max_runs_per_day"]
    limit: float
    used: float
    percent: float
    warning: bool = Field(description="True from the warning share (AGENTOS_USAGE__WARN_AT, 80%) on.")
    exceeded: bool
    resets_at: datetime


class UsageSums(Out):
    model_calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    total_tokens: int
    cost_usd: float = Field(description="US dollars, from the operator's price table.")
    sandbox_executions: int
    sandbox_cpu_ms: int


class UsageGroup(UsageSums):
    """The sums of one group, with the group's key: `day`, `agent_id` or `model` (null for sandbox
    executions, which belong to no model)."""

    day: date | None = None
    agent_id: str | None = None
    model: str | None = None


class Usage(Out):
    from_: date = Field(alias="from")
    to: date
    group_by: Literal["day", "agent", "model"]
    data: list[UsageGroup]
    totals: UsageSums
    budgets: list[BudgetState] = Field(description="The org's budgets that are set, with their use.")


class BudgetsView(Out):
    budgets: Budgets = Field(description="The effective budgets (null: unlimited).")
    budget_overrides: Budgets = Field(description="The org's own values; the rest are the operator's defaults.")
    usage: list[BudgetState]
