"""Model providers per org as stored. The API key is not here: `api_key_secret` names the org
secret that holds it (core.secrets)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypedDict

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id

ProviderKind = Literal["openai", "anthropic", "openai_compatible", "azure_openai"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = ("openai", "anthropic", "openai_compatible", "azure_openai")


def secret_name(provider_id: str) -> str:
    """The org secret a key given inline (`api_key`) is stored under."""
    return f"provider.{provider_id}.api_key"


class ProviderRow(TypedDict):
    id: str
    name: str
    kind: ProviderKind
    base_url: str | None
    api_version: str | None
    default_model: str | None
    headers: dict[str, Any]
    api_key_secret: str | None
    owns_secret: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime


COLUMNS = ("id, name, kind, base_url, api_version, default_model, headers, api_key_secret, owns_secret, "
           "created_by, created_at, updated_at")
INSERT_SQL = f"""
INSERT INTO model_providers (id, org_id, name, kind, base_url, api_version, default_model, headers, api_key_secret,
                             owns_secret, created_by)
VALUES (%(id)s, agentos_current_org(), %(name)s, %(kind)s, %(base_url)s, %(api_version)s, %(default_model)s,
        %(headers)s, %(api_key_secret)s, %(owns_secret)s, %(created_by)s)
ON CONFLICT (org_id, name) DO NOTHING
RETURNING {COLUMNS}
"""
LIST_SQL = f"""
SELECT {COLUMNS} FROM model_providers WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""
GET_SQL = f"SELECT {COLUMNS} FROM model_providers WHERE id = %s"
BY_NAME_SQL = f"SELECT {COLUMNS} FROM model_providers WHERE name = %s"
DELETE_SQL = f"DELETE FROM model_providers WHERE id = %s RETURNING {COLUMNS}"
COUNT_SQL = "SELECT count(*) AS n FROM model_providers"
_UPDATABLE = ("base_url", "api_version", "default_model", "headers", "api_key_secret", "owns_secret")


async def create(conn: AsyncConnection[DictRow], fields: dict[str, Any]) -> ProviderRow | None:
    """Insert a provider (`fields` holds the columns but id); None when the name is taken."""
    provider_id = fields.get("id") or new_id("provider")
    params = {**fields, "id": provider_id, "headers": Jsonb(fields.get("headers") or {})}
    row = await (await conn.execute(INSERT_SQL, params)).fetchone()
    return ProviderRow(**row) if row else None  # type: ignore[typeddict-item]


async def list_providers(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[ProviderRow]:
    cur = await conn.execute(LIST_SQL, {"cursor": cursor, "limit": limit + 1})
    return [ProviderRow(**r) for r in await cur.fetchall()]  # type: ignore[typeddict-item]


async def get(conn: AsyncConnection[DictRow], provider_id: str) -> ProviderRow | None:
    row = await (await conn.execute(GET_SQL, (provider_id,))).fetchone()
    return ProviderRow(**row) if row else None  # type: ignore[typeddict-item]


async def by_name(conn: AsyncConnection[DictRow], name: str) -> ProviderRow | None:
    row = await (await conn.execute(BY_NAME_SQL, (name,))).fetchone()
    return ProviderRow(**row) if row else None  # type: ignore[typeddict-item]


async def update(conn: AsyncConnection[DictRow], provider_id: str, changes: dict[str, Any]) -> ProviderRow | None:
    """Set the given columns (of `_UPDATABLE`); the row as it is now, or None if there is none."""
    sets = [f"{column} = %({column})s" for column in _UPDATABLE if column in changes]
    params = {**changes, "id": provider_id}
    if "headers" in params:
        params["headers"] = Jsonb(params["headers"] or {})
    assignments = ", ".join([*sets, "updated_at = now()"])
    query = f"UPDATE model_providers SET {assignments} WHERE id = %(id)s RETURNING {COLUMNS}"
    row = await (await conn.execute(query.encode(), params)).fetchone()
    return ProviderRow(**row) if row else None  # type: ignore[typeddict-item]


async def delete(conn: AsyncConnection[DictRow], provider_id: str) -> ProviderRow | None:
    row = await (await conn.execute(DELETE_SQL, (provider_id,))).fetchone()
    return ProviderRow(**row) if row else None  # type: ignore[typeddict-item]


async def count(conn: AsyncConnection[DictRow]) -> int:
    row = await (await conn.execute(COUNT_SQL)).fetchone()
    return int(row["n"]) if row else 0
