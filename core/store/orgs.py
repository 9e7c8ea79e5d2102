"""Organisations: the tenant itself. Creating one also creates its first owner API key.

Names are unique regardless of case (the index `orgs_name_uq`, migration 9). Row-level security
hides other orgs, but a unique index checks every row, so a taken name is found without seeing
whose it is."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id
from core.store import api_keys, audit
from core.tenancy import AsyncPool, tenant_tx

COLUMNS = "id, name, settings, limits, retention, created_at"
INSERT_ORG_SQL = f"""
INSERT INTO orgs (id, name, settings) VALUES (%s, %s, %s)
RETURNING {COLUMNS}
"""
GET_ORG_SQL = f"SELECT {COLUMNS} FROM orgs WHERE id = %s"
# `settings` holds operator-set, per-org options that workers read (`embedding_model`,
# `web_search_provider`, `outbound_allow`; see docs/skills.md).
GET_ORG_SETTINGS_SQL = "SELECT settings FROM orgs WHERE id = agentos_current_org()"
# `limits` holds only the org's overrides of the admission defaults (core.admission): set keys
# are merged in, cleared keys removed (the default applies again).
UPDATE_ORG_SQL = f"""
UPDATE orgs SET name = coalesce(%(name)s, name), limits = (limits || %(set)s) - %(clear)s::text[],
    retention = (retention || %(rset)s) - %(rclear)s::text[]
WHERE id = %(id)s
RETURNING {COLUMNS}
"""

NAME_INDEX = "orgs_name_uq"


class OrgNameTaken(Exception):
    """Another organisation already has this name (compared regardless of case)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an organisation named {name!r} already exists")
        self.name = name


def _name_taken(exc: UniqueViolation) -> bool:
    return exc.diag.constraint_name == NAME_INDEX


async def insert(conn: AsyncConnection[DictRow], org_id: str, name: str) -> dict[str, Any]:
    """The org row, inside a tenant transaction of `org_id`; OrgNameTaken when the name is taken
    (the caller's transaction is then aborted)."""
    try:
        org = await (await conn.execute(INSERT_ORG_SQL, (org_id, name, Jsonb({})))).fetchone()
    except UniqueViolation as exc:
        if _name_taken(exc):
            raise OrgNameTaken(name) from None
        raise
    assert org is not None
    return dict(org)


async def create_org(
    pool: AsyncPool, name: str, *, actor: str, key_name: str = "owner"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create an org and an owner key in one transaction; return (org, key with its secret).
    OrgNameTaken when the name is taken."""
    org_id = new_id("org")
    try:
        async with tenant_tx(pool, org_id) as conn:
            org = await insert(conn, org_id, name)
            key = await api_keys.create(conn, name=key_name, role="owner", created_by=None)
            await audit.record(conn, actor, "org.create", "org", org_id, {"name": name})
    except UniqueViolation as exc:
        if _name_taken(exc):
            raise OrgNameTaken(name) from None
        raise
    return dict(org), key


async def get_org(pool: AsyncPool, org_id: str) -> dict[str, Any] | None:
    async with tenant_tx(pool, org_id) as conn:
        row = await (await conn.execute(GET_ORG_SQL, (org_id,))).fetchone()
    return dict(row) if row else None


async def org_settings(pool: AsyncPool, org_id: str) -> dict[str, Any]:
    """The org's `settings` object ({} for an unknown org)."""
    async with tenant_tx(pool, org_id) as conn:
        row = await (await conn.execute(GET_ORG_SETTINGS_SQL)).fetchone()
    return dict(row["settings"] or {}) if row else {}


async def update_org(
    pool: AsyncPool,
    org_id: str,
    *,
    actor: str,
    name: str | None = None,
    set_limits: dict[str, Any] | None = None,
    clear_limits: list[str] | None = None,
    set_retention: dict[str, Any] | None = None,
    clear_retention: list[str] | None = None,
) -> dict[str, Any] | None:
    """Rename the org and/or change its limit, budget and retention overrides; None if there is
    no such org; OrgNameTaken when the new name is another org's."""
    changes: dict[str, Any] = {"name": name, "set_limits": set_limits or {}, "clear_limits": clear_limits or []}
    if set_retention or clear_retention:
        changes |= {"set_retention": set_retention or {}, "clear_retention": clear_retention or []}
    try:
        async with tenant_tx(pool, org_id) as conn:
            row = await (await conn.execute(UPDATE_ORG_SQL, {
                "id": org_id, "name": name, "set": Jsonb(set_limits or {}), "clear": list(clear_limits or []),
                "rset": Jsonb(set_retention or {}), "rclear": list(clear_retention or []),
            })).fetchone()
            if row is None:
                return None
            await audit.record(conn, actor, "org.update", "org", org_id, changes)
    except UniqueViolation as exc:
        if name is not None and _name_taken(exc):
            raise OrgNameTaken(name) from None
        raise
    return dict(row)
