"""The `data_query` skill: read-only SQL over an org's registered Postgres data sources, and over
CSV or Parquet files in the session's workspace (DuckDB, in memory).

Postgres: the URL comes from the org's secret; the host goes through the outbound address guard
(so internal addresses need the org's `outbound_allow`) and the connection goes to the checked
address; the query runs as one statement (extended protocol: no `COMMIT; ...` chains) in a READ
ONLY transaction that is rolled back, under `statement_timeout`, and a database holding AgentOS's
own tables is refused. Files: DuckDB with external access off except for that one file, no
extension loading, configuration locked, interrupted at the time limit."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field

from core.data_sources import PLATFORM_MARKER_SQL, NotASource, PostgresSource, check_source_url
from core.outbound import AddressGuard, OutboundError
from core.store import data_sources
from core.tenancy import tenant_tx
from skills.builtin.file_manager import resolve_in_workspace
from skills.skill import SkillContext, SkillError, skill

MAX_ROWS = 1000  # what one call may return at most, whatever the source allows
FILE_TIMEOUT_S = 10.0
FILE_MEMORY_LIMIT = "256MB"
CONNECT_TIMEOUT_S = 5
FILE_SUFFIXES = {".csv": "read_csv", ".parquet": "read_parquet"}

DESCRIPTION = (
    "Run one read-only SQL query and get a small table back ({columns, rows, truncated}). "
    "`source` is either the name of a data source registered for this organisation (a Postgres "
    "database; use its tables as usual) or a .csv or .parquet file in the session workspace "
    "(e.g. 'sales.csv'), which the query reads as the table `data` (DuckDB SQL). "
    "Writes are refused; at most `max_rows` rows come back."
)


@skill(name="data_query", description=DESCRIPTION)
async def data_query(
    ctx: SkillContext,
    source: Annotated[str, Field(description="A data source name, or a .csv/.parquet file in the workspace.",
                                 min_length=1, max_length=500)],
    sql: Annotated[str, Field(description="One SQL query (SELECT ...).", min_length=1, max_length=20_000)],
    max_rows: Annotated[int, Field(description="How many rows at most.", ge=1, le=MAX_ROWS)] = 100,
) -> dict[str, Any]:
    if Path(source).suffix.lower() in FILE_SUFFIXES:
        return await _query_file(ctx.workspace, source, sql, max_rows)
    return await _query_postgres(ctx, source, sql, max_rows)


def _cell(value: Any) -> Any:
    """A JSON value for one result cell."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, (decimal.Decimal, uuid.UUID, dt.date, dt.time, dt.timedelta)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (list, tuple)):
        return [_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _cell(v) for k, v in value.items()}
    return str(value)


def _table(columns: list[str], rows: list[Any], cap: int) -> dict[str, Any]:
    return {"columns": columns, "rows": [[_cell(v) for v in row] for row in rows[:cap]],
            "truncated": len(rows) > cap}


# --- Postgres -----------------------------------------------------------------------------------


async def _query_postgres(ctx: SkillContext, name: str, sql: str, max_rows: int) -> dict[str, Any]:
    infra = ctx.require_infra()
    async with tenant_tx(infra.pool, ctx.org_id) as conn:
        row = await data_sources.get(conn, name)
    if row is None:
        raise SkillError(f"There is no data source named {name!r}, and it is not a .csv or .parquet file name.")
    spec = PostgresSource.model_validate(row["config"])
    url = await ctx.secret(spec.url.secret)
    try:
        check_source_url(url, infra.settings.database.url)
        params = conninfo_to_dict(url)
    except (NotASource, psycopg.ProgrammingError) as exc:
        raise SkillError(f"The data source {name!r} cannot be used: {exc}.") from None
    host, port = str(params.get("host") or params.get("hostaddr")), int(params.get("port") or 5432)
    org_allow = (await ctx.org_settings()).get("outbound_allow") or []
    guard = AddressGuard.from_settings(infra.settings.outbound,
                                       allow=[str(a) for a in org_allow] if isinstance(org_allow, list) else [])
    try:
        address = (await guard.resolve(host, port))[0]
    except OutboundError as exc:
        raise SkillError(f"The data source {name!r} cannot be reached: {exc}") from None
    cap = min(max_rows, spec.max_rows)
    timeout_ms = spec.statement_timeout_ms
    conninfo = source_conninfo(params, address, timeout_ms)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S + timeout_ms / 1000 + 5):
            return await _run_read_only(conninfo, name, sql, cap, timeout_ms)
    except TimeoutError:
        raise SkillError(f"The data source {name!r} did not answer in time.") from None
    except psycopg.errors.QueryCanceled:
        raise SkillError(f"The query ran longer than the data source's limit of {timeout_ms} ms and was "
                         "cancelled; narrow it down.") from None
    except psycopg.errors.ReadOnlySqlTransaction:
        raise SkillError("The query tried to change data; data_query is read-only. Use SELECT.") from None
    except psycopg.OperationalError as exc:
        raise SkillError(f"Could not connect to the data source {name!r} ({_first_line(exc)}).") from None
    except psycopg.Error as exc:
        raise SkillError(f"The query failed: {_first_line(exc)}") from None


