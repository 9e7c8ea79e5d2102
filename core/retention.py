"""Retention: how long an org's run events, tool-call records, messages, checkpoints and audit
entries are kept, and the maintenance job that removes what is older (runtime.maintenance.JOBS).

The operator sets defaults (`AGENTOS_LIFECYCLE__*_DAYS`); an org may override each one
(`orgs.retention`, set through PATCH /v1/orgs/{id}), except that no org keeps its audit log
for less than the operator's minimum. Everything is removed in small batches, each its own
short transaction, so the job never holds a lock live traffic waits on for long — except the
event log's weekly partitions that are wholly past every org's events retention, which go first,
whole (core.event_partitions; one short exclusive lock per drop, bytes back to the OS at once).

Checkpoints (LangGraph's, one thread per session) follow the session's runs:
- a session with a run waiting for a human (or queued again after one decided) keeps all of
  them, whatever their age: that run resumes from them;
- a session with a run executing keeps the latest checkpoint per namespace (with the blobs it
  and any newer one can reference: blob versions only grow), the older ones go at once;
- a session whose runs all ended more than `checkpoints_days` ago keeps only its final state
  (`final_checkpoint: keep`, what its next run continues from) or nothing (`drop`). Those
  sessions go a batch at a time (`sessions_per_batch`): one transaction locks the batch's session
  rows together (SKIP LOCKED: a session in use, a run starting in it, is left to the next pass,
  never waited on), checks again that each is still idle, and prunes every thread of the batch
  with one statement per checkpoint table, so a pass costs a few statements per few hundred
  sessions rather than five per session.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core import event_partitions
from core.infra import Infra
from core.settings import LifecycleSettings
from core.tenancy import checkpoint_thread_id, lifecycle_scan_tx, tenant_tx
from core.tenant_data import Removed, delete_checkpoints

log = logging.getLogger("agentos.retention")

DAY_KEYS = ("events_days", "tool_calls_days", "messages_days", "checkpoints_days", "audit_days")
RETENTION_KEYS = (*DAY_KEYS, "final_checkpoint")
MAX_DAYS = 36_500


@dataclass(frozen=True)
class Policy:
    """An org's effective retention, in days (0: kept for ever)."""

    events_days: int
    tool_calls_days: int
    messages_days: int
    checkpoints_days: int
    audit_days: int
    final_checkpoint: Literal["keep", "drop"]

    def public(self) -> dict[str, Any]:
        return asdict(self)


def overrides_of(stored: Any) -> dict[str, Any]:
    """The usable overrides in an `orgs.retention` value (unknown keys and bad values ignored)."""
    if not isinstance(stored, dict):
        return {}
    out: dict[str, Any] = {}
    for key in DAY_KEYS:
        value = stored.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DAYS:
            out[key] = value
    if stored.get("final_checkpoint") in ("keep", "drop"):
        out["final_checkpoint"] = stored["final_checkpoint"]
    return out


def effective(defaults: LifecycleSettings, stored: Any) -> Policy:
    """The org's overrides over the operator's defaults; the audit log never kept for less than
    `audit_min_days` (0, for ever, is longer than any minimum)."""
    o = overrides_of(stored)
    audit = int(o.get("audit_days", defaults.audit_days))
    if audit != 0:
        audit = max(audit, defaults.audit_min_days)
    return Policy(
        events_days=int(o.get("events_days", defaults.events_days)),
        tool_calls_days=int(o.get("tool_calls_days", defaults.tool_calls_days)),
        messages_days=int(o.get("messages_days", defaults.messages_days)),
        checkpoints_days=int(o.get("checkpoints_days", defaults.checkpoints_days)),
        audit_days=audit,
        final_checkpoint=o.get("final_checkpoint", defaults.final_checkpoint),
    )


