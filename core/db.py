"""Connection pools. Every pooled connection switches to the application role, so row-level
security applies to everything that goes through a pool; tenant work then goes through
`core.tenancy`, which sets the org for one transaction.
"""

from __future__ import annotations

import time
import weakref

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from core.migrations import TENANT_TABLES
from core.settings import DatabaseSettings


class TenantIsolationError(RuntimeError):
    """The database would not isolate tenants; the process must not serve."""


def _connect_kwargs(db: DatabaseSettings) -> dict[str, object]:
    options = f"-c statement_timeout={db.statement_timeout_ms} -c TimeZone=UTC"
    return {
        "row_factory": dict_row,
        "connect_timeout": max(1, int(db.connect_timeout_s)),
        "options": options,
        "application_name": "agentos",
    }


def _set_role_sql(role: str) -> sql.Composed:
    return sql.SQL("SET ROLE {}").format(sql.Identifier(role))


# After a Postgres restart every idle connection is dead, so one that sat in the pool is pinged
# before it is handed out. One returned (or opened) moments ago is not: on a busy pool that ping
# would be a round trip per transaction (and a connection that breaks anyway fails as an
# infrastructure error, which callers retry).
IDLE_BEFORE_CHECK_S = 2.0
_returned_at: weakref.WeakKeyDictionary[AsyncConnection[DictRow], float] = weakref.WeakKeyDictionary()


async def _note_returned(conn: AsyncConnection[DictRow]) -> None:
    _returned_at[conn] = time.monotonic()


async def _check_if_idle(conn: AsyncConnection[DictRow]) -> None:
    returned = _returned_at.get(conn)
    if returned is None or time.monotonic() - returned >= IDLE_BEFORE_CHECK_S:
        await AsyncConnectionPool.check_connection(conn)


async def open_pool(
    db: DatabaseSettings, *, name: str = "agentos", autocommit: bool = False, max_size: int | None = None
) -> AsyncConnectionPool[AsyncConnection[DictRow]]:
    """Open an async pool whose connections act as the application role. `autocommit` pools
    (no prepared statements) are what LangGraph's checkpoint saver expects."""
    kwargs = _connect_kwargs(db)
    if autocommit:
        kwargs.update(autocommit=True, prepare_threshold=0)

    async def configure(conn: AsyncConnection[DictRow]) -> None:
        await conn.execute(_set_role_sql(db.app_role))
        await conn.commit()
        # Just opened: as fresh as one just returned, so its first use pays no ping (a pool that
        # grew under load paid one per new connection, on the next transaction's path).
        await _note_returned(conn)

    pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
        db.url,
        kwargs=kwargs,
        min_size=min(db.pool_min, max_size or db.pool_max),
        max_size=max_size or db.pool_max,
        configure=configure,
        check=_check_if_idle,
        reset=_note_returned,
        open=False,
        timeout=db.connect_timeout_s,
        name=name,
    )
    await pool.open(wait=db.pool_min > 0, timeout=db.connect_timeout_s * 2)
    return pool


CHECK_ROLE_SQL = """
SELECT current_user AS role, r.rolsuper, r.rolbypassrls
FROM pg_roles r WHERE r.rolname = current_user
"""

# A tenant table is a plain table ('r') or a partitioned one ('p', e.g. run_events), whose
# policies apply to every query through it, partitions included.
CHECK_TABLES_SQL = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_get_userbyid(c.relowner) = current_user AS owned
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""
# A partition read directly would skip its parent's policies: the role must have no privilege on
# any partition of a tenant table (they are reached only through the parent).
CHECK_PARTITIONS_SQL = """
SELECT parent.relname AS parent, c.relname AS partition
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class parent ON parent.oid = i.inhparent
JOIN pg_namespace n ON n.oid = parent.relnamespace
WHERE n.nspname = current_schema() AND parent.relname = ANY(%s)
  AND (pg_get_userbyid(c.relowner) = current_user
       OR has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE'))
ORDER BY 1, 2
"""


async def isolation_problems(conn: AsyncConnection[DictRow]) -> list[str]:
    """What would let one tenant see another's rows, as seen from `conn`'s current role."""
    role = await (await conn.execute(CHECK_ROLE_SQL)).fetchone()
    rows = await (await conn.execute(CHECK_TABLES_SQL, (list(TENANT_TABLES),))).fetchall()
    problems: list[str] = []
    if role is None:
        problems.append("cannot read the current role")
    elif role["rolsuper"] or role["rolbypassrls"]:
        problems.append(f"role {role['role']!r} is superuser or BYPASSRLS")
    found = {r["relname"]: r for r in rows}
    for table in TENANT_TABLES:
        info = found.get(table)
        if info is None:
            problems.append(f"table {table} is missing (run `agentos migrate`)")
        elif not (info["relrowsecurity"] and info["relforcerowsecurity"]):
            problems.append(f"table {table} does not ENABLE and FORCE row-level security")
        elif info["owned"]:
            problems.append(f"role {role['role'] if role else '?'} owns table {table}")
    for r in await (await conn.execute(CHECK_PARTITIONS_SQL, (list(TENANT_TABLES),))).fetchall():
        problems.append(f"partition {r['partition']} of table {r['parent']} can be used directly "
                        f"by role {role['role'] if role else '?'}")
    return problems


async def check_tenant_isolation(pool: AsyncConnectionPool[AsyncConnection[DictRow]]) -> None:
    """Refuse to serve unless the pooled role is subject to RLS and every tenant table FORCEs it."""
    async with pool.connection() as conn:
        problems = await isolation_problems(conn)
    if problems:
        raise TenantIsolationError("tenant isolation check failed: " + "; ".join(problems))
