"""Org deletion: asked for by the org's owner, restorable during a grace period, then purged.

`request` marks the org (from then on admission refuses its new runs) and cancels its active
runs; `restore` clears the mark while the grace period lasts. Once `purge_after` has passed,
the maintenance job (`purge_due`, in runtime.maintenance.JOBS) removes everything the org owns:
its sessions with their runs, events, messages and checkpoints, then every other table with an
`org_id` column (core.tenant_data finds them), its stored files, its sandbox workspaces, its Redis keys,
and the org row itself (whose cascade takes the append-only audit log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from core.admission import release_runs
from core.auth_cache import publish_invalidation
from core.events import RUN_CANCELLED
from core.file_storage import FileStorage, open_storage
from core.infra import Infra
from core.run_signals import flag_cancel, publish
from core.settings import SandboxSettings
from core.store import audit, runs
from core.tenancy import (
    AsyncPool,
    checkpoint_thread_id,
    checkpoint_thread_prefix,
    lifecycle_scan_tx,
    org_key_pattern,
    tenant_tx,
)
from core.tenant_data import (
    Removed,
    delete_checkpoint_prefix,
    delete_checkpoints,
    delete_in_batches,
    tenant_tables,
    unlink_matching,
)

log = logging.getLogger("agentos.lifecycle")

REQUEST_SQL = """
UPDATE orgs SET deletion_requested_at = now(), purge_after = now() + make_interval(secs => %s)
WHERE id = agentos_current_org() AND deletion_requested_at IS NULL
RETURNING id, name, deletion_requested_at, purge_after
"""
RESTORE_SQL = """
UPDATE orgs SET deletion_requested_at = NULL, purge_after = NULL
WHERE id = agentos_current_org() AND deletion_requested_at IS NOT NULL AND purge_after > now()
RETURNING id, name
"""
STATE_SQL = "SELECT id, name, deletion_requested_at, purge_after FROM orgs WHERE id = agentos_current_org()"
ACTIVE_SESSIONS_SQL = """
SELECT DISTINCT session_id FROM runs
WHERE org_id = agentos_current_org() AND status IN ('queued', 'running', 'awaiting_confirmation')
"""
DUE_SQL = "SELECT id FROM orgs WHERE purge_after <= now() ORDER BY purge_after LIMIT %s"
SESSION_BATCH_SQL = "SELECT id FROM sessions WHERE org_id = agentos_current_org() LIMIT %s"
DELETE_SESSIONS_SQL = "DELETE FROM sessions WHERE id = ANY(%s)"
DELETE_ORG_SQL = "DELETE FROM orgs WHERE id = agentos_current_org()"


class NameMismatch(Exception):
    """The confirmation did not name the org."""


class AlreadyRequested(Exception):
    """The org's deletion was already asked for."""


class NotPending(Exception):
    """Nothing to restore: no deletion asked for, or its grace period is over."""


@dataclass(frozen=True)
class Deletion:
    org_id: str
    requested_at: datetime | None
    purge_after: datetime | None
    cancelled_runs: int = 0

    def public(self, status: str) -> dict[str, Any]:
        return {"org_id": self.org_id, "status": status, "requested_at": self.requested_at,
                "purge_after": self.purge_after, "cancelled_runs": self.cancelled_runs}


async def request(infra: Infra, org_id: str, *, confirm: str, actor: str) -> Deletion:
    """Mark the org for deletion after the grace period and cancel its active runs.
    NameMismatch when `confirm` is not the org's name; AlreadyRequested when it is marked."""
    grace = infra.settings.lifecycle.org_deletion_grace_s
    async with tenant_tx(infra.pool, org_id) as conn:
        state = await (await conn.execute(STATE_SQL + " FOR UPDATE")).fetchone()
        if state is None or state["name"] != confirm:
            raise NameMismatch()
        if state["deletion_requested_at"] is not None:
            raise AlreadyRequested()
        row = await (await conn.execute(REQUEST_SQL, (grace,))).fetchone()
        assert row is not None
        await audit.record(conn, actor, "org.delete", "org", org_id, {"purge_after": row["purge_after"].isoformat()})
    cancelled = await stop_runs(infra, org_id)
    return Deletion(org_id, row["deletion_requested_at"], row["purge_after"], cancelled)


async def restore(pool: AsyncPool, org_id: str, *, actor: str) -> None:
    """Clear the deletion mark while the grace period lasts; NotPending otherwise."""
    async with tenant_tx(pool, org_id) as conn:
        if await (await conn.execute(RESTORE_SQL)).fetchone() is None:
            raise NotPending()
        await audit.record(conn, actor, "org.restore", "org", org_id, {})


