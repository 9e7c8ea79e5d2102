"""An org's own allowlist of private addresses for its custom HTTP skills, set by its admin
(`orgs.settings.outbound_allow_private`; the operator's `outbound_allow` is another key)."""

from __future__ import annotations

from typing import cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

KEY = "outbound_allow_private"
GET_SQL = """
SELECT coalesce(settings -> 'outbound_allow_private', '[]'::jsonb) AS allow FROM orgs WHERE id = agentos_current_org()
"""
SET_SQL = """
UPDATE orgs SET settings = settings || jsonb_build_object('outbound_allow_private', %s::jsonb)
WHERE id = agentos_current_org() RETURNING settings -> 'outbound_allow_private' AS allow
"""


async def get(conn: AsyncConnection[DictRow]) -> list[str]:
    row = await (await conn.execute(GET_SQL)).fetchone()
    return cast(list[str], row["allow"]) if row else []


async def put(conn: AsyncConnection[DictRow], allow: list[str]) -> list[str]:
    row = await (await conn.execute(SET_SQL, (Jsonb(allow),))).fetchone()
    return cast(list[str], row["allow"]) if row else []
