"""The events of the SSE streams: each `data:` line is one `RunEvent`, discriminated by `type`.

The payload models say what each type carries today; payloads may gain fields (clients ignore
those they do not know), so they accept more than they declare."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import Field, RootModel, create_model

from api.schemas.base import Open
from api.schemas.runs import RunError
from api.schemas.sessions import Message
from core import events


class RunAttempt(Open):
    attempt: int


class StepStarted(Open):
    node: Literal["plan", "think", "act", "delegate", "respond"]
    agent_id: str


class RecalledItem(Open):
    id: str
    kind: str
    scope: str
    score: float


class MemoryRecalled(Open):
    agent_id: str
    items: list[RecalledItem]
    summary: bool
    turns: int
    tokens: int


class MessageDelta(Open):
    text: str
    agent_id: str


class ToolCallStarted(Open):
    tool_call_id: str
    name: str
    args: dict[str, Any]
    agent_id: str
    skill_version: int | None = Field(default=None, description="For an org's own skill: the version that ran.")


class ToolResult(Open):
    tool_call_id: str
    output: Any = Field(default=None, description="What the skill returned (absent when it failed).")
    error: str | None = Field(default=None, description="Why it failed (absent when it succeeded).")


class ConfirmationRequired(Open):
    tool_call_id: str
    name: str
    args: dict[str, Any]
    agent_id: str
    kind: Literal["plan"] | None = Field(default=None, description="`plan` when a plan waits for approval.")


class ConfirmationResolved(Open):
    tool_call_id: str
    decision: Literal["approved", "rejected"]
    decided_by: str
    args: dict[str, Any] | None = Field(default=None, description="The edited arguments it was approved with.")
    reason: str | None = Field(default=None, description="Why it was rejected.")


class SubagentStarted(Open):
    agent_id: str
    name: str
    parent_agent_id: str | None = None


class SubagentCompleted(Open):
    agent_id: str
    name: str


class MessageCompleted(Open):
    message: Message


class RunWarning(Open):
    code: str
    message: str


class BudgetWarning(Open):
    """The org passed the warning share of a budget (once per budget per run)."""

    budget: str
    limit: float
    used: float
    percent: float
    warning: bool
    exceeded: bool
    resets_at: str


class RunSucceeded(Open):
    output: dict[str, Any] = Field(description="`{text, message_id}`.")
    usage: dict[str, Any]


class RunFailed(Open):
    error: RunError


class NoData(Open):
    pass


class RunnerOffline(Open):
    """A call routed to a runner found it offline; the run waits (no worker held) until it returns."""

    tool_call_id: str
    runner_id: str
    runner: str = Field(description="The runner's name.")
    timeout_s: float = Field(description="How long the call waits before it fails.")


class RunnerOnline(Open):
    """The runner a call waited for is back; the run goes on."""

    tool_call_id: str
    runner_id: str


class RunnerDelivered(Open):
    """The runner answered a call routed to it (its `tool.result` follows when the worker reads it)."""

    tool_call_id: str
    runner_id: str
    duplicate: bool = Field(default=False, description="True when the runner sent the answer again.")


# Each event type and the model of its `data`.
PAYLOADS: dict[str, type[Open]] = {
    events.RUN_QUEUED: RunAttempt,
    events.RUN_STARTED: RunAttempt,
    events.STEP_STARTED: StepStarted,
    events.MEMORY_RECALLED: MemoryRecalled,
    events.MESSAGE_DELTA: MessageDelta,
    events.TOOL_CALL: ToolCallStarted,
    events.TOOL_RESULT: ToolResult,
    events.CONFIRMATION_REQUIRED: ConfirmationRequired,
    events.CONFIRMATION_RESOLVED: ConfirmationResolved,
    events.SUBAGENT_STARTED: SubagentStarted,
    events.SUBAGENT_COMPLETED: SubagentCompleted,
    events.MESSAGE_COMPLETED: MessageCompleted,
    events.RUN_WARNING: RunWarning,
    events.BUDGET_WARNING: BudgetWarning,
    events.RUNNER_OFFLINE: RunnerOffline,
    events.RUNNER_ONLINE: RunnerOnline,
    events.RUNNER_DELIVERED: RunnerDelivered,
    events.RUN_SUCCEEDED: RunSucceeded,
    events.RUN_FAILED: RunFailed,
    events.RUN_CANCELLED: NoData,
    events.RUN_TIMED_OUT: RunFailed,
}
assert set(PAYLOADS) == events.EVENT_TYPES, "every event type has a payload model"


def _event_model(kind: str, payload: type[Open]) -> type[Open]:
    """`{seq, type, run_id, session_id, ts, data}` for one type, named after it (`RunQueuedEvent`)."""
    name = "".join(part.capitalize() for part in kind.replace(".", "_").split("_")) + "Event"
    model: type[Open] = create_model(
        name, __base__=Open,
        seq=(int, Field(description="The session's sequence number; the SSE `id`.")),
        type=(Literal[kind], ...),  # type: ignore[arg-type]  # a Literal made at run time
        run_id=(str, ...), session_id=(str, ...), ts=(datetime, ...), data=(payload, ...),
    )
    model.__doc__ = f"A `{kind}` event."
    return model


EVENT_MODELS = tuple(_event_model(kind, PAYLOADS[kind]) for kind in sorted(PAYLOADS))


_EventUnion = Annotated[Union[EVENT_MODELS], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007


class RunEvent(RootModel[_EventUnion]):
    """One event of a stream, as the JSON of its SSE `data:` line; `type` says which."""
