"""What one graph invocation works with: the agent, its budget, and the run's services.

The runtime builds a `RunContext` per run and passes it as LangGraph's run context; a sub-agent
gets a child context (`for_subagent`) whose budget draws from its parent's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.agent_config import AgentConfig
from core.events import RunEmitter
from core.infra import Infra
from core.metering import Meter
from core.settings import ModelSettings
from core.tenancy import AsyncPool
from memory.service import MemoryService
from skills.catalogue import RunSkills
from skills.sandbox.client import SandboxClient


@dataclass(frozen=True)
class AgentSpec:
    """An agent at the version a run uses."""

    id: str
    name: str
    version: int
    config: AgentConfig


class LimitExceeded(Exception):
    """A run went over one of its agent's limits; ends the run as failed with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Budget:
    """Steps and tokens left. A sub-agent's budget is capped by its parent's, and what it
    spends is charged to every ancestor."""

    max_steps: int
    max_tokens: int
    deadline: float  # loop time
    parent: Budget | None = None
    steps: int = 0
    tokens: int = 0

    def take_step(self) -> None:
        node: Budget | None = self
        while node is not None:
            if node.steps >= node.max_steps:
                raise LimitExceeded(
                    "MAX_STEPS_EXCEEDED",
                    f"The run used its {node.max_steps} steps without finishing; raise limits.max_steps "
                    "or give the agent a smaller task.",
                )
            node = node.parent
        node = self
        while node is not None:
            node.steps += 1
            node = node.parent

    def add_tokens(self, count: int) -> None:
        node: Budget | None = self
        while node is not None:
            node.tokens += count
            if node.tokens > node.max_tokens:
                raise LimitExceeded(
                    "MAX_TOKENS_EXCEEDED",
                    f"The run used {node.tokens} model tokens, over its limit of {node.max_tokens}; raise "
                    "limits.max_tokens.",
                )
            node = node.parent

    def child(self, max_steps: int, max_tokens: int, timeout_s: float) -> Budget:
        now = asyncio.get_running_loop().time()
        return Budget(
            max_steps=min(max_steps, self.max_steps - self.steps),
            max_tokens=min(max_tokens, self.max_tokens - self.tokens),
            deadline=min(self.deadline, now + timeout_s),
            parent=self,
        )

    def remaining_s(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


AgentLoader = Callable[[str], Awaitable[AgentSpec | None]]


@dataclass
class RunContext:
    org_id: str
    session_id: str
    run_id: str
    agent: AgentSpec
    budget: Budget
    emitter: RunEmitter
    pool: AsyncPool
    skills: RunSkills  # built-ins and the org's skills at the versions this run resolved
    models: ModelSettings
    workspace: Path
    load_agent: AgentLoader  # an agent of this org by id, at its current version
    max_depth: int = 3
    depth: int = 0
    # Where in the delegation tree this context acts: "" for the run's agent, then the ids of
    # the delegate calls leading here. Prefixes tool-call keys, so replays find their calls.
    call_path: str = ""
    # Shared with sub-agent contexts: models resolved once per run, closed when it ends.
    model_cache: dict[str, Any] = field(default_factory=dict)
    # The org providers those models call (core.providers.ProviderAccess by provider name).
    provider_access: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None  # the session's end user
    memory: MemoryService | None = None  # None: the run works without memory
    sandbox: SandboxClient | None = None  # None: code_executor says no sandbox is configured
    # The run's memory context (recall and session window), made at its first THINK.
    memory_cache: dict[str, Any] = field(default_factory=dict)
    infra: Infra | None = None  # the worker's connections, handed to skills (secrets, caches, outbound)
    meter: Meter | None = None  # records model calls and sandbox time; None: not metered (some tests)

    def for_subagent(self, agent: AgentSpec, via_call_id: str) -> RunContext:
        limits = agent.config.limits
        return replace(
            self,
            agent=agent,
            budget=self.budget.child(limits.max_steps, limits.max_tokens, limits.timeout_s),
            depth=self.depth + 1,
            call_path=f"{self.call_path}{via_call_id}/",
        )

    def call_key(self, model_call_id: str) -> str:
        return f"{self.call_path}{model_call_id}"

    def check_budget(self) -> None:
        """Stop the run (BUDGET_EXCEEDED) once its org reached a monthly budget: before every
        step but RESPOND and before every model call."""
        why = self.meter.over_budget() if self.meter is not None else None
        if why is not None:
            raise LimitExceeded("BUDGET_EXCEEDED", why)

    async def meter_model_call(self, key: str, usage: Any, model: str | None = None) -> None:
        """Record a model call of this context's agent under `key` (its place in the run), made with
        `model` (default: the agent's own; a fallback model when that one failed)."""
        if self.meter is not None:
            await self.meter.model_call(self.call_key(key), self.agent.id, model or self.agent.config.model, usage)
