"""An MCP server over stdio (the `mcp` package's FastMCP), for the operator-configured stdio
server test: `python tests/mcp_stdio_server.py`. `pid` tells which process answered."""

from __future__ import annotations

import os

from mcp.server.fastmcp import FastMCP

server = FastMCP("agentos-stdio-test", log_level="WARNING")


@server.tool()
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


@server.tool()
def pid() -> int:
    """This server process's id."""
    return os.getpid()


if __name__ == "__main__":
    server.run("stdio")
