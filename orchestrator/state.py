"""The graph's state: the conversation (merged by message id) and the final answer."""

from __future__ import annotations

from typing import Annotated, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    answer: str
    plan: str  # plan mode: the plan a human approved for the current run
    # The id of the user message RESPOND last answered: how a resumed run knows its graph ended
    # (an empty `next` alone does not say so after a checkpoint write failed mid-step).
    answered: str
