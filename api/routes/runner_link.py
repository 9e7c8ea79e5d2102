"""The routes a runner uses (docs/runners.md), authenticated by its token only.

`GET /v1/runner/calls` is the runner's one long-lived connection, opened outward from its
machine: an SSE stream of the calls routed to it (`event: call`, id = the call's id) and a
`heartbeat` every `runners.heartbeat_s`. On every (re)connect it first sends every call not yet
answered, so a call in flight when the link broke arrives again; the runner's journal makes sure
it never runs twice. `POST /v1/runner/calls/{id}/result` answers one call; posting the same
call's result again is acknowledged and changes nothing (the first one stands), so a runner that
lost the answer to its post simply posts again.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.runner_auth import RunnerIdentity, authenticate_runner
from api.schemas.runners import RunnerResultAck, RunnerStreamData
from core import events, runner_link, runner_waits
from core.errors import ApiError
from core.ids import looks_like
from core.run_signals import publish
from core.storable import storable, storable_text
from core.store import audit, runners
from core.tenancy import tenant_batch, tenant_pipeline_tx, tenant_tx

# The presence key outlives a heartbeat by this factor, so one late heartbeat does not mark
# the runner offline.
PRESENCE_FACTOR = 3


class RunnerResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    output: Any = None
    error: str | None = Field(default=None, max_length=100_000)


async def _identity(call: Call[Any]) -> RunnerIdentity:
    return await authenticate_runner(call.request, call.pool)


def _call_event(row: runners.RunnerCallRow | dict[str, Any]) -> ServerSentEvent:
    data = {"id": row["id"], "run_id": row["run_id"], "name": row["name"], "args": row["args"]}
    return ServerSentEvent(data=json.dumps(data, ensure_ascii=False), event="call", id=row["id"])


@endpoint("A runner's connection (SSE, runner token): the calls routed to it, then each new one, and "
          "heartbeats. Sends every unanswered call again on each connect.", role=None, stream=True,
          response=RunnerStreamData,
          errors=("UNAUTHENTICATED",))
async def runner_calls(call: Call[Any]) -> Response:
    me = await _identity(call)
    infra, settings = call.infra, call.settings.runners
    connection = secrets.token_hex(8)
    ttl = settings.heartbeat_s * PRESENCE_FACTOR
    await runner_link.mark_online(infra.redis, me.org_id, me.runner_id, connection, ttl)
    async with tenant_tx(call.pool, me.org_id) as conn:
        await runners.seen(conn, me.runner_id)
    # Runs that waited for this runner go on now (their calls arrive on this stream).
    await runner_waits.runner_connected(infra, me.org_id, me.runner_id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        sent: set[str] = set()
        ends_sent: set[str] = set()
        after = await runner_link.last_call_entry(infra.redis, me.org_id, me.runner_id)
        next_beat = 0.0
        try:
            while True:
                now = time.monotonic()
                fresh: list[dict[str, Any]] = []
                if now >= next_beat:
                    # A revoked runner's stream ends within a heartbeat.
                    if await runners.verify(call.pool, _token(call)) is None:
                        return
                    await runner_link.mark_online(infra.redis, me.org_id, me.runner_id, connection, ttl)
                    # Every call not yet answered (on connect: those in flight when the link broke;
                    # later: any whose wake-up was lost), and the runs that ended: one round trip.
                    _, ended, fresh = await tenant_batch(call.pool, me.org_id, *runners.heartbeat_reads(me.runner_id))
                    yield ServerSentEvent(data=json.dumps({"ts": time.time()}), event="heartbeat")
                    next_beat = now + settings.heartbeat_s
                    for run in ended:
                        if run["run_id"] not in ends_sent:
                            ends_sent.add(run["run_id"])
                            yield ServerSentEvent(data=json.dumps(run), event="run_ended")
                for row in fresh:
                    if row["id"] not in sent:
                        sent.add(row["id"])
                        yield _call_event(row)
                block = min(runner_link.BLOCK_S, max(next_beat - time.monotonic(), 0.01))
                # A wake-up carries its call (stored before it was announced): sent as it comes.
                after, announced = await runner_link.wait_for_calls(infra.redis, me.org_id, me.runner_id, after, block)
                for row in announced:
                    if row["id"] not in sent:
                        sent.add(row["id"])
                        yield _call_event(row)
        finally:
            await asyncio.shield(runner_link.mark_offline(infra.redis, me.org_id, me.runner_id, connection))

    return EventSourceResponse(stream(), ping=max(int(settings.heartbeat_s), 1),
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _token(call: Call[Any]) -> str:
    header = call.request.headers.get("authorization", "")
    return header.partition(" ")[2].strip()


@endpoint("Post the result of a call (runner token); posting it again is acknowledged and changes nothing.",
          role=None, body=RunnerResult, response=RunnerResultAck, errors=("UNAUTHENTICATED", "NOT_FOUND", "CONFLICT"))
async def post_result(call: Call[RunnerResult]) -> Response:
    me = await _identity(call)
    call_id = str(call.request.path_params["call_id"])
    if not looks_like("tool_call", call_id):
        raise ApiError("NOT_FOUND", f"No call with id {call_id!r} for this runner.")
    output = storable(call.body.output)
    error = storable_text(call.body.error) if call.body.error is not None else None
    # Pipelined: the statements below cost three round trips in all, not six.
    async with tenant_pipeline_tx(call.pool, me.org_id) as conn:
        done = await runners.finish_call(conn, call_id, me.runner_id, output=output, error=error)
        if done is None:
            existing = await runners.get_call(conn, call_id)
            # Another runner's call, or another org's, is indistinguishable from none at all.
            if existing is None or existing["runner_id"] != me.runner_id:
                raise ApiError("NOT_FOUND", f"No call with id {call_id!r} for this runner.")
            if existing["status"] != "done":
                raise ApiError("CONFLICT", "This call is waiting for the runner to come back; post its result "
                                           "again once the runner is connected.",
                               details={"status": existing["status"]})
            return call.reply({"id": call_id, "status": "done", "duplicate": True})
        await audit.record(conn, me.actor, "runner.result", "tool_call", call_id,
                           {"run_id": done["run_id"], "name": done["name"], "failed": error is not None})
        emitted = await events.append(conn, done["session_id"], [(done["run_id"], events.RUNNER_DELIVERED, {
            "tool_call_id": call_id, "runner_id": me.runner_id})])
    await publish(call.infra, me.org_id, emitted)
    await runner_link.announce_result(call.infra.redis, me.org_id, call_id, done["output"], done["error"])
    return call.reply({"id": call_id, "status": "done", "duplicate": False})


class RunWorkspaceReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    branch: str | None = Field(default=None, max_length=300)
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40,64}$")
    diff_stat: str = Field(default="", max_length=100_000)


@endpoint("Report what the runner did with an ended run's workspace (runner token): its branch, the commit "
          "made at the end and the diff summary. The first report stands.", role=None, body=RunWorkspaceReport,
          response=RunnerResultAck, errors=("UNAUTHENTICATED", "NOT_FOUND"))
async def post_run_workspace(call: Call[RunWorkspaceReport]) -> Response:
    me = await _identity(call)
    run_id = str(call.request.path_params["run_id"])
    if not looks_like("run", run_id):
        raise ApiError("NOT_FOUND", f"No run with id {run_id!r} for this runner.")
    body = call.body
    async with tenant_tx(call.pool, me.org_id) as conn:
        stored = await runners.put_run_workspace(conn, run_id, me.runner_id, branch=body.branch, commit=body.commit,
                                                 diff_stat=storable_text(body.diff_stat))
        if stored is None:
            raise ApiError("NOT_FOUND", f"No run with id {run_id!r} for this runner.")
        if stored:
            await audit.record(conn, me.actor, "runner.workspace", "run", run_id,
                               {"branch": body.branch, "commit": body.commit})
    return call.reply({"id": run_id, "status": "done", "duplicate": not stored})


routes = [
    resource("/v1/runner/calls", GET=runner_calls),
    resource("/v1/runner/calls/{call_id}/result", POST=post_result),
    resource("/v1/runner/runs/{run_id}/workspace", POST=post_run_workspace),
]
