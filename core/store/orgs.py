"""Organisations: the tenant itself. Creating one also creates its first owner API key."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from core.ids import new_id
from core.store import api_keys, audit
from core.tenancy import AsyncPool, tenant_tx

INSERT_ORG_SQL = """
INSERT INTO orgs (id, name, settings) VALUES (%s, %s, %s)
RETURNING id, name, settings, created_at
"""
GET_ORG_SQL = "SELECT id, name, settings, created_at FROM orgs WHERE id = %s"


async def create_org(
    pool: AsyncPool, name: str, *, actor: str, key_name: str = "owner"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create an org and an owner key in one transaction; return (org, key with its secret)."""
    org_id = new_id("org")
    async with tenant_tx(pool, org_id) as conn:
        cur = await conn.execute(INSERT_ORG_SQL, (org_id, name, Jsonb({})))
        org = await cur.fetchone()
        assert org is not None
        key = await api_keys.create(conn, name=key_name, role="owner", created_by=None)
        await audit.record(conn, actor, "org.create", "org", org_id, {"name": name})
    return dict(org), key


async def get_org(pool: AsyncPool, org_id: str) -> dict[str, Any] | None:
    async with tenant_tx(pool, org_id) as conn:
        row = await (await conn.execute(GET_ORG_SQL, (org_id,))).fetchone()
    return dict(row) if row else None