async def stop_runs(infra: Infra, org_id: str) -> int:
    """Cancel every active run of the org: waiting ones end now, running ones are told to stop."""
    async with tenant_tx(infra.pool, org_id) as conn:
        sessions = [r["session_id"] for r in await (await conn.execute(ACTIVE_SESSIONS_SQL)).fetchall()]
    count = 0
    for session_id in sessions:
        async with tenant_tx(infra.pool, org_id) as conn:
            if not await runs.lock_any_session(conn, session_id):
                continue
            cancelled, running = await runs.cancel_all(conn, session_id)
        ended = [e.run_id for e in cancelled if e.type == RUN_CANCELLED]
        await release_runs(infra.redis, org_id, ended)
        await publish(infra, org_id, cancelled)
        await flag_cancel(infra, org_id, running)
        count += len(ended) + len(running)
    return count


async def purge(infra: Infra, storage: FileStorage, org_id: str) -> Removed:
    """Remove everything the org owns. Safe to run again after an interruption."""
    batch = infra.settings.lifecycle.batch_rows
    removed = Removed()
    await stop_runs(infra, org_id)
    removed.files = await storage.delete_org(org_id)
    removed.workspaces = await delete_workspaces(infra.settings.sandbox, org_id)
    # Sessions first, a batch at a time: their cascades (runs, events, messages, tool calls)
    # follow indexes, and each session's checkpoint thread goes in the same transaction.
    while True:
        async with tenant_tx(infra.pool, org_id) as conn:
            ids = [r["id"] for r in await (await conn.execute(SESSION_BATCH_SQL, (batch,))).fetchall()]
            await delete_checkpoints(conn, [checkpoint_thread_id(org_id, s) for s in ids], removed)
            removed.add("sessions", (await conn.execute(DELETE_SESSIONS_SQL, (ids,))).rowcount)
        if len(ids) < batch:
            break
    async with tenant_tx(infra.pool, org_id) as conn:
        await delete_checkpoint_prefix(conn, checkpoint_thread_prefix(org_id), removed)
        tables = await tenant_tables(conn)
    for table in tables:
        if table.deletable:
            await delete_in_batches(infra.pool, org_id, table.name, batch, removed)
    async with tenant_tx(infra.pool, org_id) as conn:
        removed.add("orgs", (await conn.execute(DELETE_ORG_SQL)).rowcount)
    # After the org row: a request that slipped in meanwhile can no longer write keys for it.
    await unlink_matching(infra.redis, org_key_pattern(org_id), removed)
    # API processes trust verified keys for seconds (core.auth_cache): the org's are gone now.
    await publish_invalidation(infra.redis, org_id=org_id)
    return removed


async def delete_workspaces(settings: SandboxSettings, org_id: str) -> int:
    """Remove the org's workspaces in the sandbox service (`DELETE /workspaces/{org}`); how many.
    When the service cannot be reached they are left to expire (its `workspace_ttl_s`): a purge
    is not held up by a service that may be gone for good."""
    if not settings.url:
        return 0
    token = settings.token.get_secret_value() if settings.token else ""
    try:
        async with httpx.AsyncClient(base_url=settings.url.rstrip("/"), timeout=10.0) as http:
            answer = await http.delete(f"/workspaces/{org_id}", headers={"Authorization": f"Bearer {token}"})
        answer.raise_for_status()
        return int(answer.json().get("deleted", 0))
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("org %s: sandbox workspaces not removed (%s); they expire after the service's "
                    "workspace_ttl_s", org_id, exc)
        return 0


async def due(pool: AsyncPool, limit: int = 10) -> list[str]:
    """Orgs whose grace period is over, longest overdue first."""
    async with lifecycle_scan_tx(pool) as conn:
        return [r["id"] for r in await (await conn.execute(DUE_SQL, (limit,))).fetchall()]


async def purge_due(infra: Infra, storage: FileStorage) -> str | None:
    """The maintenance job: purge the orgs whose grace period is over; what it removed."""
    reports = []
    for org_id in await due(infra.pool):
        removed = await purge(infra, storage, org_id)
        log.info("org %s purged: %s", org_id, removed.summary())
        reports.append(f"{org_id}: {removed.summary()}")
    return "; ".join(reports) or None


async def purge_job(infra: Infra) -> str | None:
    """`purge_due` with the configured file storage (runtime.maintenance.JOBS)."""
    return await purge_due(infra, open_storage(infra.settings.files))
