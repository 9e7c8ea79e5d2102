"""`RunSkills`: the skills one run may use. The worker's built-ins, plus the org's own skills at
the versions the run resolved when it first started (`core.store.skills.resolve_run`) or that an
agent pins (`name@3`). Versions are immutable, so a skill changed mid-run changes nothing here.
MCP servers' tools (`mcp_<server>_<tool>`) come from the server's cached tool list, read once
per run; their calls share one MCP session per server for the run (`aclose` ends them)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from core.agent_config import RunnerRoute
from core.mcp_client import McpConnection, McpError, StdioEndpoint, endpoint_for
from core.secrets import Keyring
from core.settings import Settings, StdioMcpServer
from core.skill_defs import parse_ref, split_mcp_name
from core.store import mcp_servers
from core.store import skills as skill_store
from core.store.mcp_servers import McpServerRow
from core.tenancy import AsyncPool, tenant_tx
from skills.arguments import schema_validator
from skills.registry import SkillRegistry
from skills.remote import RUNNER_ONLY, remote
from skills.skill import Skill, SkillContext, SkillError

log = logging.getLogger("agentos.skills")

# Builds the Skill of one stored version of an org's skill: (name, version, definition) -> Skill.
SkillBuilder = Callable[[str, int, dict[str, Any]], Skill]


class RunSkills:
    """Skills by an agent's `skills` entries, for one run (shared by its sub-agents)."""

    def __init__(self, builtins: SkillRegistry, pool: AsyncPool, org_id: str, resolved: Mapping[str, int],
                 builders: Mapping[str, SkillBuilder], settings: Settings | None = None) -> None:
        self.builtins = builtins
        self.resolved = dict(resolved)  # {name: version} of the org's skills when the run started
        self._pool = pool
        self._org_id = org_id
        self._builders = builders
        self._custom: dict[tuple[str, int], Skill | None] = {}
        self._settings = settings  # None: no MCP servers (nothing to reach them with)
        self._servers: dict[str, McpServerRow | None] = {}  # read once per run
        self._mcp_skills: dict[str, Skill | None] = {}
        self._connections: dict[str, McpConnection] = {}  # one session per server per run

    async def for_agent(self, entries: list[str], route: RunnerRoute | None = None) -> dict[str, Skill]:
        """Tool name -> Skill for an agent's entries, in order. An entry naming nothing this run
        can use (a skill deleted before the run, a kind this worker lacks) is left out and logged.
        Skills the agent routes to a runner (`route`) are executed there (`skills.remote`)."""
        found: dict[str, Skill] = {}
        for entry in entries:
            name, pinned = parse_ref(entry)
            if route is not None and route.routes(name):
                base = RUNNER_ONLY.get(name) or (self.builtins.get(name) if name in self.builtins else None)
                if base is not None:
                    timeout = self._settings.runners.call_timeout_s if self._settings is not None else 300.0
                    found[name] = remote(base, route, timeout)
                    continue
            if name in self.builtins:
                found[name] = self.builtins.get(name)
                continue
            mcp = split_mcp_name(name)
            if mcp is not None:
                skill = await self._mcp_skill(name, *mcp)
            else:
                version = pinned or self.resolved.get(name)
                skill = await self._load(name, version) if version is not None else None
            if skill is None:
                log.warning("run skills of org %s: %r names no skill this run can use", self._org_id, entry)
                continue
            found[name] = skill
        return found

    async def _load(self, name: str, version: int) -> Skill | None:
        key = (name, version)
        if key not in self._custom:
            async with tenant_tx(self._pool, self._org_id) as conn:
                row = await skill_store.get_version(conn, name, version)
            self._custom[key] = self._build(name, version, row["definition"]) if row is not None else None
        return self._custom[key]

    async def _mcp_skill(self, name: str, server_name: str, tool_name: str) -> Skill | None:
        if name not in self._mcp_skills:
            self._mcp_skills[name] = None
            server = await self._server(server_name)
            tool = next((t for t in server["tools"] if t["name"] == tool_name), None) if server else None
            if server is not None and tool is not None:
                try:
                    self._mcp_skills[name] = self._mcp_tool_skill(name, server, tool)
                except Exception:  # a tool whose schema cannot be used is left out
                    log.exception("MCP tool %s of org %s could not be made a skill", name, self._org_id)
        return self._mcp_skills[name]

    async def _server(self, name: str) -> McpServerRow | None:
        if name not in self._servers:
            operator = self._settings.mcp.stdio.get(name) if self._settings is not None else None
            if operator is not None:
                self._servers[name] = await self._operator_server(name, operator)
            else:
                async with tenant_tx(self._pool, self._org_id) as conn:
                    self._servers[name] = await mcp_servers.get(conn, name)
        return self._servers[name]

    async def _operator_server(self, name: str, server: StdioMcpServer) -> McpServerRow | None:
        """An operator's stdio server: its tools read through the run's session with it (no
        cache: the API cannot start processes, and the operator's server is the same for all)."""
        connection = self._connections.setdefault(name, McpConnection(StdioEndpoint(name, server)))
        try:
            tools = await connection.list_tools()
        except McpError as exc:
            log.warning("operator MCP server %s: %s", name, exc)
            return None
        return {"id": name, "name": name, "url": f"stdio:{name}", "headers": {}, "timeout_s": server.timeout_s,
                "sensitive": server.sensitive, "tools": tools, "tools_refreshed_at": None, "last_error": None,
                "created_by": None, "created_at": datetime.now(UTC)}

    def _mcp_tool_skill(self, name: str, server: McpServerRow, tool: dict[str, Any]) -> Skill:
        schema = dict(tool.get("input_schema") or {"type": "object", "properties": {}})
        description = str(tool.get("description") or f"The tool {tool['name']} of the MCP server {server['name']}.")

        async def call(ctx: SkillContext, **args: Any) -> Any:
            try:
                connection = await self._connection(server)
                return await connection.call(str(tool["name"]), args)
            except McpError as exc:
                raise SkillError(str(exc)) from None

        return Skill(name, description, schema, call, server["sensitive"], validator=schema_validator(schema))

    async def _connection(self, server: McpServerRow) -> McpConnection:
        if self._settings is None:
            raise McpError("This worker cannot reach MCP servers.")
        if server["name"] not in self._connections:
            endpoint = await endpoint_for(self._pool, Keyring.from_settings(self._settings.secrets),
                                          self._settings.outbound, self._org_id, server["url"], server["headers"],
                                          server["timeout_s"])
            self._connections[server["name"]] = McpConnection(endpoint)
        return self._connections[server["name"]]

    async def aclose(self) -> None:
        """End the run's MCP sessions."""
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await connection.aclose()

    def _build(self, name: str, version: int, definition: dict[str, Any]) -> Skill | None:
        builder = self._builders.get(str(definition.get("kind")))
        if builder is None:
            return None
        try:
            return builder(name, version, definition)
        except Exception:  # a stored definition this code cannot use: leave the skill out
            log.exception("skill %s@%s of org %s could not be built", name, version, self._org_id)
            return None
