"""The orchestrator: START -> [plan] -> think -> (act | delegate -> think)* -> respond -> END.

`build_graph(checkpointer)` compiles the graph a run executes (checkpointed in Postgres under
the session's thread id). Sub-agents run the same graph, compiled without a checkpointer
(`subagent_graph()`), inside the parent's `delegate` step, with their own context.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from orchestrator import nodes
from orchestrator.context import RunContext
from orchestrator.state import AgentState

Graph = CompiledStateGraph[AgentState, RunContext, AgentState, AgentState]


async def _delegate(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    # The node gets the sub-agent graph from here rather than importing this module back.
    return await nodes.delegate(state, runtime, subagent_graph)


def _builder() -> StateGraph[AgentState, RunContext, AgentState, AgentState]:
    graph = StateGraph(AgentState, context_schema=RunContext)
    graph.add_node("plan", nodes.plan)
    graph.add_node("think", nodes.think)
    graph.add_node("act", nodes.act)
    graph.add_node("delegate", _delegate)
    graph.add_node("respond", nodes.respond)
    graph.add_conditional_edges(START, nodes.route_start, ["plan", "think"])
    graph.add_edge("plan", "think")
    graph.add_conditional_edges("think", nodes.route_after_think, ["act", "delegate", "respond"])
    graph.add_conditional_edges("act", nodes.route_after_act, ["delegate", "think"])
    graph.add_edge("delegate", "think")
    graph.add_edge("respond", END)
    return graph


def build_graph(checkpointer: BaseCheckpointSaver[Any] | None) -> Graph:
    return _builder().compile(checkpointer=checkpointer)


@cache
def subagent_graph() -> Graph:
    """Compiled once per process; `checkpointer=False` keeps it out of the parent's checkpoints."""
    return _builder().compile(checkpointer=False)
