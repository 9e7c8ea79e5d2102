"""API keys: `aos_<prefix>_<secret>`. Only a SHA-256 of the secret is stored; the full key is
returned once, at creation. The prefix is public and identifies the row."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.ids import new_id
from core.tenancy import AsyncPool, api_key_lookup_tx

KEY_RE = re.compile(r"^aos_([a-z0-9]{10})_([A-Za-z0-9]{32})$")
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits

PUBLIC_COLUMNS = "id, name, prefix, role, created_by, created_at, expires_at, last_used_at, revoked_at"

INSERT_KEY_SQL = f"""
INSERT INTO api_keys (id, org_id, name, prefix, secret_hash, role, created_by, expires_at)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s, %s)
RETURNING {PUBLIC_COLUMNS}
"""
LIST_KEYS_SQL = f"""
SELECT {PUBLIC_COLUMNS} FROM api_keys
WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s) ORDER BY id DESC LIMIT %(limit)s
"""
GET_KEY_SQL = f"SELECT {PUBLIC_COLUMNS} FROM api_keys WHERE id = %s"
REVOKE_KEY_SQL = f"""
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s
RETURNING {PUBLIC_COLUMNS}
"""
# The org's live owner keys, locked (in id order, so concurrent revokers queue behind each other
# and each sees the other's revocation): the last of them must not be revoked.
LOCK_LIVE_OWNER_KEYS_SQL = """
SELECT id FROM api_keys
WHERE role = 'owner' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
ORDER BY id FOR UPDATE
"""
# Runs inside core.tenancy.api_key_lookup_tx: the lookup policy shows only that one row.
LOOKUP_KEY_SQL = """
SELECT id, org_id, secret_hash, role, created_by, expires_at, revoked_at, last_used_at,
       expires_at IS NOT NULL AND expires_at <= now() AS expired
FROM api_keys WHERE prefix = %s
"""
# Touch last_used_at at most once a minute per key, so auth stays read-mostly.
TOUCH_KEY_SQL = """
UPDATE api_keys SET last_used_at = now()
WHERE id = %s AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')
"""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate() -> tuple[str, str, str]:
    """Return (full key, prefix, secret)."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(10))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(32))
    return f"aos_{prefix}_{secret}", prefix, secret


async def create(
    conn: AsyncConnection[DictRow],
    *,
    name: str,
    role: str,
    created_by: str | None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    key, prefix, secret = generate()
    cur = await conn.execute(
        INSERT_KEY_SQL,
        (new_id("api_key"), name, prefix, hash_secret(secret), role, created_by, expires_at),
    )
    row = await cur.fetchone()
    assert row is not None
    return {**row, "key": key}


async def list_keys(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[dict[str, Any]]:
    cur = await conn.execute(LIST_KEYS_SQL, {"cursor": cursor, "limit": limit + 1})
    return list(await cur.fetchall())


async def get(conn: AsyncConnection[DictRow], key_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(GET_KEY_SQL, (key_id,))).fetchone()


async def revoke(conn: AsyncConnection[DictRow], key_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(REVOKE_KEY_SQL, (key_id,))).fetchone()


async def lock_live_owner_keys(conn: AsyncConnection[DictRow]) -> list[str]:
    """Ids of the org's active, unexpired owner keys, locked until the transaction ends."""
    return [r["id"] for r in await (await conn.execute(LOCK_LIVE_OWNER_KEYS_SQL)).fetchall()]


async def verify(pool: AsyncPool, key: str) -> dict[str, Any] | None:
    """The key's row when `key` is a live key (right secret, not revoked, not expired)."""
    match = KEY_RE.match(key)
    if not match:
        return None
    prefix, secret = match.groups()
    async with api_key_lookup_tx(pool, prefix) as conn:
        row = await (await conn.execute(LOOKUP_KEY_SQL, (prefix,))).fetchone()
    if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
        return None
    if row["revoked_at"] is not None or row["expired"]:
        return None
    return row


async def touch(conn: AsyncConnection[DictRow], key_id: str) -> None:
    await conn.execute(TOUCH_KEY_SQL, (key_id,))
