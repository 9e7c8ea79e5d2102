"""The skill catalogue: built-ins, the org's HTTP skills (versioned) and its MCP servers' tools."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, RootModel

from api.schemas.base import Out


class SecretRefOut(Out):
    secret: str


class BuiltinSkill(Out):
    name: str
    kind: Literal["builtin"]
    version: None
    description: str
    parameters: dict[str, Any]
    sensitive: bool | Literal["by_arguments"]


class HttpSkill(Out):
    name: str
    kind: Literal["http"]
    version: int
    description: str
    parameters: dict[str, Any]
    url: str
    method: Literal["POST", "PUT", "PATCH"]
    headers: dict[str, str | SecretRefOut]
    signing_secret: SecretRefOut
    timeout_s: float
    sensitive: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime | None = Field(default=None, description="Absent on a version read from the history.")


class McpSkill(Out):
    name: str = Field(description="`mcp_<server>_<tool>`.")
    kind: Literal["mcp"]
    version: None
    server: str
    tool: str
    description: str
    parameters: dict[str, Any]
    sensitive: bool


class Skill(RootModel[Annotated[BuiltinSkill | HttpSkill | McpSkill, Field(discriminator="kind")]]):
    """A skill, by `kind`."""
