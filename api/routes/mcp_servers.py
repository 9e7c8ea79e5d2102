"""MCP servers: an org registers a server by its streamable-HTTP URL (never a command); its tools
become skills named `mcp_<server>_<tool>`. The tool list is read at registration and cached;
`POST .../refresh` reads it again. Reading it goes through the outbound SSRF guard."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from pydantic import Field
from starlette.responses import Response

from api.endpoint import Call, NoBody, endpoint, resource, validation_failed
from api.schemas import mcp_servers as schema
from api.schemas.base import page_of
from core.errors import ApiError
from core.mcp_client import McpError, endpoint_for, list_tools
from core.secrets import Keyring
from core.skill_defs import MCP_SERVER_PATTERN, McpServer, mcp_skill_name
from core.store import audit
from core.store import mcp_servers as store
from core.tenancy import tenant_tx


class McpServerCreate(McpServer):
    name: str = Field(pattern=MCP_SERVER_PATTERN)


def public(row: store.McpServerRow) -> dict[str, Any]:
    tools = [{"name": t["name"], "skill": mcp_skill_name(row["name"], t["name"]), "description": t["description"],
              "parameters": t["input_schema"]} for t in row["tools"]]
    return {"name": row["name"], "url": row["url"], "headers": row["headers"], "timeout_s": row["timeout_s"],
            "sensitive": row["sensitive"], "tools": tools, "tools_refreshed_at": row["tools_refreshed_at"],
            "last_error": row["last_error"], "created_by": row["created_by"], "created_at": row["created_at"]}


def _not_found(name: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No MCP server named {name!r} in this organisation.")


def _name(call: Call[Any]) -> str:
    name = str(call.request.path_params["name"])
    if not re.match(MCP_SERVER_PATTERN, name):
        raise _not_found(name)
    return name


async def _refresh(call: Call[Any], row: store.McpServerRow, audited: bool = False) -> store.McpServerRow:
    """Read the server's tools now; on failure keep the cached list and record why. `audited`:
    an admin asked for it (a creation is audited as such)."""
    org_id = call.principal.org_id
    tools: list[dict[str, Any]] | None
    try:
        endpoint = await endpoint_for(call.pool, Keyring.from_settings(call.settings.secrets), call.settings.outbound,
                                      org_id, row["url"], row["headers"], row["timeout_s"])
        tools, error = await list_tools(endpoint), None
    except McpError as exc:
        tools, error = None, str(exc)
    async with tenant_tx(call.pool, org_id) as conn:
        updated = await store.set_tools(conn, row["name"], tools, error)
        if updated is not None and audited:
            await audit.record(conn, call.principal.actor, "mcp_server.refresh", "mcp_server", row["id"],
                               {"name": row["name"], "tools": None if tools is None else len(tools), "error": error})
    if updated is None:
        raise _not_found(row["name"])
    return updated


@endpoint("Register an MCP server by its streamable-HTTP URL and read its tools (a failure to read them is "
          "recorded in last_error; refresh later).", role="admin", body=McpServerCreate, status=201,
          response=schema.McpServer, errors=("CONFLICT",))
async def create_server(call: Call[McpServerCreate]) -> Response:
    body, principal = call.body, call.principal
    if body.name in call.settings.mcp.stdio:
        raise validation_failed([{"field": "name", "message": f"{body.name!r} is the name of an MCP server the "
                                  "operator provides to every organisation; choose another"}])
    try:
        async with tenant_tx(call.pool, principal.org_id) as conn:
            row = await store.create(conn, body.name, body.url, body.model_dump(mode="json")["headers"],
                                     body.timeout_s, body.sensitive, principal.user_id)
            await audit.record(conn, principal.actor, "mcp_server.create", "mcp_server", row["id"],
                               {"name": body.name, "url": body.url})
    except psycopg.errors.UniqueViolation:
        raise ApiError("CONFLICT", f"An MCP server named {body.name!r} already exists.",
                       details={"field": "name"}) from None
    return call.reply(public(await _refresh(call, row)))


@endpoint("List the org's MCP servers with their cached tools.", response=page_of(schema.McpServer))
async def list_servers(call: Call[Any]) -> Response:
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.list_servers(conn)
    return call.page([public(r) for r in rows])


@endpoint("Read one MCP server with its cached tools.", response=schema.McpServer)
async def get_server(call: Call[Any]) -> Response:
    name = _name(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, name)
    if row is None:
        raise _not_found(name)
    return call.reply(public(row))


@endpoint("Read the server's tool list again (runs started later see the new list).", role="admin",
          body=NoBody, response=schema.McpServer)
async def refresh_server(call: Call[NoBody]) -> Response:
    name = _name(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, name)
    if row is None:
        raise _not_found(name)
    return call.reply(public(await _refresh(call, row, audited=True)))


@endpoint("Remove an MCP server; agents naming its tools no longer get them.", role="admin", status=204)
async def delete_server(call: Call[Any]) -> Response:
    name = _name(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if not await store.delete(conn, name):
            raise _not_found(name)
        await audit.record(conn, call.principal.actor, "mcp_server.delete", "mcp_server", None, {"name": name})
    return Response(status_code=204)


routes = [
    resource("/v1/mcp-servers", GET=list_servers, POST=create_server),
    resource("/v1/mcp-servers/{name}", GET=get_server, DELETE=delete_server),
    resource("/v1/mcp-servers/{name}/refresh", POST=refresh_server),
]
