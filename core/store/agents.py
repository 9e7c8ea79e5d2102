"""Agents and their version history. Every change bumps `version` and keeps a snapshot."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id


class AgentRow(TypedDict):
    """An agent at its current version; `config` is an `AgentConfig` as stored."""

    id: str
    name: str
    version: int
    config: dict[str, Any]
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class AgentVersionRow(TypedDict):
    """An agent as it was at one version (what a run executes)."""

    id: str
    name: str
    version: int
    config: dict[str, Any]


COLUMNS = "id, name, version, config, created_by, created_at, updated_at"

INSERT_AGENT_SQL = f"""
INSERT INTO agents (id, org_id, name, config, created_by)
VALUES (%s, agentos_current_org(), %s, %s, %s) RETURNING {COLUMNS}
"""
INSERT_VERSION_SQL = """
INSERT INTO agent_versions (org_id, agent_id, version, name, config, created_by)
VALUES (agentos_current_org(), %s, %s, %s, %s, %s)
"""
GET_AGENT_SQL = f"SELECT {COLUMNS} FROM agents WHERE id = %s AND deleted_at IS NULL"
GET_AGENT_FOR_UPDATE_SQL = GET_AGENT_SQL + " FOR UPDATE"
GET_AGENT_BY_NAME_SQL = f"SELECT {COLUMNS} FROM agents WHERE name = %s AND deleted_at IS NULL"
LIST_AGENTS_SQL = f"""
SELECT {COLUMNS} FROM agents WHERE deleted_at IS NULL
  AND (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""
UPDATE_AGENT_SQL = f"""
UPDATE agents SET name = %s, config = %s, version = version + 1, updated_at = now()
WHERE id = %s AND deleted_at IS NULL RETURNING {COLUMNS}
"""
DELETE_AGENT_SQL = "UPDATE agents SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL RETURNING id"
LIST_VERSIONS_SQL = """
SELECT version, name, config, created_by, created_at FROM agent_versions
WHERE agent_id = %s ORDER BY version DESC
"""
EXISTING_IDS_SQL = "SELECT id FROM agents WHERE id = ANY(%s) AND deleted_at IS NULL"


def to_public(row: AgentRow) -> dict[str, Any]:
    """Flatten the stored config into the API's agent object."""
    return {
        "id": row["id"],
        "name": row["name"],
        "version": row["version"],
        **row["config"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def create(
    conn: AsyncConnection[DictRow], name: str, config: dict[str, Any], created_by: str | None
) -> AgentRow:
    row = await (
        await conn.execute(INSERT_AGENT_SQL, (new_id("agent"), name, Jsonb(config), created_by))
    ).fetchone()
    assert row is not None
    await conn.execute(INSERT_VERSION_SQL, (row["id"], 1, name, Jsonb(config), created_by))
    return cast(AgentRow, row)


async def get(conn: AsyncConnection[DictRow], agent_id: str, *, for_update: bool = False) -> AgentRow | None:
    sql = GET_AGENT_FOR_UPDATE_SQL if for_update else GET_AGENT_SQL
    return cast(AgentRow | None, await (await conn.execute(sql, (agent_id,))).fetchone())


async def get_by_name(conn: AsyncConnection[DictRow], name: str) -> AgentRow | None:
    return cast(AgentRow | None, await (await conn.execute(GET_AGENT_BY_NAME_SQL, (name,))).fetchone())


async def list_agents(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[AgentRow]:
    rows = await (await conn.execute(LIST_AGENTS_SQL, {"cursor": cursor, "limit": limit + 1})).fetchall()
    return cast(list[AgentRow], rows)


async def update(
    conn: AsyncConnection[DictRow], agent_id: str, name: str, config: dict[str, Any], actor: str | None
) -> AgentRow | None:
    row = await (await conn.execute(UPDATE_AGENT_SQL, (name, Jsonb(config), agent_id))).fetchone()
    if row is not None:
        await conn.execute(INSERT_VERSION_SQL, (agent_id, row["version"], name, Jsonb(config), actor))
    return cast(AgentRow | None, row)


async def delete(conn: AsyncConnection[DictRow], agent_id: str) -> bool:
    return await (await conn.execute(DELETE_AGENT_SQL, (agent_id,))).fetchone() is not None


async def versions(conn: AsyncConnection[DictRow], agent_id: str) -> list[dict[str, Any]]:
    return list(await (await conn.execute(LIST_VERSIONS_SQL, (agent_id,))).fetchall())


async def missing_ids(conn: AsyncConnection[DictRow], ids: list[str]) -> list[str]:
    """Which of `ids` are not live agents of the current org."""
    if not ids:
        return []
    found = {r["id"] for r in await (await conn.execute(EXISTING_IDS_SQL, (ids,))).fetchall()}
    return [i for i in ids if i not in found]


GET_VERSION_SQL = """
SELECT a.id, v.name, v.version, v.config FROM agent_versions v JOIN agents a ON a.id = v.agent_id
WHERE v.agent_id = %s AND v.version = %s
"""


async def get_version(conn: AsyncConnection[DictRow], agent_id: str, version: int) -> AgentVersionRow | None:
    """The agent as it was at `version` (what a run uses, even if the agent changed since)."""
    return cast(AgentVersionRow | None, await (await conn.execute(GET_VERSION_SQL, (agent_id, version))).fetchone())
