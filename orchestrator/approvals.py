"""Which tool calls wait for a human, and how a wait leaves the graph.

An agent's `confirm` lists skills that need approval, or is `"all"` / `"none"`; skills that
declare themselves sensitive (e.g. `file_manager` writing) need it unless `confirm` is `"none"`.
A call that needs approval stops the run with LangGraph's `interrupt()`; a sub-agent's call
raises `ApprovalNeeded`, which its parent's `delegate` step turns into the run's interrupt.
"""

from __future__ import annotations

from typing import Any

from langgraph.types import interrupt

from core.agent_config import AgentConfig
from skills import Skill


class ApprovalNeeded(Exception):
    """A sub-agent's call waits for a human; carried up to the run's graph."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("tool_call_id"))
        self.payload = payload


def needs_approval(config: AgentConfig, skill: Skill, args: dict[str, Any]) -> bool:
    if config.confirm == "none":
        return False
    if config.confirm == "all":
        return True
    return skill.name in config.confirm or skill.is_sensitive(args)


def wait_for_human(payload: dict[str, Any], depth: int) -> None:
    """Stop here until a human decides: the run's graph interrupts (its checkpoint keeps the
    state); inside a sub-agent, the wait travels up to the run's graph first."""
    if depth > 0:
        raise ApprovalNeeded(payload)
    interrupt(payload)
