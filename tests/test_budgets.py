"""Budgets per org: a run that would start over one is refused (429 QUOTA_EXCEEDED), a run that
crosses a monthly budget ends at its next step (BUDGET_EXCEEDED) with its work so far kept, and
concurrent runs overshoot by at most one model call per run executing (docs/operations.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from starlette.testclient import TestClient

from tests.helpers import ADMIN_TOKEN, Org, Worker, error_of, post_concurrently, start_run, wait

LIST = 'call: file_manager {"action": "list"}'
WORKER_SLOTS = 2  # the suite's worker runs two runs at a time (tests.helpers.running_worker)


def _db(stack: Any) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(stack.database_url, row_factory=dict_row)


def _next_month() -> str:
    today = datetime.now(UTC).date()
    first = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    return f"{first.isoformat()}T00:00:00Z"


def _set_budgets(org: Org, **budgets: Any) -> dict[str, Any]:
    r = org.client.patch("/v1/budgets", json=budgets, headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _agent_session(org: Org) -> tuple[dict[str, Any], str]:
    agent = org.create_agent(model="offline:priced", skills=["file_manager"], confirm="none")
    return agent, str(org.create_session(str(agent["id"]))["id"])


SCRIPT = "\n".join([LIST] * 6)  # seven model calls when nothing stops it


def _tokens_per_run(other_org: Org) -> int:
    """What one run of SCRIPT uses, measured in another org."""
    _, probe_session = _agent_session(other_org)
    probe = wait(other_org, start_run(other_org, probe_session, SCRIPT)["id"], timeout=60)
    assert probe["status"] == "succeeded" and probe["usage"]["model_calls"] == 7
    return int(probe["usage"]["total_tokens"])


def _succeeded_tool_calls(stack: Any, run_id: str) -> int:
    with _db(stack) as conn:
        row = conn.execute("SELECT count(*) AS n FROM tool_calls WHERE run_id = %s AND status = 'succeeded'",
                           (run_id,)).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_run_that_crosses_the_budget_stops_at_its_next_step_and_keeps_its_work(
        org: Org, other_org: Org, stack: Any, worker: Worker):
    """One run after another, so where the budget is crossed is known: the second run crosses
    it mid-way (at half its tokens, before its last call: each call's input grows with the thread)."""
    per_run = _tokens_per_run(other_org)
    _set_budgets(org, monthly_tokens=per_run * 3 // 2)
    _, session = _agent_session(org)
    first = wait(org, start_run(org, session, SCRIPT)["id"], timeout=60)
    assert first["status"] == "succeeded" and first["usage"]["total_tokens"] == per_run
    _, session = _agent_session(org)
    second = wait(org, start_run(org, session, SCRIPT)["id"], timeout=60)
    assert second["status"] == "failed" and second["error"]["code"] == "BUDGET_EXCEEDED"
    calls = second["usage"]["model_calls"]
    assert 1 <= calls < 7, second["usage"]
    # Every tool call its model calls asked for before the last one ran, and stays recorded.
    assert _succeeded_tool_calls(stack, second["id"]) >= calls - 1


@pytest.mark.timeout(240)
def test_concurrent_runs_stop_within_one_model_call_each_of_the_token_budget(
        client: TestClient, org: Org, other_org: Org, stack: Any, worker: Worker):
    per_run = _tokens_per_run(other_org)

    budget = per_run * 5 // 2  # two and a half runs' worth, for six runs
    assert _set_budgets(org, monthly_tokens=budget)["budgets"]["monthly_tokens"] == budget
    agent = org.create_agent(model="offline:priced", skills=["file_manager"], confirm="none")
    sessions = [str(org.create_session(str(agent["id"]))["id"]) for _ in range(6)]
    responses = post_concurrently(org, [(f"/v1/sessions/{s}/runs", {"input": SCRIPT}, {}) for s in sessions])
    assert [r.status_code for r in responses] == [202] * 6
    runs = [wait(org, r.json()["id"], timeout=200) for r in responses]

    stopped = [r for r in runs if r["status"] == "failed"]
    assert {r["status"] for r in runs} <= {"succeeded", "failed"}
    assert stopped and {r["error"]["code"] for r in stopped} == {"BUDGET_EXCEEDED"}
    assert "monthly token budget" in stopped[0]["error"]["message"]
    with _db(stack) as conn:
        month = conn.execute("SELECT tokens FROM usage_months WHERE org_id = %s", (org.id,)).fetchone()
        biggest = conn.execute("SELECT max(input_tokens + output_tokens) AS n FROM usage_records WHERE org_id = %s",
                               (org.id,)).fetchone()
        failed_event = conn.execute("SELECT data FROM run_events WHERE run_id = %s AND type = 'run.failed'",
                                    (stopped[0]["id"],)).fetchone()
        warnings = conn.execute("SELECT data FROM run_events WHERE org_id = %s AND type = 'budget.warning'",
                                (org.id,)).fetchall()
    assert month is not None and biggest is not None
    # The documented bound: past the budget by at most one model call per run executing at once.
    assert budget <= month["tokens"] <= budget + WORKER_SLOTS * biggest["n"], (month, budget, biggest)
    assert sum(r["usage"]["total_tokens"] for r in runs) == month["tokens"]
    # A run stopped mid-way keeps what it did: every tool call its model calls asked for before
    # the last one ran and stays recorded (the last one's calls may be the step it stopped at).
    # Which runs that is varies: when the budget falls in the last calls of the runs executing at
    # once, they all finish and the rest stop before their first call (the test above pins it).
    assert all(_succeeded_tool_calls(stack, r["id"]) >= r["usage"]["model_calls"] - 1 for r in stopped)
    assert failed_event is not None and failed_event["data"]["error"]["code"] == "BUDGET_EXCEEDED"
    assert warnings and {w["data"]["budget"] for w in warnings} == {"monthly_tokens"}
    assert all(w["data"]["percent"] >= 80 and w["data"]["limit"] == budget for w in warnings)

    # Over the budget, a new run is refused up front, saying which budget and when it resets.
    r = client.post(f"/v1/sessions/{sessions[0]}/runs", json={"input": "hi"}, headers=org.headers)
    error = error_of(r, 429, "QUOTA_EXCEEDED")
    assert error["details"]["budget"] == "monthly_tokens" and error["details"]["resets_at"] == _next_month()
    assert error["details"]["limit"] == budget and error["details"]["exceeded"] is True
    assert int(r.headers["Retry-After"]) >= 1
    shown = client.get("/v1/usage", headers=org.headers).json()["budgets"]
    assert [(b["budget"], b["warning"], b["exceeded"]) for b in shown] == [("monthly_tokens", True, True)]


@pytest.mark.timeout(120)
def test_a_cost_budget_refuses_the_next_run_and_an_operator_can_lift_it(client: TestClient, org: Org, worker: Worker):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = client.patch(f"/v1/orgs/{org.id}", json={"budgets": {"monthly_cost_usd": 0.000001}}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["budgets"]["monthly_cost_usd"] == 0.000001
    assert r.json()["budget_overrides"] == {"monthly_cost_usd": 0.000001}
    _, session = _agent_session(org)
    first = wait(org, start_run(org, session, LIST)["id"], timeout=60)
    assert first["usage"]["cost_usd"] > 0.000001  # allowed to start, then it crossed
    error = error_of(client.post(f"/v1/sessions/{session}/runs", json={"input": LIST}, headers=org.headers),
                     429, "QUOTA_EXCEEDED")
    assert error["details"]["budget"] == "monthly_cost_usd"
    r = client.patch(f"/v1/orgs/{org.id}", json={"budgets": {"monthly_cost_usd": None}}, headers=admin)
    assert r.json()["budgets"]["monthly_cost_usd"] is None  # back to the operator's default: none
    assert wait(org, start_run(org, session, LIST)["id"], timeout=60)["status"] == "succeeded"


def test_runs_per_day_cap_admits_exactly_the_cap_under_concurrent_posts(client: TestClient, org: Org):
    _set_budgets(org, max_runs_per_day=3)
    agent = org.create_agent()
    sessions = [str(org.create_session(str(agent["id"]))["id"]) for _ in range(6)]
    responses = post_concurrently(org, [(f"/v1/sessions/{s}/runs", {"input": "hello"}, {}) for s in sessions])
    assert sorted(r.status_code for r in responses) == [202] * 3 + [429] * 3
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert {e["code"] for e in refused} == {"QUOTA_EXCEEDED"}
    assert {e["details"]["budget"] for e in refused} == {"max_runs_per_day"}
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert refused[0]["details"]["resets_at"] == f"{tomorrow.isoformat()}T00:00:00Z"
    shown = client.get("/v1/budgets", headers=org.headers).json()
    assert shown["budget_overrides"] == {"max_runs_per_day": 3}
    assert [(u["budget"], u["used"], u["exceeded"]) for u in shown["usage"]] == [("max_runs_per_day", 3, True)]


def test_budgets_are_set_by_admins_only_and_validated(client: TestClient, org: Org):
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(client.patch("/v1/budgets", json={"monthly_tokens": 5}, headers=member), 403, "FORBIDDEN")
    error_of(client.patch("/v1/budgets", json={"monthly_tokens": 0}, headers=org.headers), 422, "VALIDATION_FAILED")
    error_of(client.patch("/v1/budgets", json={"daily": 5}, headers=org.headers), 422, "VALIDATION_FAILED")
    body = _set_budgets(org, monthly_tokens=1000, monthly_cost_usd=12.5)
    assert body["budgets"] == {"monthly_tokens": 1000, "monthly_cost_usd": 12.5, "max_runs_per_day": None}
    body = _set_budgets(org, monthly_tokens=None)
    assert body["budget_overrides"] == {"monthly_cost_usd": 12.5}
    logs = client.get("/v1/audit-logs?action=org.update", headers=org.headers).json()["data"]  # audited
    assert logs and logs[0]["details"]["clear_limits"] == ["monthly_tokens"]
