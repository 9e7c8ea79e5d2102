"""The event log's weekly partitions (issue #23): created ahead of time by a maintenance job,
dropped whole by retention (core.retention) once every row in one is past every org's policy.

`run_events` is partitioned by range on `ts`, one partition per ISO week in UTC, named
`run_events_p<its Monday, YYYYMMDD>`, plus `run_events_default`, which takes whatever no weekly
partition covers, so an insert never fails for want of one; creating that week's partition later
moves those rows into it. Creating and dropping is DDL the application role may not run: both go
through functions the migration defines, which run as the schema's owner (core.migrations,
`_partitioned_events`), and the application role has no privilege on any partition itself (the
parent's row-level security is what applies; core.db refuses to start otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.infra import Infra
from core.tenancy import AsyncPool

log = logging.getLogger("agentos.event_partitions")

CREATE_SQL = "SELECT agentos_create_event_partitions(%s) AS created"
DROP_SQL = "SELECT dropped, row_count, byte_count FROM agentos_drop_event_partition(%s, %s)"


@dataclass(frozen=True)
class Dropped:
    """A partition retention dropped: its rows went with it, and its bytes back to the OS."""

    name: str
    rows: int
    bytes: int


async def create_ahead(infra: Infra) -> str | None:
    """The maintenance job: this week's partition and the next `event_partitions_ahead_weeks`."""
    weeks = infra.settings.lifecycle.event_partitions_ahead_weeks
    async with infra.pool.connection() as conn:
        row = await (await conn.execute(CREATE_SQL, (weeks,))).fetchone()
    created = int(row["created"]) if row else 0
    return f"created {created} event partitions" if created else None


async def drop_expired(pool: AsyncPool, events_days: int) -> list[Dropped]:
    """Drop every weekly partition whose rows are all past `events_days` (the longest events
    retention of any org; 0 drops nothing), oldest first, each in its own short transaction."""
    dropped: list[Dropped] = []
    after = ""
    while events_days > 0:
        async with pool.connection() as conn:
            row = await (await conn.execute(DROP_SQL, (events_days, after))).fetchone()
        if row is None:
            return dropped
        dropped.append(Dropped(str(row["dropped"]), int(row["row_count"]), int(row["byte_count"])))
        log.info("dropped event partition %s (%s rows, %s bytes)", row["dropped"], row["row_count"],
                 row["byte_count"])
        after = str(row["dropped"])
    return dropped
