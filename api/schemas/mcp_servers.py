"""An org's MCP server with its cached tools."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from api.schemas.base import Out
from api.schemas.skills import SecretRefOut


class McpTool(Out):
    name: str
    skill: str | None = Field(description="The skill name agents use (`mcp_<server>_<tool>`); null if unusable.")
    description: str
    parameters: dict[str, Any]


class McpServer(Out):
    name: str
    url: str
    headers: dict[str, str | SecretRefOut]
    timeout_s: float
    sensitive: bool
    tools: list[McpTool]
    tools_refreshed_at: datetime | None
    last_error: str | None
    created_by: str | None
    created_at: datetime
