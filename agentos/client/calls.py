"""Every call the client makes, as data: the request to send and how to read its answer. Both
`Client` and `AsyncClient` send these, so paths, bodies, idempotency keys and result types live
here once; the clients only carry them over HTTP (sync or async)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from agentos.client.errors import error_from_response
from agentos.client.models import Agent, ApiKey, Message, Page, Principal, Run, Session, ToolCall

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# A wait is sent as polls of at most this many seconds (the server's own bound is 300 s by
# default), so that a proxy's idle timeout does not cut a long wait.
WAIT_POLL_S = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # May be sent again after a failure that leaves unknown whether the server acted on it
    # (the connection broke after the request went out): reads, and writes the API deduplicates.
    replayable: bool = True
    read_timeout_s: float | None = None  # None: the client's


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx.Headers)
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Call(Generic[T]):
    request: Request
    read: Callable[[Reply], T]

    def result(self, reply: Reply) -> T:
        """What the answer means: the call's result, or the API's error raised."""
        if reply.status >= 400:
            raise error_from_response(reply.status, reply.headers, reply.body)
        return self.read(reply)


def new_idempotency_key() -> str:
    return f"aos-client-{uuid.uuid4().hex}"


def _post(path: str, body: dict[str, Any] | None, *, idempotency_key: str | None = None,
          replayable: bool = False) -> Request:
    # Every POST carries a key, made once per call so each retry of the call sends the same one.
    # Only where the API deduplicates by it (run creation) is the call `replayable`.
    key = idempotency_key or new_idempotency_key()
    return Request("POST", path, body=body, headers={"Idempotency-Key": key}, replayable=replayable)


def _model(cls: type[M]) -> Callable[[Reply], M]:
    return lambda reply: cls.model_validate(reply.json())


def _page(cls: type[M]) -> Callable[[Reply], Page[M]]:
    def read(reply: Reply) -> Page[M]:
        body = reply.json()
        return Page([cls.model_validate(item) for item in body["data"]], body.get("next_cursor"), body)
    return read


def _nothing(reply: Reply) -> None:
    return None


def _raw(reply: Reply) -> Any:
    return reply.json()


def _listing(limit: int | None, cursor: str | None, **filters: str | None) -> dict[str, str]:
    params = {k: v for k, v in filters.items() if v is not None}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _fields(**fields: Any) -> dict[str, Any]:
    """The body fields a caller gave; None leaves a field to the server's default."""
    return {k: v for k, v in fields.items() if v is not None}


# --- me, skills ------------------------------------------------------------------------------------


def me() -> Call[Principal]:
    return Call(Request("GET", "/v1/me"), _model(Principal))


def skills() -> Call[list[dict[str, Any]]]:
    return Call(Request("GET", "/v1/skills"), lambda reply: list(reply.json()["data"]))


