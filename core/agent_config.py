"""The shape of an agent's configuration, shared by the API (validation) and the runtime."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.skill_defs import check_refs, parse_ref
from core.skill_names import RUNNER_CAPABLE, RUNNER_SKILLS

MODEL_PROVIDERS = ("offline", "openai", "anthropic")
BUILTIN_PROVIDERS = frozenset(MODEL_PROVIDERS)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$"
# An org's own model provider (POST /v1/providers), named in a model spec as `<name>:<model>`.
PROVIDER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_PROVIDER_NAME = re.compile(PROVIDER_NAME_PATTERN)


def validate_model_spec(spec: str) -> str:
    """`provider:model`, with a built-in provider or what can name one of the org's own (whether
    that one exists is known when a run resolves it: MODEL_CONFIG otherwise)."""
    provider, sep, model = spec.partition(":")
    if not sep or not model.strip():
        raise ValueError("model must look like 'provider:model', e.g. 'offline:default'")
    if provider not in MODEL_PROVIDERS and not _PROVIDER_NAME.match(provider):
        raise ValueError(f"unknown model provider {provider!r}; use one of {', '.join(MODEL_PROVIDERS)} or the "
                         "name of one of the organisation's providers (GET /v1/providers)")
    return spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentLimits(_Strict):
    max_steps: int = Field(default=25, ge=1, le=1000)
    max_tokens: int = Field(default=100_000, ge=1, le=10_000_000)
    timeout_s: int = Field(default=600, ge=1, le=86_400)


class AgentMemory(_Strict):
    short_term_tokens: int = Field(default=4000, ge=0, le=1_000_000)
    long_term: bool = True
    knowledge: bool = False
    # Knowledge chunks found by vector and by full text, fused by rank (memory/hybrid.py).
    hybrid: bool = False


class RunnerRoute(_Strict):
    """Which remote runner executes which of the agent's skills (docs/runners.md): the runner
    named `name`, or any connected runner whose labels include all of `labels`."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    labels: dict[str, str] = Field(default_factory=dict, max_length=20)
    skills: list[str] | Literal["all"] = "all"

    @model_validator(mode="after")
    def _target(self) -> RunnerRoute:
        if (self.name is None) == (not self.labels):
            raise ValueError("give either the runner's `name` or a `labels` selector (one of them)")
        if self.skills != "all":
            unknown = [s for s in self.skills if s not in RUNNER_CAPABLE]
            if unknown:
                raise ValueError(f"a runner cannot execute {', '.join(unknown)}; it runs {', '.join(RUNNER_CAPABLE)}")
        return self

    def routes(self, skill: str) -> bool:
        return skill in RUNNER_CAPABLE and (self.skills == "all" or skill in self.skills)


class AgentConfig(_Strict):
    """Everything about an agent but its name; stored as one JSON document per version."""

    instructions: str = Field(default="", max_length=100_000)
    model: str = "offline:default"
    # Tried in order when a model call fails after its retries for an outage or a rate limit.
    fallback_models: list[str] = Field(default_factory=list, max_length=5)
    skills: list[str] = Field(default_factory=list, max_length=100)  # "name" or "name@version"
    subagents: list[str] = Field(default_factory=list, max_length=50)
    confirm: list[str] | Literal["all", "none"] = Field(default_factory=list)
    mode: Literal["agent", "plan"] = "agent"
    limits: AgentLimits = Field(default_factory=AgentLimits)
    memory: AgentMemory = Field(default_factory=AgentMemory)
    # A runner's name, or a route: which runner executes which skills (docs/runners.md).
    runner: str | RunnerRoute | None = None

    def runner_route(self) -> RunnerRoute | None:
        return RunnerRoute(name=self.runner) if isinstance(self.runner, str) else self.runner

    @model_validator(mode="after")
    def _runner_skills(self) -> AgentConfig:
        route = self.runner_route()
        for entry in self.skills:
            name, _ = parse_ref(entry)
            if name in RUNNER_SKILLS and (route is None or not route.routes(name)):
                raise ValueError(f"the skill {name!r} exists only on runners: route it to one with `runner`")
        return self

    @field_validator("model")
    @classmethod
    def _model_spec(cls, value: str) -> str:
        return validate_model_spec(value)

    @field_validator("fallback_models")
    @classmethod
    def _fallback_specs(cls, value: list[str]) -> list[str]:
        return [validate_model_spec(spec) for spec in value]

    @field_validator("subagents")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat an entry")
        return value

    @field_validator("skills")
    @classmethod
    def _skill_refs(cls, value: list[str]) -> list[str]:
        # `name` follows the skill's latest version, `name@3` pins one. Whether an org's own
        # skill exists depends on the org: the API checks that (api.routes.agents).
        return check_refs(value)
