"""Audit log: who did what to which resource, from where. The one home of audit writes (`record`)
and reads (`list_logs`).

The table is append-only for the application role (no UPDATE or DELETE privilege,
core.migrations.ensure_app_role). Where a change came from — the client's IP, user agent and
the request id — is set once per request by the API (`api.endpoint`, through `origin`), so every
writer records it without passing it down through each store function; outside a request (the
CLI, a worker) the columns stay empty.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id


@dataclass(frozen=True)
class Origin:
    """Where the request that makes a change came from."""

    ip: str | None
    user_agent: str | None
    request_id: str | None


# Set by the API for the duration of each request.
origin: ContextVar[Origin | None] = ContextVar("agentos_audit_origin", default=None)

INSERT_AUDIT_SQL = """
INSERT INTO audit_logs (id, org_id, actor, action, target_type, target_id, details, trace_id, ip, user_agent,
                        request_id)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
# The entry of a run made by a statement sent just before in the same transaction (core.store.runs
# `send_create`), sent without knowing whether the run was made: stored only if it was (its id is
# fresh, so it exists only then), naming its session and agent.
INSERT_RUN_AUDIT_SQL = """
INSERT INTO audit_logs (id, org_id, actor, action, target_type, target_id, details, trace_id, ip, user_agent,
                        request_id)
SELECT %s, agentos_current_org(), %s, %s, 'run', r.id, jsonb_build_object('session_id', r.session_id,
       'agent_id', r.agent_id), r.trace_id, %s, %s, %s
FROM runs r WHERE r.id = %s
"""
COLUMNS = "id, actor, action, target_type, target_id, details, ip, user_agent, request_id, trace_id, created_at"
LIST_SQL = f"""
SELECT {COLUMNS} FROM audit_logs
WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s)
  AND (%(actor)s::text IS NULL OR actor = %(actor)s)
  AND (%(action)s::text IS NULL OR action = %(action)s OR (right(%(action)s, 2) = '.*'
       AND starts_with(action, left(%(action)s, -1))))
  AND (%(target_type)s::text IS NULL OR target_type = %(target_type)s)
  AND (%(target_id)s::text IS NULL OR target_id = %(target_id)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
ORDER BY id DESC LIMIT %(limit)s
"""


class AuditRow(TypedDict):
    id: str
    actor: str
    action: str
    target_type: str
    target_id: str | None
    details: dict[str, Any]
    ip: str | None
    user_agent: str | None
    request_id: str | None
    trace_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class Filters:
    """What `list_logs` narrows to; None: any. `action` ending in `.*` matches a prefix
    (`agent.*`); `since` is inclusive, `until` exclusive."""

    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def record(
    conn: AsyncConnection[DictRow],
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    details: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> None:
    """Append one entry, in the caller's transaction (so it exists exactly when the change does)."""
    where = origin.get() or Origin(None, None, None)
    await conn.execute(
        INSERT_AUDIT_SQL,
        (new_id("audit"), actor, action, target_type, target_id, Jsonb(details or {}), trace_id, where.ip,
         where.user_agent, where.request_id),
    )


async def record_if_run_made(conn: AsyncConnection[DictRow], actor: str, action: str, run_id: str) -> None:
    """`record` an entry about a run, if this transaction made it (`INSERT_RUN_AUDIT_SQL`): needs
    no answer, so in pipeline mode it travels with the statements around it."""
    where = origin.get() or Origin(None, None, None)
    await conn.execute(INSERT_RUN_AUDIT_SQL, (new_id("audit"), actor, action, where.ip, where.user_agent,
                                              where.request_id, run_id))


async def list_logs(conn: AsyncConnection[DictRow], filters: Filters, cursor: str | None, limit: int) -> list[AuditRow]:
    """Newest first, `limit + 1` rows (core.pagination.page splits off the extra)."""
    params = {"cursor": cursor, "limit": limit + 1, "actor": filters.actor, "action": filters.action,
              "target_type": filters.target_type, "target_id": filters.target_id, "since": filters.since,
              "until": filters.until}
    return cast(list[AuditRow], await (await conn.execute(LIST_SQL, params)).fetchall())


def to_public(row: AuditRow) -> dict[str, Any]:
    return {"id": row["id"], "actor": row["actor"], "action": row["action"],
            "resource_type": row["target_type"], "resource_id": row["target_id"], "details": row["details"],
            "ip": row["ip"], "user_agent": row["user_agent"], "request_id": row["request_id"],
            "trace_id": row["trace_id"], "created_at": row["created_at"]}
