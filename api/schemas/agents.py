"""An agent (its configuration flattened beside its id and version) and one of its versions."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from api.schemas.base import Out


class AgentLimitsOut(Out):
    max_steps: int
    max_tokens: int
    timeout_s: int


class AgentMemoryOut(Out):
    short_term_tokens: int
    long_term: bool
    knowledge: bool
    hybrid: bool = False


class RunnerRouteOut(Out):
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    skills: list[str] | Literal["all"] = "all"


class AgentFields(Out):
    """An agent's configuration as stored (`core.agent_config.AgentConfig`)."""

    name: str
    instructions: str = ""
    model: str = Field(default="offline:default", description="`provider:model`; the provider is a built-in one "
                                                              "(offline, openai, anthropic) or one of the org's "
                                                              "(`GET /v1/providers`).")
    fallback_models: list[str] = Field(default_factory=list, description="Tried in order when a model call fails "
                                                                         "after its retries (outage, rate limit).")
    skills: list[str] = Field(default_factory=list, description="Skill names, `name` or pinned `name@version`.")
    subagents: list[str] = Field(default_factory=list, description="Ids of agents this one may delegate to.")
    confirm: list[str] | Literal["all", "none"] = Field(
        default_factory=list, description="Skills whose calls wait for a human's approval.")
    mode: Literal["agent", "plan"] = "agent"
    limits: AgentLimitsOut | None = None
    memory: AgentMemoryOut | None = None
    runner: str | RunnerRouteOut | None = Field(
        default=None, description="The runner (by name) or route (`{name | labels, skills}`) executing its skills.")


class Agent(AgentFields):
    id: str = Field(examples=["agt_01a2b3c4d5e6f708192a3b4c5d6e"])
    version: int = Field(description="Goes up by one with every change.")
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class AgentVersion(AgentFields):
    """The agent as it was at one version."""

    version: int
    created_by: str | None
    created_at: datetime
