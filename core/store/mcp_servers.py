"""An org's MCP servers, with the tool list last read from each."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id


class McpServerRow(TypedDict):
    id: str
    name: str
    url: str
    headers: dict[str, Any]  # values: a string or {"secret": name}
    timeout_s: float
    sensitive: bool
    tools: list[dict[str, Any]]  # [{name, description, input_schema}]
    tools_refreshed_at: datetime | None
    last_error: str | None
    created_by: str | None
    created_at: datetime


COLUMNS = ("id, name, url, headers, timeout_s, sensitive, tools, tools_refreshed_at, last_error, created_by, "
           "created_at")
INSERT_SQL = f"""
INSERT INTO mcp_servers (id, org_id, name, url, headers, timeout_s, sensitive, created_by)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}
"""
GET_SQL = f"SELECT {COLUMNS} FROM mcp_servers WHERE name = %s"
LIST_SQL = f"SELECT {COLUMNS} FROM mcp_servers ORDER BY name"
SET_TOOLS_SQL = f"""
UPDATE mcp_servers SET tools = coalesce(%s, tools), last_error = %s,
    tools_refreshed_at = CASE WHEN %s::jsonb IS NULL THEN tools_refreshed_at ELSE now() END
WHERE name = %s RETURNING {COLUMNS}
"""
DELETE_SQL = "DELETE FROM mcp_servers WHERE name = %s RETURNING id"


async def create(conn: AsyncConnection[DictRow], name: str, url: str, headers: dict[str, Any], timeout_s: float,
                 sensitive: bool, created_by: str | None) -> McpServerRow:
    row = await (await conn.execute(INSERT_SQL, (new_id("mcp_server"), name, url, Jsonb(headers), timeout_s,
                                                 sensitive, created_by))).fetchone()
    assert row is not None
    return cast(McpServerRow, row)


async def get(conn: AsyncConnection[DictRow], name: str) -> McpServerRow | None:
    return cast(McpServerRow | None, await (await conn.execute(GET_SQL, (name,))).fetchone())


async def list_servers(conn: AsyncConnection[DictRow]) -> list[McpServerRow]:
    return cast(list[McpServerRow], await (await conn.execute(LIST_SQL)).fetchall())


async def set_tools(conn: AsyncConnection[DictRow], name: str, tools: list[dict[str, Any]] | None,
                    error: str | None) -> McpServerRow | None:
    """Record a refresh: the new tool list, or (tools None) the error that kept the old one."""
    value = Jsonb(tools) if tools is not None else None
    return cast(McpServerRow | None, await (await conn.execute(SET_TOOLS_SQL, (value, error, value, name))).fetchone())


async def delete(conn: AsyncConnection[DictRow], name: str) -> bool:
    return await (await conn.execute(DELETE_SQL, (name,))).fetchone() is not None
