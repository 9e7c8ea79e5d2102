"""Retention (core.retention): per-org overrides over the operator's defaults, and the job that
removes what is older in batches — events and tool calls of runs that ended long ago, old audit
entries (never younger than the operator's minimum), and checkpoints: all kept for a run waiting
for a human, the latest per namespace for a running one, the final state (or nothing) for a
session whose runs ended long ago. The checkpoint bytes of a real run's thread are measured
before and after."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from core import retention
from core.infra import Infra
from core.settings import LifecycleSettings, Settings
from core.tenancy import tenant_tx
from core.tenant_data import Removed
from tests.helpers import ADMIN_TOKEN, Org, Worker, error_of, start_run, stored_run, wait

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _checkpoint(conn: psycopg.Connection[Any], thread: str, n: int, ns: str = "") -> None:
    """Checkpoint `n` of a thread: channel `messages` changes every step, `plan` only at step 1
    (so every checkpoint references plan's first version, as LangGraph's do for unchanged channels)."""
    versions = {"messages": f"{n:032}.1", "plan": f"{1:032}.1"}
    conn.execute("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, checkpoint) "
                 "VALUES (%s, %s, %s, %s)", (thread, ns, f"cp{n:04}", json.dumps({"channel_versions": versions})))
    conn.execute("INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob) "
                 "VALUES (%s, %s, 'messages', %s, 'bytes', %s)", (thread, ns, versions["messages"], b"m" * 100 * n))
    if n == 1:
        conn.execute("INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob) "
                     "VALUES (%s, %s, 'plan', %s, 'bytes', 'p')", (thread, ns, versions["plan"]))
    conn.execute("INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, blob) "
                 "VALUES (%s, %s, %s, 't', 0, 'messages', 'w')", (thread, ns, f"cp{n:04}"))


def _thread(database_url: str, thread: str) -> dict[str, list[Any]]:
    with psycopg.connect(database_url) as conn:
        return {
            "checkpoints": [r[0] for r in conn.execute(
                "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s ORDER BY 1", (thread,))],
            "blobs": [(r[0], int(r[1].split(".")[0])) for r in conn.execute(
                "SELECT channel, version FROM checkpoint_blobs WHERE thread_id = %s ORDER BY 1, 2", (thread,))],
            "writes": [r[0] for r in conn.execute(
                "SELECT checkpoint_id FROM checkpoint_writes WHERE thread_id = %s ORDER BY 1", (thread,))],
        }


def _enforce(settings: Settings, org_id: str, policy: retention.Policy) -> Removed:
    async def go() -> Removed:
        infra = await Infra.open(settings, name="test-retention", pool_min=0, pool_max=3)
        try:
            return await retention.enforce_org(infra, org_id, policy)
        finally:
            await infra.close()

    return asyncio.run(go())


def _thread_bytes(settings: Settings, org_id: str, thread: str) -> int:
    async def go() -> int:
        infra = await Infra.open(settings, name="test-retention", pool_min=0, pool_max=1)
        try:
            async with tenant_tx(infra.pool, org_id) as conn:
                return await retention.thread_bytes(conn, thread)
        finally:
            await infra.close()

    return asyncio.run(go())


POLICY = retention.Policy(events_days=30, tool_calls_days=30, messages_days=0, checkpoints_days=7,
                          audit_days=400, final_checkpoint="keep")


def test_overrides_win_over_defaults_but_never_shorten_the_audit_log_below_the_minimum() -> None:
    defaults = LifecycleSettings(events_days=90, audit_days=365, audit_min_days=180)
    assert retention.effective(defaults, {}).events_days == 90
    policy = retention.effective(defaults, {"events_days": 7, "audit_days": 30, "final_checkpoint": "drop",
                                            "tool_calls_days": "soon", "bogus": 1})
    assert policy.events_days == 7 and policy.final_checkpoint == "drop"
    assert policy.audit_days == 180  # raised to the operator's minimum
    assert policy.tool_calls_days == defaults.tool_calls_days  # a bad value is ignored
    assert retention.effective(defaults, {"audit_days": 0}).audit_days == 0  # for ever is longer than any minimum


def test_an_org_overrides_retention_through_the_platform_admin(client: TestClient, org: Org) -> None:
    r = client.patch(f"/v1/orgs/{org.id}", json={"retention": {"events_days": 14, "final_checkpoint": "drop"}},
                     headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retention"]["events_days"] == 14 and body["retention_overrides"] == {
        "events_days": 14, "final_checkpoint": "drop"}
    error_of(client.patch(f"/v1/orgs/{org.id}", json={"retention": {"events_days": -1}}, headers=ADMIN), 422,
             "VALIDATION_FAILED")
    cleared = client.patch(f"/v1/orgs/{org.id}", json={"retention": {"events_days": None}}, headers=ADMIN).json()
    assert cleared["retention_overrides"] == {"final_checkpoint": "drop"}
    assert cleared["retention"]["events_days"] == LifecycleSettings().events_days


def test_the_job_removes_only_what_is_older_than_the_policy(settings: Settings, stack: Any, org: Org,
                                                             other_org: Org) -> None:
    agent = org.create_agent()
    old_session, new_session = (str(org.create_session(str(agent["id"]))["id"]) for _ in range(2))
    old_run = stored_run(settings, org.id, str(agent["id"]), old_session)
    new_run = stored_run(settings, org.id, str(agent["id"]), new_session)
    other_agent = other_org.create_agent()
    other_session = str(other_org.create_session(str(other_agent["id"]))["id"])
    other_run = stored_run(settings, other_org.id, str(other_agent["id"]), other_session)
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE runs SET status = 'succeeded', finished_at = now() - interval '60 days' "
                     "WHERE id = ANY(%s)", ([old_run, other_run],))
        conn.execute("UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = %s", (new_run,))
        for run_id, session_id, org_id in ((old_run, old_session, org.id), (new_run, new_session, org.id)):
            conn.execute("INSERT INTO tool_calls (id, org_id, run_id, session_id, agent_id, name, status) "
                         "VALUES (%s, %s, %s, %s, 'a', 'calc', 'succeeded')",
                         (f"tc_{run_id}", org_id, run_id, session_id))
        conn.execute("UPDATE audit_logs SET created_at = now() - interval '500 days' WHERE org_id = %s "
                     "AND action = 'agent.create'", (org.id,))

    removed = _enforce(settings, org.id, POLICY)

    assert removed.rows["run_events"] >= 1 and removed.rows["tool_calls"] == 1 and removed.rows["audit_logs"] == 1
    with psycopg.connect(stack.database_url) as conn:
        def count(query: str, *args: Any) -> int:
            row = conn.execute(query, args).fetchone()
            return int(row[0]) if row else -1

        assert count("SELECT count(*) FROM run_events WHERE run_id = %s", old_run) == 0
        assert count("SELECT count(*) FROM run_events WHERE run_id = %s", new_run) >= 1
        assert count("SELECT count(*) FROM run_events WHERE run_id = %s", other_run) >= 1  # another org's
        assert count("SELECT count(*) FROM tool_calls WHERE run_id = %s", new_run) == 1
        assert count("SELECT count(*) FROM audit_logs WHERE org_id = %s AND action = 'agent.create'", org.id) == 0
        assert count("SELECT count(*) FROM audit_logs WHERE org_id = %s", org.id) >= 1  # the younger entries
        assert count("SELECT count(*) FROM runs WHERE id = %s", old_run) == 1  # the run itself stays
    again = _enforce(settings, org.id, POLICY)
    assert again.rows == {}  # a second pass finds nothing left to remove


def test_checkpoints_are_kept_for_a_waiting_run_pruned_for_a_running_one_and_finalised_when_ended(
        settings: Settings, stack: Any, org: Org) -> None:
    agent = org.create_agent()
    sessions = {kind: str(org.create_session(str(agent["id"]))["id"]) for kind in ("waiting", "running", "ended")}
    threads = {kind: f"{org.id}:{sid}" for kind, sid in sessions.items()}
    run_ids = {kind: stored_run(settings, org.id, str(agent["id"]), sid) for kind, sid in sessions.items()}
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE runs SET status = 'awaiting_confirmation', created_at = now() - interval '90 days' "
                     "WHERE id = %s", (run_ids["waiting"],))
        conn.execute("UPDATE runs SET status = 'running' WHERE id = %s", (run_ids["running"],))
        conn.execute("UPDATE runs SET status = 'succeeded', finished_at = now() - interval '8 days' WHERE id = %s",
                     (run_ids["ended"],))
        for thread in threads.values():
            for n in (1, 2, 3):
                _checkpoint(conn, thread, n)
    waiting_before = _thread(stack.database_url, threads["waiting"])

    _enforce(settings, org.id, POLICY)

    assert _thread(stack.database_url, threads["waiting"]) == waiting_before  # whatever its age
    for kind in ("running", "ended"):
        left = _thread(stack.database_url, threads[kind])
        assert left["checkpoints"] == ["cp0003"] and left["writes"] == ["cp0003"], (kind, left)
        # The latest's own messages blob, and the first plan blob it still references.
        assert left["blobs"] == [("messages", 3), ("plan", 1)], (kind, left)

    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE runs SET status = 'succeeded', finished_at = now() - interval '8 days' WHERE id = %s",
                     (run_ids["running"],))
    _enforce(settings, org.id, retention.Policy(**{**POLICY.public(), "final_checkpoint": "drop"}))
    assert _thread(stack.database_url, threads["running"]) == {"checkpoints": [], "blobs": [], "writes": []}
    assert _thread(stack.database_url, threads["waiting"]) == waiting_before


@pytest.mark.usefixtures("worker")
def test_a_real_sessions_checkpoint_bytes_shrink_and_its_next_run_still_continues(
        settings: Settings, stack: Any, org: Org, worker: Worker) -> None:
    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    for text in ("first question", "second question", "third question"):
        assert wait(org, start_run(org, session, text)["id"])["status"] == "succeeded"
    thread = f"{org.id}:{session}"
    before = _thread_bytes(settings, org.id, thread)
    rows_before = _thread(stack.database_url, thread)
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE runs SET finished_at = now() - interval '8 days' WHERE session_id = %s", (session,))

    _enforce(settings, org.id, POLICY)

    after = _thread_bytes(settings, org.id, thread)
    rows_after = _thread(stack.database_url, thread)
    print(f"\ncheckpoint thread of 3 runs: {len(rows_before['checkpoints'])} checkpoints, "
          f"{len(rows_before['blobs'])} blobs, {len(rows_before['writes'])} writes, {before} bytes -> "
          f"{len(rows_after['checkpoints'])} / {len(rows_after['blobs'])} / {len(rows_after['writes'])}, {after} bytes")
    assert len(rows_before["checkpoints"]) > 3 and len(rows_after["checkpoints"]) == 1
    assert after < before
    # The final state is what the next run continues from: it still runs, with the history.
    assert wait(org, start_run(org, session, "fourth question")["id"])["status"] == "succeeded"


def _idle_sessions(database_url: str, org_id: str, agent_id: str, prefix: str, n: int) -> list[str]:
    """`n` sessions whose one run ended 8 days ago (past POLICY's checkpoints), 3 checkpoints each."""
    sessions = [f"ses_{prefix}{i}" for i in range(n)]
    with psycopg.connect(database_url) as conn:
        for session in sessions:
            conn.execute("INSERT INTO sessions (id, org_id, agent_id) VALUES (%s, %s, %s)", (session, org_id, agent_id))
            conn.execute("INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, status, input, trace_id, "
                         "finished_at) VALUES (%s, %s, %s, %s, 1, 'succeeded', '{}', 't', now() - interval '8 days')",
                         (session.replace("ses_", "run_"), org_id, session, agent_id))
            for n_ in (1, 2, 3):
                _checkpoint(conn, f"{org_id}:{session}", n_)
    return sessions


PRUNED = {"checkpoints": ["cp0003"], "blobs": [("messages", 3), ("plan", 1)], "writes": ["cp0003"]}


def test_a_pass_prunes_idle_sessions_with_statements_per_batch_not_per_session(
        settings: Settings, stack: Any, org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the pass took five statements (and a transaction) per idle session, over an
    hour for 50,000 sessions; now a batch of sessions is locked and pruned together."""
    agent = str(org.create_agent()["id"])
    statements = 0
    execute = psycopg.AsyncConnection.execute

    async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal statements
        statements += 1
        return await execute(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", counting)
    counts: dict[int, int] = {}
    for n in (2, 12):
        sessions = _idle_sessions(stack.database_url, org.id, agent, f"few{n}_", n)
        statements = 0
        removed = _enforce(settings, org.id, POLICY)
        counts[n] = statements
        assert removed.rows == {"checkpoints": 2 * n, "checkpoint_blobs": 2 * n, "checkpoint_writes": 2 * n}, n
        for session in sessions:
            assert _thread(stack.database_url, f"{org.id}:{session}") == PRUNED, session
    assert counts[12] == counts[2], counts  # ten sessions more, not one statement more


def test_a_session_in_use_is_skipped_not_waited_on_and_pruned_by_the_next_pass(
        settings: Settings, stack: Any, org: Org) -> None:
    """A session another transaction holds (as a run starting in it does) is left alone, the pass
    does not wait for it; the others are pruned, in several batches; the next pass takes it."""
    agent = str(org.create_agent()["id"])
    sessions = _idle_sessions(stack.database_url, org.id, agent, "busy", 7)
    busy = sessions[3]
    # 2 sessions a batch (retention.sessions_per_batch): 4 batches for the 7.
    small = settings.model_copy(update={"lifecycle": settings.lifecycle.model_copy(update={"batch_rows": 10})})
    before = _thread(stack.database_url, f"{org.id}:{busy}")

    holder = psycopg.connect(stack.database_url)
    try:
        holder.execute("SELECT id FROM sessions WHERE id = %s FOR UPDATE", (busy,))  # a transaction, held
        done: list[Removed] = []
        passing = threading.Thread(target=lambda: done.append(_enforce(small, org.id, POLICY)))
        passing.start()
        waited = False
        with psycopg.connect(stack.database_url, autocommit=True) as watcher:
            while passing.is_alive() and not waited:  # the pass ends, or waits on the held row
                row = watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
                waited = bool(row and row[0])
                passing.join(0.05)
    finally:
        holder.rollback()
        holder.close()
    passing.join()
    assert not waited, "the pass waited for the session held by another transaction"
    assert done and done[0].rows["checkpoints"] == 2 * 6
    assert _thread(stack.database_url, f"{org.id}:{busy}") == before
    for session in sessions:
        if session != busy:
            assert _thread(stack.database_url, f"{org.id}:{session}") == PRUNED, session

    again = _enforce(small, org.id, POLICY)
    assert again.rows == {"checkpoints": 2, "checkpoint_blobs": 2, "checkpoint_writes": 2}
    assert _thread(stack.database_url, f"{org.id}:{busy}") == PRUNED
