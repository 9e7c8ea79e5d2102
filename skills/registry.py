"""Skills: async functions a model may call as tools, with the JSON schema of their arguments
derived from the signature, and the registry that an agent's `skills` list is resolved against."""

from __future__ import annotations

import copy
import inspect
import pathlib
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from core.skill_names import BUILTIN_SKILLS, DELEGATE_TOOL
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
    sandbox: SandboxClient | None = None  # runs code_executor's code; None: no sandbox configured


class SkillError(Exception):
    """A failure the model should read (bad path, file missing...). str(e) is a readable sentence."""


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema (type: object) of the arguments
    func: SkillFunc  # async func(ctx: SkillContext, **args) -> a JSON-serialisable result
    sensitive: Sensitivity = False  # whether a call needs confirmation; may depend on the arguments
    _arguments: ArgumentSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"skill name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if not inspect.iscoroutinefunction(self.func):
            raise TypeError(f"skill {self.name!r}: the function must be async")
        object.__setattr__(self, "_arguments", ArgumentSpec(self.func, f"{self.name}_arguments"))

    def is_sensitive(self, args: dict[str, Any]) -> bool:
        return bool(self.sensitive(args)) if callable(self.sensitive) else self.sensitive

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments validated and coerced, defaults filled in; SkillError lists every problem."""
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


class SkillRegistry:
    """Skills by name. Agents name the skills they may use; `select` resolves that list."""

    def __init__(self) -> None:
        self._skills: dict[str, Skill] = {}

    def register(self, skill: Skill) -> None:
        if skill.name == DELEGATE_TOOL:
            raise ValueError(f"the skill name {DELEGATE_TOOL!r} is reserved for delegating to sub-agents")
        if skill.name in self._skills:
            raise ValueError(f"a skill named {skill.name!r} is already registered")
        self._skills[skill.name] = skill

    def get(self, name: str) -> Skill:
        try:
            return self._skills[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"unknown skill {name!r}; registered skills: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._skills)

    def __contains__(self, name: object) -> bool:
        return name in self._skills

    def select(self, names: Iterable[str]) -> list[Skill]:
        """The named skills in the given order; KeyError for a name that is not registered."""
        return [self.get(name) for name in names]


def default_registry() -> SkillRegistry:
    """A new registry holding every built-in skill, checked against `core.skill_names`."""
    from skills.builtin import BUILTINS  # here, not at the top: the built-ins import this module

    registry = SkillRegistry()
    for builtin in BUILTINS:
        registry.register(builtin)
    if registry.names() != sorted(BUILTIN_SKILLS):
        raise AssertionError(
            f"built-in skills {registry.names()} differ from core.skill_names.BUILTIN_SKILLS {sorted(BUILTIN_SKILLS)}"
        )
    return registry
