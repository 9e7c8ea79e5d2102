"""MCP servers over streamable HTTP (the `mcp` client, 1.x): list a server's tools, and
`McpConnection`, one session per run per server that serves every call of that run.

Every request goes through the outbound SSRF guard: the URL's host is checked first (so a
refusal is a readable sentence), and the HTTP client connects only to addresses the guard
checked, redirects included. Tenants give a URL only: there is no way for them to name a command
(that would be arbitrary command execution on the worker); stdio servers (`StdioEndpoint`) come
from the operator's settings only (`settings.mcp.stdio`). Every failure is an `McpError`
whose text a model or an admin can read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx

from core.outbound import AddressGuard, OutboundError, guarded_client
from core.secrets import Keyring, SecretError, resolve_refs
from core.settings import OutboundSettings, StdioMcpServer
from core.store.orgs import org_settings
from core.tenancy import AsyncPool

if TYPE_CHECKING:  # the `mcp` package is imported where a session is opened (~0.4 s at start-up)
    from mcp import ClientSession
    from mcp.types import CallToolResult

log = logging.getLogger("agentos.mcp")
MAX_TOOLS = 200


class McpError(Exception):
    """A failure talking to an MCP server; str(e) is a readable sentence."""


@dataclass(frozen=True)
class McpEndpoint:
    """Where and how to reach one server: its URL, headers (secrets already resolved), time limit,
    and the org's extra allowlist for internal addresses."""

    url: str
    headers: dict[str, str]
    timeout_s: float
    outbound: OutboundSettings
    allow: Sequence[str] = ()

    @property
    def label(self) -> str:
        return f"The MCP server at {self.url}"

    @contextlib.asynccontextmanager
    async def streams(self) -> AsyncIterator[tuple[Any, Any]]:
        from mcp.client.streamable_http import streamable_http_client

        client = await self._checked_client()
        async with client, streamable_http_client(self.url, http_client=client) as (read, write, _):
            yield read, write

    async def _checked_client(self) -> httpx.AsyncClient:
        guard = AddressGuard.from_settings(self.outbound, allow=self.allow)
        try:
            parsed = httpx.URL(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise McpError(f"{self.url!r} is not an http(s) URL.")
            await guard.resolve(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
        except OutboundError as exc:
            raise McpError(f"The MCP server at {self.url} cannot be reached: {exc}") from None
        except httpx.InvalidURL:
            raise McpError(f"{self.url!r} is not a valid URL.") from None
        # Its every connection passes the guard again (DNS rebinding, redirects).
        return guarded_client(self.outbound, allow=self.allow,
                              headers={"User-Agent": self.outbound.user_agent, **self.headers},
                              timeout=httpx.Timeout(self.timeout_s, connect=min(self.outbound.connect_timeout_s,
                                                                                self.timeout_s)))


@dataclass(frozen=True)
class StdioEndpoint:
    """An operator's stdio server (`settings.mcp.stdio`): a local process started per session.
    Only settings make one; nothing a tenant sends can."""

    name: str
    server: StdioMcpServer

    @property
    def timeout_s(self) -> float:
        return self.server.timeout_s

    @property
    def label(self) -> str:
        return f"The MCP server {self.name!r}"

    @contextlib.asynccontextmanager
    async def streams(self) -> AsyncIterator[tuple[Any, Any]]:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=self.server.command, args=self.server.args,
                                       env=self.server.env or None)
        with open(os.devnull, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                yield read, write


Endpoint = McpEndpoint | StdioEndpoint


def _failure(endpoint: Endpoint, exc: BaseException) -> McpError:
    if isinstance(exc, McpError):
        return exc
    if isinstance(exc, BaseExceptionGroup):  # anyio task groups wrap what went wrong
        first = exc.exceptions[0]
        return _failure(endpoint, first)
    if isinstance(exc, TimeoutError):
        return McpError(f"{endpoint.label} did not answer within {endpoint.timeout_s:g} s.")
    if isinstance(exc, OutboundError):
        return McpError(f"{endpoint.label} cannot be reached: {exc}")
    if isinstance(exc, httpx.HTTPStatusError):
        return McpError(f"{endpoint.label} answered HTTP {exc.response.status_code}.")
    return McpError(f"{endpoint.label} failed ({type(exc).__name__}: {str(exc)[:200]}).")


async def list_tools(endpoint: Endpoint) -> list[dict[str, Any]]:
    """The server's tools as `{name, description, input_schema}` (at most MAX_TOOLS)."""
    from mcp import ClientSession

    try:
        async with asyncio.timeout(endpoint.timeout_s), endpoint.streams() as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await _tools(session)
    except Exception as exc:
        raise _failure(endpoint, exc) from None


async def _tools(session: ClientSession) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(tools) < MAX_TOOLS:
        page = await session.list_tools(cursor)
        tools += [{"name": t.name, "description": t.description or "", "input_schema": t.inputSchema}
                  for t in page.tools]
        cursor = page.nextCursor
        if not cursor:
            break
    return tools[:MAX_TOOLS]


def result_value(result: CallToolResult) -> Any:
    """What a tool call returned, for the model: its structured content, else its text."""
    from mcp.types import TextContent

    text = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
    if result.isError:
        raise McpError(f"The tool reported an error: {text or 'no details'}")
    if result.structuredContent is not None:
        return result.structuredContent
    others = [c.type for c in result.content if not isinstance(c, TextContent)]
    return text if not others else {"text": text, "other_content": others}


class McpConnection:
    """One MCP session for one run: opened at the first call, used by every later call, closed
    when the run ends. A background task owns the session (the client's task groups must be
    entered and left by one task); calls reach it through a queue."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        # (tool, args, answer); tool None asks for the tool list
        self._queue: asyncio.Queue[tuple[str | None, dict[str, Any], asyncio.Future[Any]] | None] = asyncio.Queue()
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def call(self, tool: str, args: dict[str, Any]) -> Any:
        return result_value(await self._ask(tool, args))

    async def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools, read through this connection's session."""
        tools: list[dict[str, Any]] = await self._ask(None, {})
        return tools

    async def _ask(self, tool: str | None, args: dict[str, Any]) -> Any:
        if self._task is None or self._task.done() and self._ready is not None and self._ready.exception():
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._serve(self._ready))
        assert self._ready is not None
        try:
            async with asyncio.timeout(self.endpoint.timeout_s):
                await asyncio.shield(self._ready)
                done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                await self._queue.put((tool, args, done))
                return await done
        except Exception as exc:
            raise _failure(self.endpoint, exc) from None

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        from mcp import ClientSession

        item = None
        try:
            async with self.endpoint.streams() as (read, write), ClientSession(read, write) as session:
                async with asyncio.timeout(self.endpoint.timeout_s):
                    await session.initialize()
                ready.set_result(None)
                while (item := await self._queue.get()) is not None:
                    tool, args, done = item
                    try:
                        result: Any = await _tools(session) if tool is None else await session.call_tool(
                            tool, args, read_timeout_seconds=timedelta(seconds=self.endpoint.timeout_s))
                    except Exception as exc:
                        if not done.done():
                            done.set_exception(exc)
                    else:
                        if not done.done():
                            done.set_result(result)
        except Exception as exc:
            failure = _failure(self.endpoint, exc)
            if not ready.done():
                ready.set_exception(failure)
            if item is not None and not item[2].done():
                item[2].set_exception(failure)
            log.warning("MCP session ended: %s", failure)

    async def aclose(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._queue.put(None)
        try:
            async with asyncio.timeout(5):
                await asyncio.shield(self._task)
        except (TimeoutError, Exception):
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def endpoint_for(pool: AsyncPool, keyring: Keyring, outbound: OutboundSettings, org_id: str, url: str,
                       headers: dict[str, Any], timeout_s: float) -> McpEndpoint:
    """The endpoint of an org's server: header secrets read now, the org's `outbound_allow` applied.
    Raises McpError naming a secret that cannot be read (never its value)."""
    try:
        resolved = await resolve_refs(pool, keyring, org_id, headers)
    except SecretError as exc:
        raise McpError(f"A header of the MCP server at {url} names a secret that cannot be used: {exc}.") from None
    allow = (await org_settings(pool, org_id)).get("outbound_allow") or []
    return McpEndpoint(url, {str(k): str(v) for k, v in resolved.items()}, timeout_s, outbound,
                       [str(a) for a in allow] if isinstance(allow, list) else [])
