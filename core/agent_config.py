"""The shape of an agent's configuration, shared by the API (validation) and the runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.skill_defs import check_refs

MODEL_PROVIDERS = ("offline", "openai", "anthropic")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$"


def validate_model_spec(spec: str) -> str:
    """`provider:model`, with a provider AgentOS knows."""
    provider, sep, model = spec.partition(":")
    if not sep or not model.strip():
        raise ValueError("model must look like 'provider:model', e.g. 'offline:default'")
    if provider not in MODEL_PROVIDERS:
        raise ValueError(f"unknown model provider {provider!r}; use one of {', '.join(MODEL_PROVIDERS)}")
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


class AgentConfig(_Strict):
    """Everything about an agent but its name; stored as one JSON document per version."""

    instructions: str = Field(default="", max_length=100_000)
    model: str = "offline:default"
    skills: list[str] = Field(default_factory=list, max_length=100)  # "name" or "name@version"
    subagents: list[str] = Field(default_factory=list, max_length=50)
    confirm: list[str] | Literal["all", "none"] = Field(default_factory=list)
    mode: Literal["agent", "plan"] = "agent"
    limits: AgentLimits = Field(default_factory=AgentLimits)
    memory: AgentMemory = Field(default_factory=AgentMemory)

    @field_validator("model")
    @classmethod
    def _model_spec(cls, value: str) -> str:
        return validate_model_spec(value)

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
