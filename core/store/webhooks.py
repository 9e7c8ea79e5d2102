"""Webhooks, their deliveries and attempts as stored. Secrets are not here: they live in the
org secrets store under `secret_name(id)` (core.secrets)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.ids import new_id

DeliveryStatus = Literal["pending", "delivered", "failed"]


def secret_name(webhook_id: str, *, previous: bool = False) -> str:
    """The org secret holding a webhook's signing secret (or the one before its last rotation)."""
    return f"webhook.{webhook_id}.previous" if previous else f"webhook.{webhook_id}"


class WebhookRow(TypedDict):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_until: datetime | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class AttemptRow(TypedDict):
    attempt: int
    status: int | None
    error: str | None
    duration_ms: int
    at: datetime


class DeliveryRow(TypedDict):
    id: str
    webhook_id: str
    event_type: str
    session_id: str
    seq: int
    run_id: str | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class Claimed(TypedDict):
    """A delivery an attempt now holds, with what the attempt needs."""

    id: str
    webhook_id: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    url: str
    enabled: bool
    previous_valid: bool


COLUMNS = ("id, url, events, description, enabled, disabled_reason, failing_since, previous_secret_until, "
           "created_by, created_at, updated_at")
DELIVERY_COLUMNS = ("id, webhook_id, event_type, session_id, seq, run_id, status, attempts, next_attempt_at, "
                    "last_status, last_error, delivered_at, created_at")

INSERT_SQL = f"""
INSERT INTO webhooks (id, org_id, url, events, description, created_by)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s) RETURNING {COLUMNS}
"""
COUNT_SQL = "SELECT count(*) AS n FROM webhooks"
GET_SQL = f"SELECT {COLUMNS} FROM webhooks WHERE id = %s"
LIST_SQL = f"""
SELECT {COLUMNS} FROM webhooks WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s) ORDER BY id DESC LIMIT %(limit)s
"""
# Re-enabling forgets the failures that disabled it: the next failure starts a new count.
UPDATE_SQL = f"""
UPDATE webhooks SET url = coalesce(%(url)s, url), events = coalesce(%(events)s, events),
    description = coalesce(%(description)s, description),
    enabled = coalesce(%(enabled)s, enabled),
    disabled_reason = CASE WHEN %(enabled)s THEN NULL
                           WHEN NOT %(enabled)s AND enabled THEN 'disabled by an admin' ELSE disabled_reason END,
    failing_since = CASE WHEN %(enabled)s AND NOT enabled THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = %(id)s RETURNING {COLUMNS}
"""
DELETE_SQL = "DELETE FROM webhooks WHERE id = %s RETURNING id"
ROTATED_SQL = f"""
UPDATE webhooks SET previous_secret_until = %s, updated_at = now() WHERE id = %s RETURNING {COLUMNS}
"""

# One delivery per enabled webhook of the org subscribed to each event, in the transaction that
# stores the event (so no committed event misses its deliveries). The id is derived from
# (webhook, session, seq): the same event can never get a second webhook-id.
ENQUEUE_SQL = """
INSERT INTO webhook_deliveries (id, org_id, webhook_id, event_type, session_id, seq, run_id, payload)
SELECT 'whd_' || left(encode(sha256(convert_to(w.id || ':' || e.session_id || ':' || e.seq, 'UTF8')), 'hex'), 28),
       agentos_current_org(), w.id, e.type, e.session_id, e.seq, e.run_id, e.payload::jsonb
FROM unnest(%(sessions)s::text[], %(seqs)s::bigint[], %(runs)s::text[], %(types)s::text[], %(payloads)s::text[])
     AS e(session_id, seq, run_id, type, payload)
JOIN webhooks w ON w.enabled AND e.type = ANY(w.events)
ON CONFLICT (webhook_id, session_id, seq) DO NOTHING
RETURNING id
"""


def delivery_id(webhook_id: str, session_id: str, seq: int) -> str:
    """The id `ENQUEUE_SQL` gives the delivery of event `seq` of a session to a webhook (for
    `core.events.append_numbered`, which stores deliveries under ids made here)."""
    return "whd_" + hashlib.sha256(f"{webhook_id}:{session_id}:{seq}".encode()).hexdigest()[:28]