# Every org's overrides, deletion pending or not (their events are kept until the purge).
RETENTIONS_SQL = "SELECT DISTINCT retention FROM orgs"
# Events of an org whose retention is the longest are left to the partition drop, which takes
# them once their week's partition is wholly past it (within a week of their turn). The batched
# delete takes them only if no drop has, a week and a day later (a run that ran long, or waits
# for a human, keeps its whole partition until it too is past).
PARTITION_LAG_DAYS = 8

ORGS_SQL = """
SELECT id, retention FROM orgs WHERE deletion_requested_at IS NULL AND (%(after)s::text IS NULL OR id > %(after)s)
ORDER BY id LIMIT 100
"""
# Runs that ended before the cutoff and still have rows in the table (index on run_id).
ENDED_RUNS_SQL = """
SELECT r.id FROM runs r
WHERE r.org_id = agentos_current_org() AND r.finished_at < now() - make_interval(days => %(days)s)
  AND EXISTS (SELECT 1 FROM {table} x WHERE x.run_id = r.id)
LIMIT %(limit)s
"""
DELETE_BY_RUNS_SQL = "DELETE FROM {table} WHERE run_id = ANY(%s)"
DELETE_OLD_MESSAGES_SQL = """
DELETE FROM messages WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM messages WHERE org_id = agentos_current_org()
      AND created_at < now() - make_interval(days => %s) LIMIT %s))
"""
PRUNE_AUDIT_SQL = "SELECT agentos_prune_audit(now() - make_interval(days => %s), %s) AS removed"

# Sessions with a run executing: their threads keep the latest checkpoint per namespace.
RUNNING_SESSIONS_SQL = """
SELECT DISTINCT session_id FROM runs WHERE org_id = agentos_current_org() AND status = 'running' ORDER BY 1
"""
# A batch of sessions whose runs all ended before the cutoff and whose thread still holds more
# than what is kept, locked together. SKIP LOCKED: a session another transaction holds (a run
# starting in it) is skipped, never waited on; the next pass takes it.
LOCK_ENDED_SESSIONS_SQL = """
SELECT s.id FROM sessions s
WHERE s.org_id = agentos_current_org() AND s.id > %(after)s
  AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.session_id = s.id
                  AND (r.status IN ('queued', 'running', 'awaiting_confirmation')
                       OR r.finished_at >= now() - make_interval(days => %(days)s)))
  AND (SELECT count(*) FROM (SELECT 1 FROM checkpoints c WHERE c.thread_id = agentos_current_org() || ':' || s.id
                             LIMIT 2) k) > %(keep)s
ORDER BY s.id LIMIT %(limit)s
FOR UPDATE OF s SKIP LOCKED
"""
# Which of the locked sessions are still idle, read after the locks are held (a statement of its
# own: in READ COMMITTED it sees what committed before it, such as a run created between the
# batch's snapshot and its lock). No run can start in them until the batch commits.
STILL_IDLE_SQL = """
SELECT s.id FROM unnest(%s::text[]) AS s(id)
WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.session_id = s.id
                  AND r.status IN ('queued', 'running', 'awaiting_confirmation'))
"""
# The latest checkpoint of each namespace of each thread stays; so do the blobs whose version is
# not older than the one it references (a checkpoint written meanwhile can only reference those).
# One statement per table for a whole batch of threads.
PRUNE_CHECKPOINTS_SQL = """
DELETE FROM checkpoints c USING (SELECT thread_id, checkpoint_ns, max(checkpoint_id) AS latest FROM checkpoints
                                 WHERE thread_id = ANY(%(t)s) GROUP BY thread_id, checkpoint_ns) k
WHERE c.thread_id = k.thread_id AND c.checkpoint_ns = k.checkpoint_ns AND c.checkpoint_id < k.latest
"""
PRUNE_WRITES_SQL = """
DELETE FROM checkpoint_writes w USING (SELECT thread_id, checkpoint_ns, max(checkpoint_id) AS latest
                                       FROM checkpoints WHERE thread_id = ANY(%(t)s)
                                       GROUP BY thread_id, checkpoint_ns) k
WHERE w.thread_id = k.thread_id AND w.checkpoint_ns = k.checkpoint_ns AND w.checkpoint_id < k.latest
"""
PRUNE_BLOBS_SQL = """
DELETE FROM checkpoint_blobs b USING (SELECT DISTINCT ON (thread_id, checkpoint_ns) thread_id, checkpoint_ns,
                                             checkpoint -> 'channel_versions' AS versions
                                      FROM checkpoints WHERE thread_id = ANY(%(t)s)
                                      ORDER BY thread_id, checkpoint_ns, checkpoint_id DESC) k
WHERE b.thread_id = k.thread_id AND b.checkpoint_ns = k.checkpoint_ns
  AND k.versions ? b.channel AND b.version < k.versions ->> b.channel
"""
THREAD_BYTES_SQL = """
SELECT coalesce((SELECT sum(pg_column_size(c.*)) FROM checkpoints c WHERE thread_id = %(t)s), 0)
     + coalesce((SELECT sum(pg_column_size(b.*)) FROM checkpoint_blobs b WHERE thread_id = %(t)s), 0)
     + coalesce((SELECT sum(pg_column_size(w.*)) FROM checkpoint_writes w WHERE thread_id = %(t)s), 0) AS bytes
"""


