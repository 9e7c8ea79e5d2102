"""An org's own skills and their versions. Every change writes a new version; versions are
never changed or removed (a deleted skill keeps them), so a run's resolution stays loadable.

`RUN_SKILL_VERSIONS` records, once per run, which version of each of the org's skills the run
uses: the run store's claim sets it in the claiming statement."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id


class SkillRow(TypedDict):
    """A skill at its current version; `definition` is a `core.skill_defs.SkillDefinition` as stored."""

    id: str
    name: str
    version: int
    definition: dict[str, Any]
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class SkillVersionRow(TypedDict):
    name: str
    version: int
    definition: dict[str, Any]
    created_by: str | None
    created_at: datetime


_CURRENT = """
SELECT s.id, s.name, s.version, v.definition, s.created_by, s.created_at, s.updated_at
FROM skills s JOIN skill_versions v ON v.skill_id = s.id AND v.version = s.version
WHERE s.deleted_at IS NULL
"""
# A name used before (by a deleted skill) goes on from that skill's last version, so a name and a
# version always mean one definition.
INSERT_SKILL_SQL = """
INSERT INTO skills (id, org_id, name, version, created_by)
VALUES (%(id)s, agentos_current_org(), %(name)s,
        (SELECT coalesce(max(version), 0) + 1 FROM skill_versions WHERE name = %(name)s), %(by)s)
RETURNING version
"""
INSERT_VERSION_SQL = """
INSERT INTO skill_versions (org_id, skill_id, version, name, definition, created_by)
VALUES (agentos_current_org(), %s, %s, %s, %s, %s)
"""
GET_SKILL_SQL = _CURRENT + " AND s.name = %s"
LOCK_SKILL_SQL = "SELECT id, version FROM skills WHERE name = %s AND deleted_at IS NULL FOR UPDATE"
LIST_SKILLS_SQL = _CURRENT + " ORDER BY s.name"
BUMP_SQL = "UPDATE skills SET version = version + 1, updated_at = now() WHERE id = %s RETURNING version"
DELETE_SKILL_SQL = "UPDATE skills SET deleted_at = now() WHERE name = %s AND deleted_at IS NULL RETURNING id"
LIST_VERSIONS_SQL = """
SELECT v.name, v.version, v.definition, v.created_by, v.created_at
FROM skill_versions v JOIN skills s ON s.id = v.skill_id
WHERE s.name = %s AND s.deleted_at IS NULL ORDER BY v.version DESC
"""
# A version by the name it had: what a run resolved, even if the skill was deleted since.
GET_VERSION_SQL = """
SELECT name, version, definition, created_by, created_at FROM skill_versions
WHERE name = %s AND version = %s
"""
EXISTING_SQL = "SELECT name, version FROM skills WHERE name = ANY(%s) AND deleted_at IS NULL"
# A run's skill versions, as the claim sets them: at the first start the latest version of every
# live skill of the org; later attempts keep the first answer (coalesce), so a resumed or
# taken-over run uses what it started with.
RUN_SKILL_VERSIONS = """coalesce(skill_versions,
    (SELECT coalesce(jsonb_object_agg(name, version), '{}'::jsonb) FROM skills WHERE deleted_at IS NULL))"""


async def create(conn: AsyncConnection[DictRow], name: str, definition: dict[str, Any],
                 created_by: str | None) -> SkillRow:
    """A new skill (version 1, or on from a deleted namesake's); psycopg's UniqueViolation if
    the name is taken."""
    skill_id = new_id("skill")
    created = await (await conn.execute(INSERT_SKILL_SQL, {"id": skill_id, "name": name, "by": created_by})).fetchone()
    assert created is not None
    await conn.execute(INSERT_VERSION_SQL, (skill_id, created["version"], name, Jsonb(definition), created_by))
    row = await get(conn, name)
    assert row is not None
    return row


async def get(conn: AsyncConnection[DictRow], name: str) -> SkillRow | None:
    return cast(SkillRow | None, await (await conn.execute(GET_SKILL_SQL, (name,))).fetchone())


async def list_skills(conn: AsyncConnection[DictRow]) -> list[SkillRow]:
    return cast(list[SkillRow], await (await conn.execute(LIST_SKILLS_SQL)).fetchall())


async def add_version(conn: AsyncConnection[DictRow], name: str, definition: dict[str, Any],
                      created_by: str | None) -> SkillRow | None:
    """Write `definition` as the skill's next version; None if there is no such skill."""
    locked = await (await conn.execute(LOCK_SKILL_SQL, (name,))).fetchone()
    if locked is None:
        return None
    bumped = await (await conn.execute(BUMP_SQL, (locked["id"],))).fetchone()
    assert bumped is not None
    await conn.execute(INSERT_VERSION_SQL, (locked["id"], bumped["version"], name, Jsonb(definition), created_by))
    return await get(conn, name)


async def delete(conn: AsyncConnection[DictRow], name: str) -> bool:
    return await (await conn.execute(DELETE_SKILL_SQL, (name,))).fetchone() is not None


async def versions(conn: AsyncConnection[DictRow], name: str) -> list[SkillVersionRow]:
    return cast(list[SkillVersionRow], await (await conn.execute(LIST_VERSIONS_SQL, (name,))).fetchall())


async def get_version(conn: AsyncConnection[DictRow], name: str, version: int) -> SkillVersionRow | None:
    return cast(SkillVersionRow | None, await (await conn.execute(GET_VERSION_SQL, (name, version))).fetchone())


async def current_versions(conn: AsyncConnection[DictRow], names: list[str]) -> dict[str, int]:
    """The live skills among `names`, with their current versions."""
    if not names:
        return {}
    return {r["name"]: r["version"] for r in await (await conn.execute(EXISTING_SQL, (names,))).fetchall()}
