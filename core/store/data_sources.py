"""An org's data sources: what `data_query` may read besides the session's files."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id


class DataSourceRow(TypedDict):
    id: str
    name: str
    kind: str
    config: dict[str, Any]  # core.data_sources.PostgresSource as stored
    created_by: str | None
    created_at: datetime


COLUMNS = "id, name, kind, config, created_by, created_at"
INSERT_SQL = f"""
INSERT INTO data_sources (id, org_id, name, kind, config, created_by)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s) RETURNING {COLUMNS}
"""
GET_SQL = f"SELECT {COLUMNS} FROM data_sources WHERE name = %s"
LIST_SQL = f"SELECT {COLUMNS} FROM data_sources ORDER BY name"
DELETE_SQL = "DELETE FROM data_sources WHERE name = %s RETURNING id"


async def create(conn: AsyncConnection[DictRow], name: str, kind: str, config: dict[str, Any],
                 created_by: str | None) -> DataSourceRow:
    """psycopg's UniqueViolation if the name is taken."""
    row = await (await conn.execute(INSERT_SQL, (new_id("data_source"), name, kind, Jsonb(config),
                                                 created_by))).fetchone()
    assert row is not None
    return cast(DataSourceRow, row)


async def get(conn: AsyncConnection[DictRow], name: str) -> DataSourceRow | None:
    return cast(DataSourceRow | None, await (await conn.execute(GET_SQL, (name,))).fetchone())


async def list_sources(conn: AsyncConnection[DictRow]) -> list[DataSourceRow]:
    return cast(list[DataSourceRow], await (await conn.execute(LIST_SQL)).fetchall())


async def delete(conn: AsyncConnection[DictRow], name: str) -> bool:
    return await (await conn.execute(DELETE_SQL, (name,))).fetchone() is not None
