"""What an org's own skill is, as stored per version and validated by the API and the worker:
`SkillDefinition` (today one kind, `http`), and how an agent names a skill (`name` follows the
latest version, `name@3` pins version 3)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from core.skill_names import BUILTIN_SKILLS, DELEGATE_TOOL

# Lower-case so a name reads the same everywhere; no '@' (the pin separator) and no '-'.
CUSTOM_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# Names derived from an MCP server's tools; an org's own skill cannot take one.
MCP_PREFIX = "mcp_"
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_-]{1,64})(?:@(?P<version>[0-9]{1,9}))?$")
# Headers AgentOS sets itself on a call (signature, idempotency, framing).
RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "idempotency-key",
                              "content-type", "content-length", "host", "transfer-encoding", "connection"})


def check_http_url(value: str) -> str:
    """An absolute http(s) URL with a host and a valid port, that both `urllib` and the worker's
    client (httpx) parse: a URL that could never be called is refused when it is registered, not
    stored (where it fails every call, and trips up whatever parses it later)."""
    try:
        parts = urlsplit(value)
        valid = (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
                 and not any(c.isspace() or not c.isprintable() for c in value) and bool(httpx.URL(value).host))
    except (httpx.InvalidURL, ValueError):  # a bad IPv6 literal, a port out of range
        valid = False
    if not valid:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. 'https://example.com/hook'")
    return value


HttpUrlText = Annotated[str, Field(pattern=r"^https?://", max_length=2000), AfterValidator(check_http_url)]


def parse_ref(entry: str) -> tuple[str, int | None]:
    """`name` -> (name, None); `name@3` -> (name, 3). ValueError for anything else."""
    match = _REF.match(entry)
    if match is None:
        raise ValueError(f"{entry!r} is not a skill reference; write 'name' or 'name@version', e.g. 'lookup@2'")
    version = match.group("version")
    if version is not None and int(version) < 1:
        raise ValueError(f"{entry!r}: versions start at 1")
    return match.group("name"), int(version) if version is not None else None


def check_refs(entries: list[str]) -> list[str]:
    """An agent's `skills` list checked for shape: each entry parses, no skill twice, built-ins
    unpinned (they have no versions). Whether custom names exist is the API's check."""
    seen: set[str] = set()
    for entry in entries:
        name, version = parse_ref(entry)
        if name in seen:
            raise ValueError(f"skill {name!r} is listed twice")
        seen.add(name)
        if name == DELEGATE_TOOL:
            raise ValueError(f"{DELEGATE_TOOL!r} is not a skill; list sub-agents under 'subagents'")
        if version is not None and name in BUILTIN_SKILLS:
            raise ValueError(f"{entry!r}: built-in skills have no versions; write {name!r}")
    return entries


def check_custom_name(name: str) -> str:
    if name in BUILTIN_SKILLS or name == DELEGATE_TOOL:
        raise ValueError(f"{name!r} is the name of a built-in skill; choose another")
    if name.startswith(MCP_PREFIX):
        raise ValueError(f"names starting with {MCP_PREFIX!r} are reserved for MCP servers' tools")
    return name


def check_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema (draft 2020-12) of type object: what a model fills in and a call is checked against."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"is not a valid JSON schema: {exc.message}") from None
    if schema.get("type") != "object":
        raise ValueError("must be a JSON schema with \"type\": \"object\" (a tool's arguments are an object)")
    return schema


class SecretRef(BaseModel):
    """A value held as an org secret, named here and read by the worker when it is used."""

    model_config = ConfigDict(extra="forbid")
    secret: str = Field(min_length=1, max_length=100)


HeaderValue = Annotated[str, Field(max_length=4000)] | SecretRef


class HttpSkill(BaseModel):
    """An HTTP endpoint of the org's, called with the validated arguments as a signed JSON body."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["http"] = "http"
    description: str = Field(min_length=1, max_length=4000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: HttpUrlText
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, HeaderValue] = Field(default_factory=dict, max_length=20)
    # The org secret whose value keys the Standard Webhooks signature of every call.
    signing_secret: SecretRef
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    sensitive: bool = False

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_parameters(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9-]{1,100}$", name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by AgentOS on every call and cannot be configured")
        return value


# Every kind an org may define through POST /v1/skills (MCP tools come from their servers).
SkillDefinition = HttpSkill


# --- MCP servers: their tools are skills named mcp_<server>_<tool> -------------------------------

# No '_' in a server's name, so `mcp_<server>_<tool>` splits one way.
MCP_SERVER_PATTERN = r"^[a-z][a-z0-9]{0,15}$"
_SKILL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def mcp_skill_name(server: str, tool: str) -> str | None:
    """The skill name of a server's tool; None if the tool's name cannot make one."""
    name = f"{MCP_PREFIX}{server}_{tool}"
    return name if _SKILL_NAME.match(name) else None


def split_mcp_name(name: str) -> tuple[str, str] | None:
    """(server, tool) of `mcp_<server>_<tool>`, None for other names."""
    if not name.startswith(MCP_PREFIX):
        return None
    server, sep, tool = name[len(MCP_PREFIX):].partition("_")
    return (server, tool) if sep and server and tool else None


class McpServer(BaseModel):
    """An MCP server of the org's, reached by streamable HTTP. There is deliberately no way to
    name a command: a tenant can never make a worker start a process."""

    model_config = ConfigDict(extra="forbid")
    url: HttpUrlText
    headers: dict[str, HeaderValue] = Field(default_factory=dict, max_length=20)
    timeout_s: float = Field(default=20.0, gt=0, le=120)
    sensitive: bool = False  # whether each of its tools' calls waits for a human
