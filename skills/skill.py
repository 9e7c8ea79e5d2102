"""A skill: an async function a model may call as a tool, with the JSON schema of its arguments
derived from the signature (`@skill`), and what it is handed (`SkillContext`) or may raise
(`SkillError`). Built-in and custom skills are made the same way."""

from __future__ import annotations

import copy
import inspect
import pathlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from core.infra import Infra
from core.metering import Meter
from core.outbound import Outbound
from core.secrets import Keyring, SecretError, SecretNotFound, read_secret
from core.store import orgs
from memory.service import MemoryService
from skills.arguments import ArgumentSpec, describe_errors
from skills.sandbox.client import SandboxClient

SkillFunc = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=SkillFunc)
Sensitivity = bool | Callable[[dict[str, Any]], bool]

# What OpenAI and Anthropic accept as a tool name.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class SkillContext:
    """Who is calling, and where: handed to every skill as its first argument.

    After a worker crash a call may be invoked again with the same `tool_call_id` (a finished
    call never is): a skill with side effects should key them by it, so they happen once.
    """

    org_id: str
    session_id: str
    run_id: str
    agent_id: str
    tool_call_id: str
    workspace: pathlib.Path  # the session's workspace directory; skills create it if missing
    user_id: str | None = None  # the session's end user, if the caller named one
    memory: MemoryService | None = None  # remember/recall for this org, agent, user and session
    knowledge: bool = False  # whether the agent may read the org's knowledge base
    hybrid: bool = False  # knowledge chunks found by vector and full text (the agent's memory.hybrid)
    sandbox: SandboxClient | None = None  # runs code_executor's code; None: no sandbox configured
    # The worker's connections (settings, Postgres, Redis): for org secrets, caches and outbound
    # requests. None only where a skill is called outside a worker (some tests).
    infra: Infra | None = None
    # Records what a call used beyond model tokens (sandbox CPU time), once per tool call.
    meter: Meter | None = None

    def require_infra(self) -> Infra:
        if self.infra is None:
            raise SkillError("This skill needs the worker's services, which this call does not have.")
        return self.infra

    async def find_secret(self, name: str) -> str | None:
        """The value of this org's secret `name`, None if the org has none by that name; a
        SkillError naming it (never its value) if it does not decrypt."""
        infra = self.require_infra()
        try:
            return await read_secret(infra.pool, Keyring.from_settings(infra.settings.secrets), self.org_id, name)
        except SecretNotFound:
            return None
        except SecretError as exc:
            raise SkillError(f"Cannot use the secret {name!r}: {exc}.") from None

    async def secret(self, name: str) -> str:
        """The value of this org's secret `name`; a SkillError if it is missing or unreadable."""
        value = await self.find_secret(name)
        if value is None:
            raise SkillError(f"Cannot use the secret {name!r}: {SecretNotFound(name)}.")
        return value

    async def org_settings(self) -> dict[str, Any]:
        """The org's operator-set options (`orgs.settings`: `web_search_provider`,
        `outbound_allow`, ...)."""
        return await orgs.org_settings(self.require_infra().pool, self.org_id)

    @asynccontextmanager
    async def outbound(self, allow: Sequence[str] = ()) -> AsyncIterator[Outbound]:
        """`async with ctx.outbound() as http:` an HTTP client with the SSRF guard and the
        operator's limits (`core.outbound`). Its allowlist is the operator's, plus the org's
        `outbound_allow` (hosts or CIDRs the operator opened for this org), plus `allow`."""
        infra = self.require_infra()
        org_allow = (await self.org_settings()).get("outbound_allow") or []
        if not isinstance(org_allow, list):
            org_allow = []
        async with Outbound(infra.settings.outbound, allow=[*map(str, org_allow), *allow]) as http:
            yield http


class SkillError(Exception):
    """A failure the model should read (bad path, file missing...). str(e) is a readable sentence."""


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema (type: object) of the arguments
    func: SkillFunc  # async func(ctx: SkillContext, **args) -> a JSON-serialisable result
    sensitive: Sensitivity = False  # whether a call needs confirmation; may depend on the arguments
    # A skill defined by data (an org's HTTP skill, an MCP tool) declares `parameters` itself and
    # checks calls against it with this (`skills.arguments.schema_validator`); its func takes
    # `(ctx, **args)`. Without one, arguments come from the func's signature.
    validator: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)
    version: int | None = None  # an org's own skill: the version this object was built from
    _arguments: ArgumentSpec | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"skill name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if not inspect.iscoroutinefunction(self.func):
            raise TypeError(f"skill {self.name!r}: the function must be async")
        spec = None if self.validator is not None else ArgumentSpec(self.func, f"{self.name}_arguments")
        object.__setattr__(self, "_arguments", spec)

    def is_sensitive(self, args: dict[str, Any]) -> bool:
        return bool(self.sensitive(args)) if callable(self.sensitive) else self.sensitive

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments validated and coerced, defaults filled in; SkillError lists every problem."""
        if self.validator is not None:
            try:
                return self.validator(args)
            except ValueError as error:
                raise SkillError(f"Invalid arguments for {self.name}: {error}") from None
        assert self._arguments is not None
        try:
            return self._arguments.validate(args)
        except ValidationError as error:
            raise SkillError(f"Invalid arguments for {self.name}: {describe_errors(error)}") from None

    async def invoke(self, ctx: SkillContext, args: dict[str, Any]) -> Any:
        return await self.func(ctx, **self.validate(args))

    def tool_spec(self) -> dict[str, Any]:
        """The OpenAI function-tool description of this skill."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.parameters),
            },
        }


def skill(
    *, name: str | None = None, description: str | None = None, sensitive: Sensitivity = False
) -> Callable[[F], Skill]:
    """Turn `async def f(ctx: SkillContext, ...)` into a Skill.

    The parameters after `ctx` become the arguments: type hints (Literal for enums), defaults, and
    descriptions via `Annotated[T, Field(description=...)]`. The description defaults to the docstring."""

    def build(func: F) -> Skill:
        text = description if description is not None else inspect.getdoc(func)
        if not text:
            raise TypeError(f"{func.__qualname__}: a skill needs a description (or a docstring)")
        skill_name = name or func.__name__
        parameters = ArgumentSpec(func, f"{skill_name}_arguments").json_schema()
        return Skill(skill_name, text, parameters, func, sensitive)

    return build
