"""The API's resources as the client returns them (fields as docs/api.md lists them).

Tolerant in both directions, as docs/api.md asks of clients: fields this client does not know
are kept (`model_extra`, and attribute access), and fields an older server lacks take a default.
Only ids are required."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["queued", "running", "awaiting_confirmation", "succeeded", "failed", "cancelled", "timed_out"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
# The event types that end a run's stream: exactly one per run (docs/api.md, "The terminal-event guarantee").
TERMINAL_EVENTS = frozenset({"run.succeeded", "run.failed", "run.cancelled", "run.timed_out"})


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Agent(Resource):
    id: str
    name: str = ""
    version: int = 1
    instructions: str = ""
    model: str = ""
    skills: list[str] = []
    subagents: list[str] = []
    confirm: list[str] | str = []
    mode: str = "agent"
    limits: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    created_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Session(Resource):
    id: str
    agent_id: str = ""
    user_id: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Message(Resource):
    id: str
    session_id: str = ""
    run_id: str | None = None
    role: str = ""
    content: str = ""
    metadata: dict[str, Any] = {}
    created_at: datetime | None = None


class Run(Resource):
    id: str
    session_id: str = ""
    agent_id: str = ""
    agent_version: int | None = None
    status: str = "queued"  # a RunStatus, or a status a newer server added
    input: dict[str, Any] = {}
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    skill_versions: dict[str, int] | None = None
    attempt: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trace_id: str | None = None
    stream_url: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the run ended; it never changes again."""
        return self.status in TERMINAL_STATUSES

    @property
    def text(self) -> str | None:
        """The answer of a succeeded run."""
        return str(self.output["text"]) if self.output and "text" in self.output else None


class ToolCall(Resource):
    id: str
    run_id: str = ""
    session_id: str = ""
    agent_id: str = ""
    kind: str = "tool"
    name: str = ""
    args: dict[str, Any] = {}
    proposed_args: dict[str, Any] | None = None
    sensitive: Any = None
    status: str = ""
    output: Any = None
    error: dict[str, Any] | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    call_key: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


class Event(Resource):
    """One event of a run's stream; `seq` is its id (the session's sequence)."""

    seq: int
    type: str
    run_id: str = ""
    session_id: str = ""
    ts: datetime | None = None
    data: dict[str, Any] = {}

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class ApiKey(Resource):
    """An API key; `key` (the secret) is set only in the answer that created it."""

    id: str
    name: str = ""
    prefix: str = ""
    role: str = ""
    created_by: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = None


class Principal(Resource):
    """Who a credential is (`GET /v1/me`)."""

    org_id: str
    user_id: str | None = None
    role: str = ""
    scopes: list[str] = []
    credential: str = ""


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; `next_cursor` fetches the next one (None: this is the last)."""

    data: list[T]
    next_cursor: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
