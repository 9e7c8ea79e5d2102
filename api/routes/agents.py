"""Agents: create, list, read, patch (a change bumps the version and keeps history; a patch
that changes nothing, an empty one included, does not), delete."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource, validate, validation_failed
from api.schemas.agents import Agent, AgentVersion
from api.schemas.base import page_of
from core.agent_config import (
    BUILTIN_PROVIDERS,
    MODEL_PROVIDERS,
    NAME_PATTERN,
    AgentConfig,
    AgentLimits,
    AgentMemory,
    RunnerRoute,
)
from core.builtin_catalogue import builtin_catalogue
from core.errors import ApiError
from core.pagination import page
from core.skill_defs import parse_ref, split_mcp_name
from core.skill_names import RUNNER_SKILLS
from core.store import agents, audit, mcp_servers, providers, skills
from core.tenancy import tenant_tx


class AgentCreate(AgentConfig):
    name: str = Field(pattern=NAME_PATTERN)


class AgentPatch(BaseModel):
    """Any subset of the agent's fields; what is absent stays as it is."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    instructions: str | None = None
    model: str | None = None
    fallback_models: list[str] | None = None
    skills: list[str] | None = None
    subagents: list[str] | None = None
    confirm: list[str] | Literal["all", "none"] | None = None
    mode: Literal["agent", "plan"] | None = None
    limits: AgentLimits | None = None
    memory: AgentMemory | None = None
    runner: str | RunnerRoute | None = None


