"""Remote runners of an org; a runner's token appears once, when it is created."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, RootModel

from api.schemas.base import Out


class Runner(Out):
    id: str
    name: str
    labels: dict[str, str]
    prefix: str = Field(description="The visible part of the token (`aosr_<prefix>_…`).")
    created_by: str | None
    created_at: datetime
    last_seen_at: datetime | None = Field(description="When its connection last sent a heartbeat.")
    revoked_at: datetime | None
    online: bool = Field(description="Whether the runner is connected now.")


class RunnerCreated(Runner):
    token: str = Field(description="The runner's token: shown in this response only; give it to `agentos runner`.")


class RunnerResultAck(Out):
    id: str = Field(description="The call's id (its tool call's id).")
    status: str = Field(description="`done`: the platform holds the call's result (this one, or one posted before).")
    duplicate: bool = Field(description="True when a result of this call had already been stored.")


class RunnerCall(Out):
    """One call as the runner receives it on its stream (`event: call`)."""

    id: str
    run_id: str
    name: str
    args: dict[str, Any]


class RunnerHeartbeat(Out):
    """`event: heartbeat`, every `runners.heartbeat_s`: the link is alive."""

    ts: float = Field(description="The server's clock (Unix seconds).")


class RunnerRunEnded(Out):
    """`event: run_ended`: a run this runner had calls of has ended; the runner commits its
    workspace and reports it (`POST /v1/runner/runs/{run_id}/workspace`)."""

    run_id: str
    status: str


class RunnerStreamData(RootModel[RunnerCall | RunnerHeartbeat | RunnerRunEnded]):
    """The `data:` of one event of a runner's stream: a call (`event: call`), a heartbeat, or a
    run's end (`event: run_ended`)."""


class RunWorkspace(Out):
    """What a runner did with a run's workspace once the run ended."""

    runner_id: str
    runner: str = Field(description="The runner's name.")
    branch: str | None = Field(description="`agentos/<run id>`; null when the runner has no repository.")
    commit: str | None = Field(description="The commit made at the run's end (its message holds the run id); "
                               "null when nothing was left to commit.")
    diff_stat: str = Field(description="The diff summary of the run's branch against where it began.")
    finished_at: datetime


class RunWorkspaces(Out):
    data: list[RunWorkspace]
