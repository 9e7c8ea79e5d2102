"""Usage: metered calls, their sums per day/agent/model and per month, and the daily run counter.

A model call or a sandbox execution is recorded by ONE statement (`RECORD_SQL`) that inserts its
row keyed by (run, call key) and, only when that row is new, adds it to the org's day/agent/model
sums, to the org's month (the budget counter) and to the run's `usage`. A step that runs again
after a crash or a resume repeats the call with the same key and adds nothing. Every sum moves
in the transaction that inserts the row, so the sums always equal the rows, whatever runs
concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow

UsageKind = Literal["model", "sandbox"]
GroupBy = Literal["day", "agent", "model"]

_ADD = "coalesce((r.usage->>'{0}')::{1}, 0) + {2}"
# The org's month so far (row-level security keeps it to the org); also `RECORD_SQL`'s answer when
# its call was recorded before.
MONTH_SQL = """SELECT coalesce(sum(tokens), 0)::bigint AS tokens, coalesce(sum(cost_usd), 0) AS cost_usd
FROM usage_months WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
"""
RECORD_SQL = f"""
WITH rec AS (
    INSERT INTO usage_records (org_id, run_id, call_key, kind, agent_id, model, day, input_tokens, output_tokens,
                               cached_tokens, cost_usd, cpu_ms)
    VALUES (agentos_current_org(), %(run_id)s, %(key)s, %(kind)s, %(agent_id)s, %(model)s,
            (now() AT TIME ZONE 'UTC')::date, %(input)s, %(output)s, %(cached)s, %(cost)s, %(cpu_ms)s)
    ON CONFLICT (run_id, call_key) DO NOTHING
    RETURNING *
), daily AS (
    INSERT INTO usage_daily AS d (org_id, day, agent_id, model, model_calls, input_tokens, output_tokens,
                                  cached_tokens, cost_usd, sandbox_executions, cpu_ms)
    SELECT org_id, day, agent_id, model, (kind = 'model')::int, input_tokens, output_tokens, cached_tokens,
           cost_usd, (kind = 'sandbox')::int, cpu_ms FROM rec
    ON CONFLICT (org_id, day, agent_id, model) DO UPDATE SET
        model_calls = d.model_calls + excluded.model_calls, input_tokens = d.input_tokens + excluded.input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        cached_tokens = d.cached_tokens + excluded.cached_tokens, cost_usd = d.cost_usd + excluded.cost_usd,
        sandbox_executions = d.sandbox_executions + excluded.sandbox_executions, cpu_ms = d.cpu_ms + excluded.cpu_ms
), month AS (
    INSERT INTO usage_months AS m (org_id, month, tokens, cost_usd)
    SELECT org_id, date_trunc('month', day)::date, input_tokens + output_tokens, cost_usd FROM rec
    ON CONFLICT (org_id, month) DO UPDATE SET tokens = m.tokens + excluded.tokens,
        cost_usd = m.cost_usd + excluded.cost_usd
    RETURNING tokens, cost_usd
), run AS (
    UPDATE runs r SET usage = r.usage || jsonb_build_object(
        'input_tokens', {_ADD.format('input_tokens', 'bigint', 'rec.input_tokens')},
        'output_tokens', {_ADD.format('output_tokens', 'bigint', 'rec.output_tokens')},
        'cached_tokens', {_ADD.format('cached_tokens', 'bigint', 'rec.cached_tokens')},
        'total_tokens', {_ADD.format('total_tokens', 'bigint', 'rec.input_tokens + rec.output_tokens')},
        'cost_usd', {_ADD.format('cost_usd', 'numeric', 'rec.cost_usd')},
        'model_calls', {_ADD.format('model_calls', 'bigint', "(rec.kind = 'model')::int")},
        'sandbox_executions', {_ADD.format('sandbox_executions', 'bigint', "(rec.kind = 'sandbox')::int")},
        'sandbox_cpu_ms', {_ADD.format('sandbox_cpu_ms', 'bigint', 'rec.cpu_ms')},
        -- The models that answered, in first-use order (a fallback model shows up here).
        'models', CASE WHEN rec.kind = 'model' AND NOT coalesce(r.usage->'models', '[]') ? rec.model
                       THEN coalesce(r.usage->'models', '[]') || to_jsonb(rec.model)
                       ELSE coalesce(r.usage->'models', '[]') END)
    FROM rec WHERE r.id = rec.run_id
)
SELECT tokens, cost_usd FROM month
UNION ALL
-- A repeat of the key recorded nothing: the month as it stands (this statement's snapshot, which
-- its own writes, none here, do not change).
{MONTH_SQL}HAVING NOT EXISTS (SELECT 1 FROM month)
"""
# Counts a new run against `max_runs_per_day`: no row comes back when the day's runs reached it.
# The row stays locked until the creating transaction ends, which is what makes the cap exact.
COUNT_RUN_SQL = """
INSERT INTO usage_run_days AS c (org_id, day, runs)
VALUES (agentos_current_org(), (now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (org_id, day) DO UPDATE SET runs = c.runs + 1 WHERE c.runs < %(cap)s
RETURNING runs
"""
RUNS_TODAY_SQL = "SELECT runs FROM usage_run_days WHERE day = (now() AT TIME ZONE 'UTC')::date"

_SUMS = """
sum(model_calls)::bigint AS model_calls, sum(input_tokens)::bigint AS input_tokens,
sum(output_tokens)::bigint AS output_tokens, sum(cached_tokens)::bigint AS cached_tokens,
sum(input_tokens + output_tokens)::bigint AS total_tokens, sum(cost_usd) AS cost_usd,
sum(sandbox_executions)::bigint AS sandbox_executions, sum(cpu_ms)::bigint AS sandbox_cpu_ms
"""
_REPORT_KEYS: dict[GroupBy, str] = {"day": "day", "agent": "agent_id", "model": "model"}
REPORT_SQL = {
    group: f"SELECT {column} AS key, {_SUMS} FROM usage_daily WHERE day BETWEEN %(from)s AND %(to)s "
           f"GROUP BY {column} ORDER BY {column}"
    for group, column in _REPORT_KEYS.items()
}
TOTALS_SQL = f"SELECT {_SUMS} FROM usage_daily WHERE day BETWEEN %(from)s AND %(to)s"


class Sums(TypedDict):
    model_calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    total_tokens: int
    cost_usd: Decimal
    sandbox_executions: int
    sandbox_cpu_ms: int


class Group(Sums):
    key: date | str


@dataclass(frozen=True)
class Call:
    """One metered call, as recorded."""

    run_id: str
    key: str  # the call's place in the run (see `RECORD_SQL`)
    kind: UsageKind
    agent_id: str
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    cpu_ms: int = 0


@dataclass(frozen=True)
class Month:
    """The org's tokens and cost this UTC month."""

    tokens: int
    cost_usd: Decimal


def record_statement(call: Call) -> tuple[str, dict[str, Any]]:
    """Record a call once (a repeat of its key adds nothing): one statement, whose one row is the
    org's month so far (`month_of`), so it can travel in a batch (`RunEmitter.flush_with`)."""
    return RECORD_SQL, {
        "run_id": call.run_id, "key": call.key, "kind": call.kind, "agent_id": call.agent_id, "model": call.model,
        "input": call.input_tokens, "output": call.output_tokens, "cached": call.cached_tokens,
        "cost": call.cost_usd, "cpu_ms": call.cpu_ms,
    }


def month_of(row: DictRow) -> Month:
    return Month(int(row["tokens"]), Decimal(row["cost_usd"]))


async def month(conn: AsyncConnection[DictRow]) -> Month:
    row = await (await conn.execute(MONTH_SQL)).fetchone()
    assert row is not None
    return Month(int(row["tokens"]), Decimal(row["cost_usd"]))


async def count_run(conn: AsyncConnection[DictRow], cap: int) -> bool:
    """Count one more run today unless the day's runs reached `cap`; False: refused."""
    return await (await conn.execute(COUNT_RUN_SQL, {"cap": cap})).fetchone() is not None


async def runs_today(conn: AsyncConnection[DictRow]) -> int:
    row = await (await conn.execute(RUNS_TODAY_SQL)).fetchone()
    return int(row["runs"]) if row else 0


async def report(
    conn: AsyncConnection[DictRow], group_by: GroupBy, first: date, last: date
) -> tuple[list[Group], Sums]:
    """The org's sums per `group_by` over the UTC days `first`..`last`, and their totals."""
    params = {"from": first, "to": last}
    groups = await (await conn.execute(REPORT_SQL[group_by], params)).fetchall()
    totals = await (await conn.execute(TOTALS_SQL, params)).fetchone()
    assert totals is not None
    return cast(list[Group], groups), cast(Sums, {k: v if v is not None else 0 for k, v in totals.items()})


def public_sums(sums: Sums | Group) -> dict[str, Any]:
    """Sums as the API shows them (cost as a number of dollars)."""
    body: dict[str, Any] = {k: v for k, v in sums.items() if k != "key"}
    body["cost_usd"] = float(sums["cost_usd"])
    return body