CLAIM_SQL = """
UPDATE webhook_deliveries d SET attempts = d.attempts + 1, leased_until = now() + %(lease)s
FROM webhooks w
WHERE d.id = %(id)s AND w.id = d.webhook_id AND d.status = 'pending' AND d.next_attempt_at <= now()
  AND (d.leased_until IS NULL OR d.leased_until < now())
RETURNING d.id, d.webhook_id, d.payload, d.attempts, d.created_at, w.url, w.enabled,
          coalesce(w.previous_secret_until > now(), false) AS previous_valid
"""
INSERT_ATTEMPT_SQL = """
INSERT INTO webhook_attempts (org_id, delivery_id, attempt, status, error, duration_ms)
VALUES (agentos_current_org(), %s, %s, %s, %s, %s)
"""
DELIVERED_SQL = """
UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(), leased_until = NULL,
    last_status = %s, last_error = NULL WHERE id = %s
"""
RETRY_LATER_SQL = """
UPDATE webhook_deliveries SET next_attempt_at = now() + %s, leased_until = NULL, last_status = %s, last_error = %s
WHERE id = %s
"""
GIVE_UP_SQL = """
UPDATE webhook_deliveries SET status = 'failed', leased_until = NULL, last_status = %s, last_error = %s WHERE id = %s
"""
WEBHOOK_OK_SQL = "UPDATE webhooks SET failing_since = NULL WHERE id = %s AND failing_since IS NOT NULL"
# Whether the webhook has now failed for longer than allowed (and is still enabled).
WEBHOOK_FAILED_SQL = """
UPDATE webhooks SET failing_since = coalesce(failing_since, now()) WHERE id = %s
RETURNING enabled AND failing_since < now() - %s AS overdue, failing_since
"""
DISABLE_SQL = """
UPDATE webhooks SET enabled = false, disabled_reason = %s, updated_at = now() WHERE id = %s AND enabled
RETURNING id
"""
ABANDON_PENDING_SQL = """
UPDATE webhook_deliveries SET status = 'failed', leased_until = NULL, last_error = %s
WHERE webhook_id = %s AND status = 'pending'
"""

LIST_DELIVERIES_SQL = f"""
SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
WHERE webhook_id = %(webhook)s
  AND (%(cursor)s::text IS NULL
       OR (created_at, id) < (SELECT created_at, id FROM webhook_deliveries WHERE id = %(cursor)s))
  AND (%(status)s::text IS NULL OR status = %(status)s)
ORDER BY created_at DESC, id DESC LIMIT %(limit)s
"""
ATTEMPTS_SQL = """
SELECT delivery_id, attempt, status, error, duration_ms, at FROM webhook_attempts
WHERE delivery_id = ANY(%s) ORDER BY delivery_id, attempt
"""
# A retry asked for by a human: the same webhook-id, at once, whatever the delivery's state.
RETRY_NOW_SQL = f"""
UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), leased_until = NULL
WHERE id = %s AND webhook_id = %s RETURNING {DELIVERY_COLUMNS}
"""
# The watchdog's scan (watchdog_scan_tx): pending deliveries due for a while, their message
# presumably lost or their wait too long for a countdown.
SCAN_DUE_SQL = """
SELECT id, org_id, attempts FROM webhook_deliveries
WHERE status = 'pending' AND next_attempt_at < now() - %(after)s AND (leased_until IS NULL OR leased_until < now())
ORDER BY next_attempt_at LIMIT %(limit)s
"""


async def create(conn: AsyncConnection[DictRow], url: str, events: list[str], description: str,
                 created_by: str | None) -> WebhookRow:
    row = await (await conn.execute(INSERT_SQL, (new_id("webhook"), url, events, description, created_by))).fetchone()
    assert row is not None
    return cast(WebhookRow, row)


async def count(conn: AsyncConnection[DictRow]) -> int:
    row = await (await conn.execute(COUNT_SQL)).fetchone()
    return int(row["n"]) if row else 0


async def get(conn: AsyncConnection[DictRow], webhook_id: str) -> WebhookRow | None:
    return cast(WebhookRow | None, await (await conn.execute(GET_SQL, (webhook_id,))).fetchone())


