"""Org secrets as stored: names, sealed values (see `core.secrets` for the envelope) and
timestamps. Nothing here sees a plaintext value; listings never select the sealed columns."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TypedDict

from psycopg import AsyncConnection
from psycopg.rows import DictRow

# A secret's name: what skills and agents refer to (`{"secret": "brave_key"}`), and a path segment.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class SecretRow(TypedDict):
    """A secret as listings show it: never its value."""

    name: str
    key_version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class SealedRow(TypedDict):
    """The stored envelope of one secret (`core.secrets.Sealed`'s columns)."""

    name: str
    key_version: int
    wrapped_key: bytes
    ciphertext: bytes


PUBLIC_COLUMNS = "name, key_version, created_by, created_at, updated_at"

# `xmax = 0`: the row was inserted, not updated (tells PUT's create from replace).
UPSERT_SECRET_SQL = f"""
INSERT INTO org_secrets (org_id, name, key_version, wrapped_key, ciphertext, created_by)
VALUES (agentos_current_org(), %s, %s, %s, %s, %s)
ON CONFLICT (org_id, name) DO UPDATE SET key_version = excluded.key_version,
    wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext, updated_at = now()
RETURNING {PUBLIC_COLUMNS}, (xmax = 0) AS created
"""
LIST_SECRETS_SQL = f"""
SELECT {PUBLIC_COLUMNS} FROM org_secrets
WHERE (%(cursor)s::text IS NULL OR name > %(cursor)s) ORDER BY name LIMIT %(limit)s
"""
GET_SEALED_SQL = "SELECT name, key_version, wrapped_key, ciphertext FROM org_secrets WHERE name = %s"
DELETE_SECRET_SQL = f"DELETE FROM org_secrets WHERE name = %s RETURNING {PUBLIC_COLUMNS}"

# Rotation. The scan runs in `core.tenancy.secret_rotation_scan_tx` (the `secret_rotation`
# policy: names and versions across orgs, read-only); each rewrap then locks its row in the org's
# own transaction and changes it only if no one rewrapped or replaced it meanwhile.
COUNT_STALE_SQL = "SELECT count(*) AS n FROM org_secrets WHERE key_version <> %s"
SCAN_STALE_SQL = """
SELECT org_id, name FROM org_secrets WHERE key_version <> %(active)s
  AND (org_id, name) > (%(org_id)s, %(name)s)
ORDER BY org_id, name LIMIT %(limit)s
"""
LOCK_SEALED_SQL = f"{GET_SEALED_SQL} FOR UPDATE"
REWRAP_SQL = """
UPDATE org_secrets SET key_version = %s, wrapped_key = %s WHERE name = %s AND key_version = %s
"""


class StaleRef(TypedDict):
    org_id: str
    name: str


async def upsert(
    conn: AsyncConnection[DictRow], name: str, key_version: int, wrapped_key: bytes, ciphertext: bytes,
    created_by: str | None,
) -> tuple[SecretRow, bool]:
    """Store (or replace) a sealed secret; (its row, whether it was created)."""
    cur = await conn.execute(UPSERT_SECRET_SQL, (name, key_version, wrapped_key, ciphertext, created_by))
    row = await cur.fetchone()
    assert row is not None
    created = bool(row.pop("created"))
    return SecretRow(**row), created  # type: ignore[typeddict-item]


async def list_secrets(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[SecretRow]:
    cur = await conn.execute(LIST_SECRETS_SQL, {"cursor": cursor, "limit": limit + 1})
    return [SecretRow(**r) for r in await cur.fetchall()]  # type: ignore[typeddict-item]


async def get_sealed(conn: AsyncConnection[DictRow], name: str, *, lock: bool = False) -> SealedRow | None:
    row = await (await conn.execute(LOCK_SEALED_SQL if lock else GET_SEALED_SQL, (name,))).fetchone()
    return SealedRow(**row) if row is not None else None  # type: ignore[typeddict-item]


async def delete(conn: AsyncConnection[DictRow], name: str) -> SecretRow | None:
    row = await (await conn.execute(DELETE_SECRET_SQL, (name,))).fetchone()
    return SecretRow(**row) if row is not None else None  # type: ignore[typeddict-item]


async def count_stale(conn: AsyncConnection[DictRow], active: int) -> int:
    row = await (await conn.execute(COUNT_STALE_SQL, (active,))).fetchone()
    return int(row["n"]) if row else 0


async def scan_stale(conn: AsyncConnection[DictRow], active: int, after: tuple[str, str], limit: int) -> list[StaleRef]:
    cur = await conn.execute(SCAN_STALE_SQL, {"active": active, "org_id": after[0], "name": after[1], "limit": limit})
    return [StaleRef(org_id=r["org_id"], name=r["name"]) for r in await cur.fetchall()]


async def rewrap(conn: AsyncConnection[DictRow], name: str, old_version: int, new_version: int,
                 wrapped_key: bytes) -> bool:
    cur = await conn.execute(REWRAP_SQL, (new_version, wrapped_key, name, old_version))
    return cur.rowcount == 1
