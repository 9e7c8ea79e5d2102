"""Sessions (a conversation with one agent) and their messages."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, Param, endpoint, resource, validation_failed
from api.schemas.base import page_of
from api.schemas.sessions import Message, Session
from core import events, ids
from core.admission import release_runs
from core.errors import ApiError
from core.pagination import page
from core.run_signals import flag_cancel, publish
from core.store import agents, audit, runs, sessions
from core.tenancy import tenant_tx


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(min_length=1, max_length=64)
    title: str | None = Field(default=None, max_length=500)
    # The end user of the integrating app this session belongs to; defaults to the JWT subject.
    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)


def _not_found(session_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No session with id {session_id!r} in this organisation.")


@endpoint("Start a session with an agent.", role="member", body=SessionCreate, status=201, response=Session,
          errors=("NOT_FOUND",))
async def create_session(call: Call[SessionCreate]) -> Response:
    body, principal = call.body, call.principal
    async with tenant_tx(call.pool, principal.org_id) as conn:
        agent = await agents.get(conn, body.agent_id) if ids.looks_like("agent", body.agent_id) else None
        if agent is None:
            raise ApiError("NOT_FOUND", f"No agent with id {body.agent_id!r} in this organisation.",
                           details={"field": "agent_id"})
        row = await sessions.create(conn, body.agent_id, body.user_id or principal.user_id, body.title, body.metadata)
        await audit.record(conn, principal.actor, "session.create", "session", row["id"], {"agent_id": body.agent_id})
    return call.reply(row)


@endpoint("List sessions, newest first (`?agent_id=` filters).", paginated=True, response=page_of(Session),
          params=(Param("agent_id", {"type": "string"}, "Only this agent's sessions."),))
async def list_sessions(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    agent_id = call.request.query_params.get("agent_id")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await sessions.list_sessions(conn, cursor, limit, agent_id)
    data, next_cursor = page(rows, limit)
    return call.page(data, next_cursor)


@endpoint("Read one session.", response=Session)
async def get_session(call: Call[Any]) -> Response:
    session_id = call.path_id("session_id", "session")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await sessions.get(conn, session_id)
    if row is None:
        raise _not_found(session_id)
    return call.reply(row)


@endpoint("Delete a session.", role="member", status=204)
async def delete_session(call: Call[Any]) -> Response:
    session_id = call.path_id("session_id", "session")
    org_id = call.principal.org_id
    async with tenant_tx(call.pool, org_id) as conn:
        if await runs.lock_session(conn, session_id) is None:
            raise _not_found(session_id)
        cancelled, running = await runs.cancel_all(conn, session_id)
        await sessions.delete(conn, session_id)
        await audit.record(conn, call.principal.actor, "session.delete", "session", session_id,
                           {"cancelled_runs": len(cancelled) + len(running)})
    await release_runs(call.infra.redis, org_id, [e.run_id for e in cancelled if e.type == events.RUN_CANCELLED])
    await publish(call.infra, org_id, cancelled)
    await flag_cancel(call.infra, org_id, running)
    return Response(status_code=204)


@endpoint("A session's messages, oldest first (`?order=desc` for newest first).", paginated=True,
          response=page_of(Message),
          params=(Param("order", {"type": "string", "enum": ["asc", "desc"], "default": "asc"}),))
async def list_messages(call: Call[Any]) -> Response:
    session_id = call.path_id("session_id", "session")
    cursor, limit = call.page_params()
    order = call.request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise validation_failed([{"field": "order", "message": "must be 'asc' or 'desc'"}])
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await sessions.get(conn, session_id) is None:
            raise _not_found(session_id)
        rows = await sessions.list_messages(conn, session_id, cursor, limit, ascending=order == "asc")
    data, next_cursor = page(rows, limit)
    return call.page(data, next_cursor)


routes = [
    resource("/v1/sessions", POST=create_session, GET=list_sessions),
    resource("/v1/sessions/{session_id}", GET=get_session, DELETE=delete_session),
    resource("/v1/sessions/{session_id}/messages", GET=list_messages),
]