# What a tenant's URL may set. Everything else (service, passfile, ssl key and certificate files,
# options, ...) would make libpq read the worker's files or change the session's rules.
URL_PARAMS = frozenset({"host", "port", "dbname", "user", "password", "sslmode", "application_name"})


def source_conninfo(params: dict[str, Any], address: str, timeout_ms: int) -> str:
    """The connection string for a source: the URL's allowed parameters, the checked address (so
    a second lookup cannot lead elsewhere; the host name stays for TLS), a password always given
    (an empty one rather than the worker's PGPASSWORD or ~/.pgpass) and read-only session rules."""
    kept = {k: v for k, v in params.items() if k in URL_PARAMS}
    return make_conninfo(**kept, hostaddr=address, connect_timeout=CONNECT_TIMEOUT_S, passfile=os.devnull,
                         password=str(kept.get("password") or ""),
                         options=f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def _run_read_only(conninfo: str, name: str, sql: str, cap: int, timeout_ms: int) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        if await (await conn.execute(PLATFORM_MARKER_SQL)).fetchone() is not None:
            raise SkillError(f"The data source {name!r} is an AgentOS platform database; it cannot be queried.")
        async with conn.transaction(force_rollback=True):
            await conn.execute("SET TRANSACTION READ ONLY")
            await conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{timeout_ms}ms",))
            # prepare=True: the extended protocol, which takes exactly one statement.
            cursor = await conn.execute(sql, prepare=True)
            if cursor.description is None:
                return {"columns": [], "rows": [], "truncated": False}
            columns = [c.name for c in cursor.description]
            rows = await cursor.fetchmany(cap + 1)
    return _table(columns, list(rows), cap)


# --- files --------------------------------------------------------------------------------------


async def _query_file(workspace: Path, source: str, sql: str, max_rows: int) -> dict[str, Any]:
    target, shown = await asyncio.to_thread(resolve_in_workspace, workspace, source)
    if not target.is_file():
        raise SkillError(f"{shown!r} is not a file in the session workspace.")
    return await asyncio.to_thread(_duckdb_query, target, shown, sql, max_rows)


def _duckdb_query(path: Path, shown: str, sql: str, cap: int) -> dict[str, Any]:
    import duckdb  # only workers that query files load it

    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False, "threads": 1,
                                             "memory_limit": FILE_MEMORY_LIMIT})
    timer = threading.Timer(FILE_TIMEOUT_S, con.interrupt)
    try:
        # The one file is allowed before external access goes off; then nothing can be changed.
        con.execute("SET allowed_paths = $paths", {"paths": [str(path)]})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        reader = FILE_SUFFIXES[path.suffix.lower()]
        try:
            # A view cannot take a parameter: the path goes in as a quoted SQL string.
            literal = "'" + str(path).replace("'", "''") + "'"
            con.execute(f"CREATE VIEW data AS SELECT * FROM {reader}({literal})")
        except duckdb.Error as exc:
            raise SkillError(f"{shown!r} cannot be read as {path.suffix.lower()[1:].upper()}: "
                             f"{_first_line(exc)}") from None
        timer.start()
        try:
            result = con.execute(sql)
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(cap + 1) if columns else []
        except duckdb.InterruptException:
            raise SkillError(f"The query ran longer than {FILE_TIMEOUT_S:g} s and was stopped; "
                             "narrow it down.") from None
        except duckdb.Error as exc:
            # Paths relative to the workspace, as the model knows them (not where the worker keeps it).
            raise SkillError(f"The query failed: {_first_line(exc).replace(str(path.parent) + '/', '')}") from None
        return _table(columns, rows, cap)
    finally:
        timer.cancel()
        con.close()
