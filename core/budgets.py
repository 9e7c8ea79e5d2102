"""Budgets per org: tokens and cost per UTC calendar month, runs per UTC day.

Where each is enforced:

- **Starting a run** (`POST .../runs`, in the transaction that inserts it): refused with 429
  `QUOTA_EXCEEDED` when the month's tokens or cost already reached a budget, or when the day's
  runs reached `max_runs_per_day` (counted under a row lock, so concurrent POSTs never exceed it).
- **During a run** (`core.metering.Meter`): every model call's record returns the org's month
  so far; a run that sees a budget reached does not call a model again and ends at its next
  step with `run.failed` `BUDGET_EXCEEDED`. A run learns the org's total only from its own
  records (and at its start), so the month can go over a budget by at most one model call per
  run executing at that moment.
- **Warnings**: at `AGENTOS_USAGE__WARN_AT` (80%) of a monthly budget a run emits `budget.warning`
  (once per budget per run) and `GET /v1/usage` shows `warning: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.admission import Limits, effective_limits
from core.errors import ApiError
from core.settings import LimitSettings
from core.store import usage

BudgetName = Literal["monthly_tokens", "monthly_cost_usd", "max_runs_per_day"]


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> datetime:
    """When the month of `day` ends (UTC midnight of the next month's first day)."""
    first = month_start(day)
    following = (first + timedelta(days=32)).replace(day=1)
    return datetime(following.year, following.month, 1, tzinfo=UTC)


def next_day(day: date) -> datetime:
    following = day + timedelta(days=1)
    return datetime(following.year, following.month, following.day, tzinfo=UTC)


def utc_today() -> date:
    return datetime.now(UTC).date()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class BudgetState:
    """One budget of an org: its limit, what was used in its period, and when that resets."""

    budget: BudgetName
    limit: Decimal
    used: Decimal
    resets_at: datetime
    warn_at: float

    @property
    def share(self) -> float:
        return float(self.used / self.limit) if self.limit > 0 else 1.0

    @property
    def exceeded(self) -> bool:
        return self.used >= self.limit

    @property
    def warning(self) -> bool:
        return self.share >= self.warn_at

    def _number(self, value: Decimal) -> int | float:
        return float(value) if self.budget == "monthly_cost_usd" else int(value)

    def public(self) -> dict[str, object]:
        return {"budget": self.budget, "limit": self._number(self.limit), "used": self._number(self.used),
                "percent": round(self.share * 100, 1), "warning": self.warning, "exceeded": self.exceeded,
                "resets_at": iso(self.resets_at)}

    def describe(self) -> str:
        what = {"monthly_tokens": "monthly token budget", "monthly_cost_usd": "monthly cost budget (USD)",
                "max_runs_per_day": "daily run limit"}[self.budget]
        return (f"This organisation used its {what}: {self._number(self.used)} of {self._number(self.limit)}. "
                f"It resets at {iso(self.resets_at)}; an operator can raise it (PATCH /v1/orgs/{{id}}, `budgets`).")


def monthly_states(limits: Limits, month: usage.Month, warn_at: float, today: date | None = None) -> list[BudgetState]:
    """The org's monthly budgets that are set, against the month's usage."""
    resets = next_month(today or utc_today())
    states = []
    if limits.monthly_tokens is not None:
        states.append(BudgetState("monthly_tokens", Decimal(limits.monthly_tokens), Decimal(month.tokens), resets,
                                  warn_at))
    if limits.monthly_cost_usd is not None:
        states.append(BudgetState("monthly_cost_usd", limits.monthly_cost_usd, month.cost_usd, resets, warn_at))
    return states


def runs_state(limits: Limits, runs_today: int, warn_at: float) -> BudgetState | None:
    if limits.max_runs_per_day is None:
        return None
    return BudgetState("max_runs_per_day", Decimal(limits.max_runs_per_day), Decimal(runs_today),
                       next_day(utc_today()), warn_at)


def refusal(state: BudgetState) -> ApiError:
    retry_s = max(1, int((state.resets_at - datetime.now(UTC)).total_seconds()))
    return ApiError("QUOTA_EXCEEDED", state.describe(), details=state.public(),
                    headers={"Retry-After": str(retry_s)})


def any_set(limits: Limits) -> bool:
    """Whether `admit_run` has anything to check for an org with these limits."""
    return any(v is not None for v in (limits.monthly_tokens, limits.monthly_cost_usd, limits.max_runs_per_day))


async def admit_run(conn: AsyncConnection[DictRow], limits: Limits, warn_at: float) -> None:
    """Check a new run against the org's budgets inside the transaction that creates it; raise
    the 429 refusal if one is used up. Costs nothing for an org without budgets."""
    if limits.monthly_tokens is not None or limits.monthly_cost_usd is not None:
        for state in monthly_states(limits, await usage.month(conn), warn_at):
            if state.exceeded:
                raise refusal(state)
    cap = limits.max_runs_per_day
    if cap is not None and not await usage.count_run(conn, cap):
        raise refusal(BudgetState("max_runs_per_day", Decimal(cap), Decimal(cap), next_day(utc_today()), warn_at))


async def states(conn: AsyncConnection[DictRow], limits: Limits, warn_at: float) -> list[BudgetState]:
    """Every budget the org has, with its use so far (for `GET /v1/usage`)."""
    found = monthly_states(limits, await usage.month(conn), warn_at)
    runs = runs_state(limits, await usage.runs_today(conn), warn_at) if limits.max_runs_per_day else None
    return [*found, *([runs] if runs is not None else [])]


ORG_BUDGET_SQL = """
SELECT o.limits, o.settings->>'embedding_model' AS embedding_model,
       coalesce(m.tokens, 0)::bigint AS tokens, coalesce(m.cost_usd, 0) AS cost_usd
FROM orgs o LEFT JOIN usage_months m
  ON m.org_id = o.id AND m.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
WHERE o.id = agentos_current_org()
"""


@dataclass(frozen=True)
class AtClaim:
    """What a worker reads of its org when it claims a run, in one statement: the effective
    limits, the month's usage so far, and the org's embedding model (None: the default)."""

    limits: Limits
    month: usage.Month
    embedding_model: str | None


def at_claim(rows: list[DictRow], defaults: LimitSettings) -> AtClaim:
    """The org's effective limits, its month so far and its embedding model, from the rows of
    ORG_BUDGET_SQL (a worker sends it in a run's claiming batch: core.store.runs.claim_batch)."""
    row = rows[0] if rows else None
    if row is None:
        return AtClaim(effective_limits(defaults, None), usage.Month(0, Decimal(0)), None)
    return AtClaim(effective_limits(defaults, row["limits"]), usage.Month(int(row["tokens"]), Decimal(row["cost_usd"])),
                   row["embedding_model"])
