"""`GET /v1/usage`: what the organisation used (model tokens, cost, sandbox CPU) per day, agent or
model, with its budgets; `GET|PATCH /v1/budgets`: the budgets themselves. Admins only: cost is
business information, and budgets are the org's own spending controls."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, cast

from starlette.responses import Response

from api.endpoint import Call, Param, endpoint, resource, validation_failed
from api.routes.orgs import BudgetsPatch, changes_of
from api.schemas.usage import BudgetsView, Usage
from api.state import state_of
from core import budgets
from core.admission import BUDGET_KEYS, overrides_of
from core.store import orgs, usage
from core.tenancy import tenant_tx

GROUPS = ("day", "agent", "model")
MAX_DAYS = 366


def _day(call: Call[Any], name: str, default: date) -> date:
    raw = call.request.query_params.get(name)
    if raw is None:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise validation_failed([{"field": name, "message": "must be a date, YYYY-MM-DD (UTC)"}]) from None


def _group_key(group_by: usage.GroupBy, key: object) -> dict[str, Any]:
    if group_by == "model":  # sandbox executions belong to no model
        return {"model": key or None}
    return {"day" if group_by == "day" else "agent_id": key}


@endpoint("The organisation's usage over `from`..`to` (UTC days, default this month), grouped by "
          "`group_by` (day, agent or model), with totals and its budgets (admin).", role="admin",
          response=Usage, params=(
              Param("from", {"type": "string", "format": "date"}, "First UTC day (default: the month's first)."),
              Param("to", {"type": "string", "format": "date"}, "Last UTC day, inclusive (default: today)."),
              Param("group_by", {"type": "string", "enum": ["day", "agent", "model"], "default": "day"}),
          ))
async def get_usage(call: Call[Any]) -> Response:
    today = budgets.utc_today()
    first = _day(call, "from", budgets.month_start(today))
    last = _day(call, "to", today)
    if last < first or last - first > timedelta(days=MAX_DAYS - 1):
        raise validation_failed([{"field": "to", "message": f"must be on or after `from`, at most {MAX_DAYS} days "
                                                           "later"}])
    raw_group = call.request.query_params.get("group_by", "day")
    if raw_group not in GROUPS:
        raise validation_failed([{"field": "group_by", "message": f"must be one of {', '.join(GROUPS)}"}])
    group_by = cast(usage.GroupBy, raw_group)
    org_id = call.principal.org_id
    limits = await state_of(call.request).admission.limits(org_id)
    warn_at = call.settings.usage.warn_at
    async with tenant_tx(call.pool, org_id) as conn:
        groups, totals = await usage.report(conn, group_by, first, last)
        states = await budgets.states(conn, limits, warn_at)
    return call.reply({
        "from": first, "to": last, "group_by": group_by,
        "data": [_group_key(group_by, g["key"]) | usage.public_sums(g) for g in groups],
        "totals": usage.public_sums(totals),
        "budgets": [s.public() for s in states],
    })


async def _budgets(call: Call[Any], org: dict[str, Any] | None = None) -> Response:
    org_id = call.principal.org_id
    admission = state_of(call.request).admission
    if org is None:
        org = await orgs.get_org(call.pool, org_id)
    assert org is not None  # the caller's own org
    limits = admission.effective(org.get("limits"))
    async with tenant_tx(call.pool, org_id) as conn:
        states = await budgets.states(conn, limits, call.settings.usage.warn_at)
    return call.reply({"budgets": limits.public_budgets(),
                       "budget_overrides": overrides_of(org.get("limits"), BUDGET_KEYS),
                       "usage": [s.public() for s in states]})


@endpoint("The organisation's budgets (null: unlimited), which of them are its own, and their use (admin).",
          role="admin", response=BudgetsView)
async def get_budgets(call: Call[Any]) -> Response:
    return await _budgets(call)


@endpoint("Set the organisation's budgets; one set to null returns to the operator's default (admin).",
          role="admin", body=BudgetsPatch, response=BudgetsView)
async def patch_budgets(call: Call[BudgetsPatch]) -> Response:
    set_limits, clear_limits = changes_of(call.body)
    org_id = call.principal.org_id
    org = await orgs.update_org(call.pool, org_id, actor=call.principal.actor, set_limits=set_limits,
                                clear_limits=clear_limits)
    state_of(call.request).admission.forget(org_id)
    return await _budgets(call, org)


routes = [resource("/v1/usage", GET=get_usage), resource("/v1/budgets", GET=get_budgets, PATCH=patch_budgets)]