async def thread_bytes(conn: AsyncConnection[DictRow], thread_id: str) -> int:
    """The bytes a checkpoint thread's rows take (their stored sizes, TOAST included)."""
    row = await (await conn.execute(THREAD_BYTES_SQL, {"t": thread_id})).fetchone()
    return int(row["bytes"]) if row else 0


async def prune_to_latest(conn: AsyncConnection[DictRow], thread_ids: list[str], removed: Removed) -> None:
    """Keep the latest checkpoint per namespace of each thread and what it references: three
    statements, however many threads."""
    if not thread_ids:
        return
    params = {"t": thread_ids}
    removed.add("checkpoint_blobs", (await conn.execute(PRUNE_BLOBS_SQL, params)).rowcount)
    removed.add("checkpoint_writes", (await conn.execute(PRUNE_WRITES_SQL, params)).rowcount)
    removed.add("checkpoints", (await conn.execute(PRUNE_CHECKPOINTS_SQL, params)).rowcount)


async def _by_ended_runs(infra: Infra, org_id: str, table: str, days: int, removed: Removed) -> None:
    limit = max(1, infra.settings.lifecycle.batch_rows // 10)
    select, delete = ENDED_RUNS_SQL.format(table=table), DELETE_BY_RUNS_SQL.format(table=table)
    while True:
        async with tenant_tx(infra.pool, org_id) as conn:
            ids = [r["id"] for r in await (await conn.execute(select, {"days": days, "limit": limit})).fetchall()]
            if ids:
                removed.add(table, (await conn.execute(delete, (ids,))).rowcount)
        if len(ids) < limit:
            return


def sessions_per_batch(lifecycle: LifecycleSettings) -> int:
    """Sessions whose checkpoints one transaction prunes (200 by default: a few thousand rows per
    table, each session held only that long)."""
    return max(1, lifecycle.batch_rows // 5)


async def _checkpoints(infra: Infra, org_id: str, policy: Policy, removed: Removed) -> None:
    limit = sessions_per_batch(infra.settings.lifecycle)
    async with tenant_tx(infra.pool, org_id) as conn:
        running = [r["session_id"] for r in await (await conn.execute(RUNNING_SESSIONS_SQL)).fetchall()]
    for i in range(0, len(running), limit):
        async with tenant_tx(infra.pool, org_id) as conn:
            await prune_to_latest(conn, [checkpoint_thread_id(org_id, s) for s in running[i:i + limit]], removed)
    if not policy.checkpoints_days:
        return
    keep = 1 if policy.final_checkpoint == "keep" else 0
    after = ""
    while True:
        # A batch of sessions held together, only those still idle pruned: no run starts in them
        # meanwhile. Five statements per batch, whatever its size.
        async with tenant_tx(infra.pool, org_id) as conn:
            ids = [r["id"] for r in await (await conn.execute(LOCK_ENDED_SESSIONS_SQL, {
                "after": after, "days": policy.checkpoints_days, "keep": keep, "limit": limit})).fetchall()]
            if ids:
                idle = [r["id"] for r in await (await conn.execute(STILL_IDLE_SQL, (ids,))).fetchall()]
                threads = [checkpoint_thread_id(org_id, s) for s in idle]
                if keep:
                    await prune_to_latest(conn, threads, removed)
                else:
                    await delete_checkpoints(conn, threads, removed)
        if len(ids) < limit:
            return
        after = ids[-1]


async def events_horizon(infra: Infra) -> int:
    """The longest events retention of any org, in days: how old a weekly partition of the event
    log must be before it is dropped whole. 0 (no drops) when an org keeps its events for ever or
    the operator turned drops off."""
    defaults = infra.settings.lifecycle
    if not defaults.drop_event_partitions:
        return 0
    async with lifecycle_scan_tx(infra.pool) as conn:
        stored = [r["retention"] for r in await (await conn.execute(RETENTIONS_SQL)).fetchall()]
    days = [effective(defaults, s).events_days for s in stored] or [defaults.events_days]
    return 0 if 0 in days else max(days)


async def enforce_org(infra: Infra, org_id: str, policy: Policy, events_horizon: int = 0) -> Removed:
    """Remove what the org's policy no longer keeps; what went. `events_horizon`: see
    `events_horizon` (events at it are left to the partition drop, PARTITION_LAG_DAYS)."""
    removed = Removed()
    batch = infra.settings.lifecycle.batch_rows
    if policy.events_days:
        days = policy.events_days
        if events_horizon and days >= events_horizon:
            days += PARTITION_LAG_DAYS
        await _by_ended_runs(infra, org_id, "run_events", days, removed)
    if policy.tool_calls_days:
        await _by_ended_runs(infra, org_id, "tool_calls", policy.tool_calls_days, removed)
    if policy.messages_days:
        while True:
            async with tenant_tx(infra.pool, org_id) as conn:
                count = (await conn.execute(DELETE_OLD_MESSAGES_SQL, (policy.messages_days, batch))).rowcount
            removed.add("messages", count)
            if count < batch:
                break
    await _checkpoints(infra, org_id, policy, removed)
    if policy.audit_days:
        while True:
            async with tenant_tx(infra.pool, org_id) as conn:
                row = await (await conn.execute(PRUNE_AUDIT_SQL, (policy.audit_days, batch))).fetchone()
            count = int(row["removed"]) if row else 0
            removed.add("audit_logs", count)
            if count < batch:
                break
    return removed


async def enforce(infra: Infra) -> str | None:
    """The maintenance job: first the event log's partitions that are wholly past every org's
    retention, dropped; then every org's retention, org by org, in batches. A line for the drops
    and one per org that lost something."""
    reports: list[str] = []
    horizon = await events_horizon(infra)
    dropped = await event_partitions.drop_expired(infra.pool, horizon)
    if dropped:
        reports.append(f"event partitions dropped: {len(dropped)} ({sum(d.rows for d in dropped)} rows, "
                       f"{sum(d.bytes for d in dropped)} bytes: {', '.join(d.name for d in dropped)})")
    after: str | None = None
    while True:
        async with lifecycle_scan_tx(infra.pool) as conn:
            orgs = await (await conn.execute(ORGS_SQL, {"after": after})).fetchall()
        for org in orgs:
            removed = await enforce_org(infra, org["id"], effective(infra.settings.lifecycle, org["retention"]),
                                        horizon)
            if removed.rows:
                log.info("retention removed from org %s: %s", org["id"], removed.summary())
                reports.append(f"{org['id']}: {removed.summary()}")
        if len(orgs) < 100:
            return "; ".join(reports) or None
        after = orgs[-1]["id"]