def _not_found(agent_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No agent with id {agent_id!r} in this organisation.")


def _name_taken(name: str) -> ApiError:
    return ApiError("CONFLICT", f"An agent named {name!r} already exists; choose another name.",
                    details={"field": "name"})


async def _check_subagents(conn: Any, subagents: list[str], self_id: str | None = None) -> None:
    problems = [{"field": "subagents", "message": "an agent cannot be its own sub-agent"}] if (
        self_id and self_id in subagents) else []
    for missing in await agents.missing_ids(conn, [s for s in subagents if s != self_id]):
        problems.append({"field": "subagents", "message": f"no agent with id {missing!r} in this organisation"})
    if problems:
        raise validation_failed(problems)


async def _check_models(conn: Any, config: Mapping[str, Any]) -> None:
    """Every model names a built-in provider or one of the org's own (deleting that one later
    fails the agent's runs with MODEL_CONFIG instead)."""
    problems = []
    for field, specs in (("model", [config["model"]]), ("fallback_models", config["fallback_models"])):
        for spec in specs:
            name = spec.partition(":")[0]
            if name not in BUILTIN_PROVIDERS and await providers.by_name(conn, name) is None:
                problems.append({"field": field, "message": (
                    f"unknown model provider {name!r} in {spec!r}; use one of {', '.join(MODEL_PROVIDERS)} or the "
                    "name of one of the organisation's providers (GET /v1/providers)")})
    if problems:
        raise validation_failed(problems)


async def _check_skills(conn: Any, entries: list[str], operator_servers: Mapping[str, Any]) -> None:
    """Every entry names a built-in or a live skill of the org, at a version it has."""
    refs = [parse_ref(entry) for entry in entries]
    custom = [name for name, _ in refs if name not in builtin_catalogue() and name not in RUNNER_SKILLS]
    live = await skills.current_versions(conn, custom)
    problems = []
    for entry, (name, version) in zip(entries, refs, strict=True):
        if name in builtin_catalogue() or name in RUNNER_SKILLS:  # runner-only skills: AgentConfig checks
            continue
        mcp = split_mcp_name(name)
        if mcp is not None and mcp[0] in operator_servers:
            if version is not None:  # an operator's stdio server: its tools are read by workers only
                problems.append({"field": "skills", "message": f"{entry!r}: MCP tools have no versions"})
            continue
        if mcp is not None:
            server = await mcp_servers.get(conn, mcp[0])
            if version is not None:
                problems.append({"field": "skills", "message": f"{entry!r}: MCP tools have no versions"})
            elif server is None or mcp[1] not in {t["name"] for t in server["tools"]}:
                problems.append({"field": "skills", "message": f"unknown skill {name!r}: no MCP server "
                                 f"{mcp[0]!r} with a tool {mcp[1]!r} (refresh the server if the tool is new)"})
            continue
        if name not in live:
            problems.append({"field": "skills", "message": f"unknown skill {name!r}; GET /v1/skills lists the "
                                                           "skills of this organisation"})
        elif version is not None and version > live[name]:
            problems.append({"field": "skills", "message": f"{entry!r}: skill {name!r} is at version {live[name]}"})
        elif version is not None and await skills.get_version(conn, name, version) is None:
            problems.append({"field": "skills", "message": f"{entry!r}: skill {name!r} has no version {version}"})
    if problems:
        raise validation_failed(problems)


@endpoint("Create an agent.", role="member", body=AgentCreate, status=201, response=Agent, errors=("CONFLICT",))
async def create_agent(call: Call[AgentCreate]) -> Response:
    body, principal = call.body, call.principal
    config = validate(AgentConfig, body.model_dump(exclude={"name"})).model_dump(mode="json")
    try:
        async with tenant_tx(call.pool, principal.org_id) as conn:
            await _check_subagents(conn, body.subagents)
            await _check_models(conn, config)
            await _check_skills(conn, config["skills"], call.settings.mcp.stdio)
            row = await agents.create(conn, body.name, config, principal.user_id)
            await audit.record(conn, principal.actor, "agent.create", "agent", row["id"], {"name": body.name})
    except psycopg.errors.UniqueViolation:
        raise _name_taken(body.name) from None
    return call.reply(agents.to_public(row))


@endpoint("List agents, newest first.", paginated=True, response=page_of(Agent))
async def list_agents(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await agents.list_agents(conn, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page([agents.to_public(r) for r in data], next_cursor)


@endpoint("Read one agent.", response=Agent)
async def get_agent(call: Call[Any]) -> Response:
    agent_id = call.path_id("agent_id", "agent")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await agents.get(conn, agent_id)
    if row is None:
        raise _not_found(agent_id)
    return call.reply(agents.to_public(row))


@endpoint("Change an agent; the version goes up by one and the old one is kept (unless nothing changes).",
          role="member", body=AgentPatch, response=Agent, errors=("CONFLICT",))
async def patch_agent(call: Call[AgentPatch]) -> Response:
    agent_id = call.path_id("agent_id", "agent")
    changes = call.body.model_dump(exclude_unset=True)
    name = changes.pop("name", None)
    try:
        async with tenant_tx(call.pool, call.principal.org_id) as conn:
            current = await agents.get(conn, agent_id, for_update=True)
            if current is None:
                raise _not_found(agent_id)
            config = validate(AgentConfig, {**current["config"], **changes}).model_dump(mode="json")
            unchanged = validate(AgentConfig, current["config"]).model_dump(mode="json")
            if config == unchanged and (name is None or name == current["name"]):
                return call.reply(agents.to_public(current))  # nothing changes: no new version
            if "subagents" in changes:
                await _check_subagents(conn, config["subagents"], self_id=agent_id)
            if "model" in changes or "fallback_models" in changes:
                await _check_models(conn, config)
            if "skills" in changes:
                await _check_skills(conn, config["skills"], call.settings.mcp.stdio)
            row = await agents.update(conn, agent_id, name or current["name"], config, call.principal.user_id)
            assert row is not None
            await audit.record(conn, call.principal.actor, "agent.update", "agent", agent_id,
                               {"version": row["version"], "fields": sorted(call.body.model_fields_set)})
    except psycopg.errors.UniqueViolation:
        raise _name_taken(str(name)) from None
    return call.reply(agents.to_public(row))


@endpoint("Delete an agent. Its sessions and runs stay readable.", role="member", status=204)
async def delete_agent(call: Call[Any]) -> Response:
    agent_id = call.path_id("agent_id", "agent")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if not await agents.delete(conn, agent_id):
            raise _not_found(agent_id)
        await audit.record(conn, call.principal.actor, "agent.delete", "agent", agent_id)
    return Response(status_code=204)


@endpoint("An agent's version history, newest first.", response=page_of(AgentVersion))
async def agent_versions(call: Call[Any]) -> Response:
    agent_id = call.path_id("agent_id", "agent")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await agents.get(conn, agent_id) is None:
            raise _not_found(agent_id)
        rows = await agents.versions(conn, agent_id)
    data = [{"version": r["version"], "name": r["name"], **r["config"], "created_by": r["created_by"],
             "created_at": r["created_at"]} for r in rows]
    return call.page(data)


routes = [
    resource("/v1/agents", POST=create_agent, GET=list_agents),
    resource("/v1/agents/{agent_id}", GET=get_agent, PATCH=patch_agent, DELETE=delete_agent),
    resource("/v1/agents/{agent_id}/versions", GET=agent_versions),
]
