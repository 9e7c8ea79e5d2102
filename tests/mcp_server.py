"""A real MCP server (the `mcp` package's FastMCP, streamable HTTP) on 127.0.0.1 in a thread, for
tests: `with McpTestServer() as server: server.url`. Its tools report what they saw, so tests can
check headers and that a run keeps one session."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType

import uvicorn
from mcp.server.fastmcp import Context, FastMCP


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_server(port: int) -> FastMCP:
    mcp = FastMCP("agentos-test", host="127.0.0.1", port=port, log_level="WARNING")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    def whoami(ctx: Context) -> dict[str, str]:  # type: ignore[type-arg]
        """The caller's Authorization header and MCP session id, as the server saw them."""
        request = ctx.request_context.request
        headers = request.headers if request is not None else {}
        return {"authorization": headers.get("authorization", ""), "session": headers.get("mcp-session-id", "")}

    @mcp.tool()
    def fail() -> str:
        """Always fails."""
        raise ValueError("the tool broke on purpose")

    @mcp.tool()
    async def slow(seconds: float) -> str:
        """Answer after `seconds`."""
        await asyncio.sleep(seconds)
        return "late"

    return mcp


class McpTestServer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        app = build_server(self.port).streamable_http_app()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="mcp-test-server", daemon=True)

    def __enter__(self) -> McpTestServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._server.should_exit = True
        self._server.force_exit = True  # streams of open sessions would hold a graceful stop
        self._thread.join(timeout=10)