def raw(method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> Call[Any]:
    """Any route, its JSON answer as is; only a GET or HEAD is sent again after a broken connection."""
    method = method.upper()
    headers = {"Idempotency-Key": new_idempotency_key()} if method == "POST" else {}
    request = Request(method, path, params=params or {}, body=body, headers=headers,
                      replayable=method in ("GET", "HEAD"))
    return Call(request, _raw)


# --- agents ----------------------------------------------------------------------------------------


def create_agent(name: str, fields: dict[str, Any]) -> Call[Agent]:
    return Call(_post("/v1/agents", {"name": name, **_fields(**fields)}), _model(Agent))


def get_agent(agent_id: str) -> Call[Agent]:
    return Call(Request("GET", f"/v1/agents/{agent_id}"), _model(Agent))


def list_agents(limit: int | None = None, cursor: str | None = None) -> Call[Page[Agent]]:
    return Call(Request("GET", "/v1/agents", params=_listing(limit, cursor)), _page(Agent))


def update_agent(agent_id: str, fields: dict[str, Any]) -> Call[Agent]:
    return Call(Request("PATCH", f"/v1/agents/{agent_id}", body=fields, replayable=False), _model(Agent))


def delete_agent(agent_id: str) -> Call[None]:
    # Not replayable: a repeat after a lost answer would be 404 for a delete that worked.
    return Call(Request("DELETE", f"/v1/agents/{agent_id}", replayable=False), _nothing)


# --- sessions --------------------------------------------------------------------------------------


def create_session(agent_id: str, fields: dict[str, Any]) -> Call[Session]:
    return Call(_post("/v1/sessions", {"agent_id": agent_id, **_fields(**fields)}), _model(Session))


def get_session(session_id: str) -> Call[Session]:
    return Call(Request("GET", f"/v1/sessions/{session_id}"), _model(Session))


def list_sessions(agent_id: str | None = None, limit: int | None = None,
                  cursor: str | None = None) -> Call[Page[Session]]:
    return Call(Request("GET", "/v1/sessions", params=_listing(limit, cursor, agent_id=agent_id)), _page(Session))


def delete_session(session_id: str) -> Call[None]:
    return Call(Request("DELETE", f"/v1/sessions/{session_id}", replayable=False), _nothing)


def list_messages(session_id: str, order: str | None = None, limit: int | None = None,
                  cursor: str | None = None) -> Call[Page[Message]]:
    return Call(Request("GET", f"/v1/sessions/{session_id}/messages", params=_listing(limit, cursor, order=order)),
                _page(Message))


# --- runs ------------------------------------------------------------------------------------------


def create_run(session_id: str, input: str, fields: dict[str, Any], idempotency_key: str | None) -> Call[Run]:
    # The API deduplicates run creation by Idempotency-Key (docs/api.md, "Idempotency"): a retry
    # after a lost answer replays the run the first attempt made.
    request = _post(f"/v1/sessions/{session_id}/runs", {"input": input, **_fields(**fields)},
                    idempotency_key=idempotency_key, replayable=True)
    return Call(request, _model(Run))


def get_run(run_id: str) -> Call[Run]:
    return Call(Request("GET", f"/v1/runs/{run_id}"), _model(Run))


def list_runs(session_id: str, limit: int | None = None, cursor: str | None = None) -> Call[Page[Run]]:
    return Call(Request("GET", f"/v1/sessions/{session_id}/runs", params=_listing(limit, cursor)), _page(Run))


def cancel_run(run_id: str) -> Call[Run]:
    return Call(_post(f"/v1/runs/{run_id}/cancel", None), _model(Run))


def wait_poll(run_id: str, timeout_s: float) -> Call[Run]:
    """One `GET /wait`: the run when it ended, or as it is when `timeout_s` passed (202)."""
    params = {"timeout": f"{timeout_s:g}"}
    return Call(Request("GET", f"/v1/runs/{run_id}/wait", params=params, read_timeout_s=timeout_s + 30),
                _model(Run))


def run_tool_calls(run_id: str) -> Call[list[ToolCall]]:
    return Call(Request("GET", f"/v1/runs/{run_id}/tool-calls"), lambda reply: _page(ToolCall)(reply).data)


# --- tool calls and approvals ----------------------------------------------------------------------


def list_tool_calls(status: str | None = None, limit: int | None = None,
                    cursor: str | None = None) -> Call[Page[ToolCall]]:
    return Call(Request("GET", "/v1/tool-calls", params=_listing(limit, cursor, status=status)), _page(ToolCall))


def approve(tool_call_id: str, args: dict[str, Any] | None) -> Call[ToolCall]:
    return Call(_post(f"/v1/tool-calls/{tool_call_id}/approve", _fields(args=args)), _model(ToolCall))


def reject(tool_call_id: str, reason: str | None) -> Call[ToolCall]:
    return Call(_post(f"/v1/tool-calls/{tool_call_id}/reject", _fields(reason=reason)), _model(ToolCall))


# --- API keys --------------------------------------------------------------------------------------


def create_api_key(name: str, fields: dict[str, Any]) -> Call[ApiKey]:
    return Call(_post("/v1/api-keys", {"name": name, **_fields(**fields)}), _model(ApiKey))


def list_api_keys(limit: int | None = None, cursor: str | None = None) -> Call[Page[ApiKey]]:
    return Call(Request("GET", "/v1/api-keys", params=_listing(limit, cursor)), _page(ApiKey))


def revoke_api_key(key_id: str) -> Call[ApiKey]:
    # Replayable: revoking a revoked key answers the same again.
    return Call(Request("DELETE", f"/v1/api-keys/{key_id}"), _model(ApiKey))


class WaitClock:
    """The polls of one `wait()`: each at most WAIT_POLL_S, until the run ends or `timeout_s`
    (None: no limit) passes."""

    def __init__(self, timeout_s: float | None, now: Callable[[], float]) -> None:
        self._now = now
        self._deadline = None if timeout_s is None else now() + timeout_s

    def next_poll_s(self) -> float:
        if self._deadline is None:
            return WAIT_POLL_S
        return max(0.0, min(WAIT_POLL_S, self._deadline - self._now()))

    def done(self, run: Run) -> bool:
        return run.terminal or (self._deadline is not None and self._now() >= self._deadline)
