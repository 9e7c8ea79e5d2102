"""End-user erasure (a privacy request): one end user's data removed across the org.

An end user is the `user_id` a session belongs to (the integrating app's user, by default the
JWT subject). Erasing it removes, in batches of sessions: their active runs (cancelled first),
the sessions with everything that cascades from them (runs, messages, run events, tool calls,
attachments), their checkpoint threads, their webhook deliveries (which copy run events), their
Redis keys (event stream, window), the memories of those sessions and the files only they used or the user uploaded.
The user's own memories (scope `user`) are removed by the caller through memory.long_term and
memory.redis_store (core does not depend on memory).

The audit log keeps the fact of the erasure (who asked, when, how much went) but not whose data
it was in clear: the entry names the end user by a SHA-256 digest, so a later request about
the same user can still be matched to it.
"""

from __future__ import annotations

import hashlib

from core.admission import release_runs
from core.events import RUN_CANCELLED
from core.file_storage import FileStorage
from core.infra import Infra
from core.run_signals import flag_cancel, publish
from core.store import runs
from core.tenancy import checkpoint_thread_id, session_stream_key, session_window_key, tenant_tx
from core.tenant_data import Removed, delete_checkpoints

SESSIONS_SQL = """
SELECT id FROM sessions WHERE org_id = agentos_current_org() AND user_id = %s ORDER BY id
"""
# Counted before the cascade takes them, for the report.
COUNTS_SQL = """
SELECT (SELECT count(*) FROM runs WHERE session_id = ANY(%(ids)s)) AS runs,
       (SELECT count(*) FROM messages WHERE session_id = ANY(%(ids)s)) AS messages,
       (SELECT count(*) FROM run_events WHERE session_id = ANY(%(ids)s)) AS run_events,
       (SELECT count(*) FROM tool_calls WHERE session_id = ANY(%(ids)s)) AS tool_calls
"""
# Files attached to these sessions and to no session of anyone else, or uploaded by the user.
FILES_SQL = """
SELECT f.id, f.storage_key FROM files f
WHERE f.org_id = agentos_current_org()
  AND (f.created_by = %(user)s
       OR (EXISTS (SELECT 1 FROM session_files a WHERE a.file_id = f.id AND a.session_id = ANY(%(ids)s))
           AND NOT EXISTS (SELECT 1 FROM session_files a JOIN sessions s ON s.id = a.session_id
                           WHERE a.file_id = f.id AND s.user_id IS DISTINCT FROM %(user)s)))
"""
DELETE_FILES_SQL = "DELETE FROM files WHERE id = ANY(%s)"
DELETE_DELIVERIES_SQL = "DELETE FROM webhook_deliveries WHERE session_id = ANY(%s)"
DELETE_SESSION_MEMORIES_SQL = "DELETE FROM memories WHERE session_id = ANY(%s)"
DELETE_SESSIONS_SQL = "DELETE FROM sessions WHERE id = ANY(%s)"
ACTIVE_SQL = "SELECT DISTINCT session_id FROM runs WHERE session_id = ANY(%s) AND status IN ('queued', 'running', " \
             "'awaiting_confirmation')"


def subject_digest(user_id: str) -> str:
    """How the audit log names an erased end user."""
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()


async def _stop_runs(infra: Infra, org_id: str, session_ids: list[str]) -> None:
    async with tenant_tx(infra.pool, org_id) as conn:
        active = [r["session_id"] for r in await (await conn.execute(ACTIVE_SQL, (session_ids,))).fetchall()]
    for session_id in active:
        async with tenant_tx(infra.pool, org_id) as conn:
            await runs.lock_any_session(conn, session_id)
            cancelled, running = await runs.cancel_all(conn, session_id)
        await release_runs(infra.redis, org_id, [e.run_id for e in cancelled if e.type == RUN_CANCELLED])
        await publish(infra, org_id, cancelled)
        await flag_cancel(infra, org_id, running)


async def erase_sessions(infra: Infra, storage: FileStorage, org_id: str, user_id: str) -> Removed:
    """Remove the end user's sessions and what hangs off them (see the module's docstring)."""
    batch = infra.settings.lifecycle.batch_rows
    removed = Removed()
    async with tenant_tx(infra.pool, org_id) as conn:
        every = [r["id"] for r in await (await conn.execute(SESSIONS_SQL, (user_id,))).fetchall()]
    # Files are chosen while the attachments still say whose sessions used them.
    async with tenant_tx(infra.pool, org_id) as conn:
        files = await (await conn.execute(FILES_SQL, {"user": user_id, "ids": every})).fetchall()
    await _stop_runs(infra, org_id, every)
    for start in range(0, len(every), batch):
        ids = every[start:start + batch]
        async with tenant_tx(infra.pool, org_id) as conn:
            counts = await (await conn.execute(COUNTS_SQL, {"ids": ids})).fetchone()
            for table, count in (counts or {}).items():
                removed.add(table, int(count))
            await delete_checkpoints(conn, [checkpoint_thread_id(org_id, s) for s in ids], removed)
            removed.add("webhook_deliveries", (await conn.execute(DELETE_DELIVERIES_SQL, (ids,))).rowcount)
            removed.add("memories", (await conn.execute(DELETE_SESSION_MEMORIES_SQL, (ids,))).rowcount)
            removed.add("sessions", (await conn.execute(DELETE_SESSIONS_SQL, (ids,))).rowcount)
        keys = [key for s in ids for key in (session_stream_key(org_id, s), session_window_key(org_id, s))]
        removed.redis_keys += int(await infra.redis.unlink(*keys))
    if files:
        async with tenant_tx(infra.pool, org_id) as conn:
            removed.add("files", (await conn.execute(DELETE_FILES_SQL, ([f["id"] for f in files],))).rowcount)
        for f in files:
            await storage.delete(f["storage_key"])
        removed.files = len(files)
    return removed
