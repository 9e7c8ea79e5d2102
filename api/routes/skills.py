"""The skill catalogue: the built-in skills and the org's own, with their JSON schemas. An org's
skill changes by versions: a PATCH writes the next one, every version stays readable, and agents
follow the latest (`name`) or pin one (`name@3`)."""

from __future__ import annotations

import re
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource, validate, validation_failed
from api.schemas.base import page_of
from api.schemas.skills import Skill
from core.builtin_catalogue import builtin_catalogue
from core.errors import ApiError
from core.skill_defs import (
    CUSTOM_NAME_PATTERN,
    HeaderValue,
    HttpSkill,
    SecretRef,
    SkillDefinition,
    check_custom_name,
    mcp_skill_name,
)
from core.store import audit, mcp_servers
from core.store import skills as store
from core.tenancy import tenant_tx


class SkillCreate(HttpSkill):
    name: str = Field(pattern=CUSTOM_NAME_PATTERN)


class SkillPatch(BaseModel):
    """Any subset of the skill's fields; what is absent stays as it is."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    url: str | None = None
    method: Literal["POST", "PUT", "PATCH"] | None = None
    headers: dict[str, HeaderValue] | None = None
    signing_secret: SecretRef | None = None
    timeout_s: float | None = None
    sensitive: bool | None = None


def _builtin(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "builtin", "version": None, **builtin_catalogue()[name]}


def _public(name: str, version: int, definition: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": version, **definition, **extra}


def _row(row: store.SkillRow) -> dict[str, Any]:
    return _public(row["name"], row["version"], row["definition"], created_by=row["created_by"],
                   created_at=row["created_at"], updated_at=row["updated_at"])


def _not_found(name: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No skill named {name!r} in this organisation; GET /v1/skills lists them.")


def _name(call: Call[Any]) -> str:
    name = str(call.request.path_params["name"])
    if name not in builtin_catalogue() and not re.match(CUSTOM_NAME_PATTERN, name):
        raise _not_found(name)
    return name


def _builtin_fixed(name: str) -> ApiError:
    return ApiError("CONFLICT", f"{name!r} is a built-in skill; built-in skills cannot be changed or deleted.")


@endpoint("List the skills agents of this organisation may use: built-ins first, then the org's own "
          "at their latest versions, then its MCP servers' tools.", response=page_of(Skill))
async def list_skills(call: Call[Any]) -> Response:
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.list_skills(conn)
        servers = await mcp_servers.list_servers(conn)
    mcp = [{"name": skill, "kind": "mcp", "version": None, "server": server["name"], "tool": tool["name"],
            "description": tool["description"], "parameters": tool["input_schema"], "sensitive": server["sensitive"]}
           for server in servers for tool in server["tools"]
           if (skill := mcp_skill_name(server["name"], tool["name"])) is not None]
    return call.page([*(_builtin(n) for n in sorted(builtin_catalogue())), *map(_row, rows), *mcp])


@endpoint("Define a skill of this organisation (an HTTP endpoint it owns), at version 1.", role="admin",
          body=SkillCreate, status=201, response=Skill, errors=("CONFLICT",))
async def create_skill(call: Call[SkillCreate]) -> Response:
    body, principal = call.body, call.principal
    try:
        check_custom_name(body.name)
    except ValueError as exc:
        raise validation_failed([{"field": "name", "message": str(exc)}]) from None
    definition = body.model_dump(mode="json", exclude={"name"})
    try:
        async with tenant_tx(call.pool, principal.org_id) as conn:
            row = await store.create(conn, body.name, definition, principal.user_id)
            await audit.record(conn, principal.actor, "skill.create", "skill", row["id"],
                               {"name": body.name, "version": row["version"]})
    except psycopg.errors.UniqueViolation:
        raise ApiError("CONFLICT", f"A skill named {body.name!r} already exists; PATCH it to make a new version.",
                       details={"field": "name"}) from None
    return call.reply(_row(row))


@endpoint("Read one skill (a built-in, or the org's own at its latest version).", response=Skill)
async def get_skill(call: Call[Any]) -> Response:
    name = _name(call)
    if name in builtin_catalogue():
        return call.reply(_builtin(name))
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, name)
    if row is None:
        raise _not_found(name)
    return call.reply(_row(row))


@endpoint("Change a skill: writes its next version (runs already started keep theirs; a patch that "
          "changes nothing writes none).", role="admin", body=SkillPatch, response=Skill,
          errors=("CONFLICT",))
async def patch_skill(call: Call[SkillPatch]) -> Response:
    name = _name(call)
    if name in builtin_catalogue():
        raise _builtin_fixed(name)
    changes = call.body.model_dump(mode="json", exclude_unset=True)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        current = await store.get(conn, name)
        if current is None:
            raise _not_found(name)
        definition = validate(SkillDefinition, {**current["definition"], **changes}).model_dump(mode="json")
        if definition == validate(SkillDefinition, current["definition"]).model_dump(mode="json"):
            return call.reply(_row(current))
        row = await store.add_version(conn, name, definition, call.principal.user_id)
        if row is None:
            raise _not_found(name)
        await audit.record(conn, call.principal.actor, "skill.update", "skill", row["id"],
                           {"name": name, "version": row["version"], "fields": sorted(changes)})
    return call.reply(_row(row))


@endpoint("Delete a skill. Its versions stay readable to runs that resolved them; agents naming it "
          "no longer get it.", role="admin", status=204, errors=("CONFLICT",))
async def delete_skill(call: Call[Any]) -> Response:
    name = _name(call)
    if name in builtin_catalogue():
        raise _builtin_fixed(name)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if not await store.delete(conn, name):
            raise _not_found(name)
        await audit.record(conn, call.principal.actor, "skill.delete", "skill", None, {"name": name})
    return Response(status_code=204)


@endpoint("A skill's versions, newest first.", response=page_of(Skill))
async def skill_versions(call: Call[Any]) -> Response:
    name = _name(call)
    if name in builtin_catalogue():
        return call.page([_builtin(name)])
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.versions(conn, name)
    if not rows:
        raise _not_found(name)
    return call.page([_public(r["name"], r["version"], r["definition"], created_by=r["created_by"],
                            created_at=r["created_at"]) for r in rows])


@endpoint("One version of a skill, as it was written.", response=Skill)
async def skill_version(call: Call[Any]) -> Response:
    name = _name(call)
    raw = str(call.request.path_params["version"])
    if name in builtin_catalogue() or not raw.isdigit() or not 1 <= int(raw) < 2**31:
        raise ApiError("NOT_FOUND", f"Skill {name!r} has no version {raw!r}.")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get_version(conn, name, int(raw))
        live = await store.get(conn, name)
    if row is None or live is None:
        raise ApiError("NOT_FOUND", f"Skill {name!r} has no version {raw!r}.")
    return call.reply(_public(row["name"], row["version"], row["definition"], created_by=row["created_by"],
                        created_at=row["created_at"]))


routes = [
    resource("/v1/skills", GET=list_skills, POST=create_skill),
    resource("/v1/skills/{name}", GET=get_skill, PATCH=patch_skill, DELETE=delete_skill),
    resource("/v1/skills/{name}/versions", GET=skill_versions),
    resource("/v1/skills/{name}/versions/{version}", GET=skill_version),
]