async def list_webhooks(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[WebhookRow]:
    cur = await conn.execute(LIST_SQL, {"cursor": cursor, "limit": limit + 1})
    return cast(list[WebhookRow], await cur.fetchall())


async def update(conn: AsyncConnection[DictRow], webhook_id: str, *, url: str | None = None,
                 events: list[str] | None = None, description: str | None = None,
                 enabled: bool | None = None) -> WebhookRow | None:
    cur = await conn.execute(UPDATE_SQL, {"id": webhook_id, "url": url, "events": events,
                                          "description": description, "enabled": enabled})
    return cast(WebhookRow | None, await cur.fetchone())


async def delete(conn: AsyncConnection[DictRow], webhook_id: str) -> bool:
    return await (await conn.execute(DELETE_SQL, (webhook_id,))).fetchone() is not None


async def rotated(conn: AsyncConnection[DictRow], webhook_id: str,
                  previous_until: datetime | None) -> WebhookRow | None:
    return cast(WebhookRow | None, await (await conn.execute(ROTATED_SQL, (previous_until, webhook_id))).fetchone())


async def enqueue(conn: AsyncConnection[DictRow], events: list[tuple[str, int, str, str, str]]) -> list[str]:
    """Deliveries for events `(session_id, seq, run_id, type, payload JSON)` to every enabled
    webhook of the org subscribed to their type; returns the ids of those stored, which the
    caller announces after its commit (no read-back: that was a transaction per run ending)."""
    if not events:
        return []
    sessions, seqs, runs, types, payloads = (list(column) for column in zip(*events, strict=True))
    cur = await conn.execute(ENQUEUE_SQL, {"sessions": sessions, "seqs": seqs, "runs": runs, "types": types,
                                           "payloads": payloads})
    return [str(r["id"]) for r in await cur.fetchall()]


async def claim(conn: AsyncConnection[DictRow], delivery_id: str, lease: timedelta) -> Claimed | None:
    row = await (await conn.execute(CLAIM_SQL, {"id": delivery_id, "lease": lease})).fetchone()
    return cast(Claimed | None, row)


async def record_attempt(conn: AsyncConnection[DictRow], delivery_id: str, attempt: int, status: int | None,
                         error: str | None, duration_ms: int) -> None:
    await conn.execute(INSERT_ATTEMPT_SQL, (delivery_id, attempt, status, error, duration_ms))


async def delivered(conn: AsyncConnection[DictRow], delivery_id: str, webhook_id: str, status: int) -> None:
    await conn.execute(DELIVERED_SQL, (status, delivery_id))
    await conn.execute(WEBHOOK_OK_SQL, (webhook_id,))


async def retry_later(conn: AsyncConnection[DictRow], delivery_id: str, wait: timedelta, status: int | None,
                      error: str) -> None:
    await conn.execute(RETRY_LATER_SQL, (wait, status, error, delivery_id))


async def give_up(conn: AsyncConnection[DictRow], delivery_id: str, status: int | None, error: str) -> None:
    await conn.execute(GIVE_UP_SQL, (status, error, delivery_id))


async def failed(conn: AsyncConnection[DictRow], webhook_id: str, disable_after: timedelta) -> datetime | None:
    """Count a failure against the webhook; the time it has been failing since, if that is now
    longer than `disable_after` (the caller disables it), else None."""
    row = await (await conn.execute(WEBHOOK_FAILED_SQL, (webhook_id, disable_after))).fetchone()
    return cast(datetime, row["failing_since"]) if row and row["overdue"] else None


async def disable(conn: AsyncConnection[DictRow], webhook_id: str, reason: str) -> bool:
    """Disable the webhook and give up its pending deliveries; False if it was not enabled."""
    if await (await conn.execute(DISABLE_SQL, (reason, webhook_id))).fetchone() is None:
        return False
    await conn.execute(ABANDON_PENDING_SQL, (f"the webhook was disabled: {reason}", webhook_id))
    return True


async def list_deliveries(conn: AsyncConnection[DictRow], webhook_id: str, cursor: str | None, limit: int,
                          status: str | None) -> list[dict[str, Any]]:
    """A page of the webhook's deliveries (newest first, after the delivery `cursor`), each with
    its attempts."""
    cur = await conn.execute(LIST_DELIVERIES_SQL, {"webhook": webhook_id, "cursor": cursor, "limit": limit + 1,
                                                   "status": status})
    rows = [dict(r) for r in await cur.fetchall()]
    attempts: dict[str, list[AttemptRow]] = {r["id"]: [] for r in rows}
    if rows:
        for a in await (await conn.execute(ATTEMPTS_SQL, (list(attempts),))).fetchall():
            attempts[a.pop("delivery_id")].append(cast(AttemptRow, a))
    return [{**r, "attempt_log": attempts[r["id"]]} for r in rows]


async def retry_now(conn: AsyncConnection[DictRow], webhook_id: str, delivery_id: str) -> DeliveryRow | None:
    return cast(DeliveryRow | None, await (await conn.execute(RETRY_NOW_SQL, (delivery_id, webhook_id))).fetchone())


async def scan_due(conn: AsyncConnection[DictRow], after: timedelta, limit: int) -> list[dict[str, Any]]:
    cur = await conn.execute(SCAN_DUE_SQL, {"after": after, "limit": limit})
    return [dict(r) for r in await cur.fetchall()]
