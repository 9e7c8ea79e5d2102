"""Runs: start one in a session, read, list, wait for, cancel.

A POST stores the user's message, the queued run and its `run.queued` event in one
transaction; only after the commit is the run sent to the workers (by task name).
"""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import suppress
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deferred import HEADER as DEFERRED
from api.deferred import deferred
from api.endpoint import Call, Param, endpoint, resource, validation_failed
from api.run_streams import reader_for, run_not_found, run_stream, session_not_found, wants_stream
from api.schemas.base import page_of
from api.schemas.runs import Run
from api.state import state_of
from core import budgets
from core.admission import RunTicket
from core.errors import ApiError
from core.ids import new_id
from core.pagination import page
from core.run_signals import announce_created, flag_cancel, run_ended, send_run
from core.store import audit, runs, sessions
from core.store.runs import RunStatus
from core.telemetry import metrics, names, scope, tracing
from core.tenancy import tenant_pipeline_tx, tenant_tx

MAX_INPUT_CHARS = 100_000
IDEMPOTENCY_KEY_MAX = 200


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    multitask: Literal["enqueue", "reject"] = "enqueue"
    metadata: dict[str, Any] = Field(default_factory=dict)


def _public(run: runs.RunRow) -> dict[str, Any]:
    body = runs.to_public(run)
    body["stream_url"] = f"/v1/runs/{run['id']}/events"
    return body


TRACE_HEADER = "AgentOS-Trace-Id"


def _trace_parent(call: Call[Any]) -> str | None:
    """The context the run's trace continues: this request's span when tracing is on, else the
    caller's own `traceparent` (honoured either way), else none (the run gets a fresh trace id)."""
    current = tracing.current_traceparent()
    if current is not None:
        return current
    parsed = tracing.parse_traceparent(call.request.headers.get("traceparent"))
    return f"00-{parsed[0]}-{parsed[1]}-01" if parsed is not None else None


def _idempotency_key(call: Call[Any]) -> str | None:
    key = call.request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise ApiError("BAD_REQUEST", f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters.")
    return key


@endpoint("Start a run: the message is stored and the run queued for a worker (`202`); with `Accept: "
          "text/event-stream`, the answer is the run's event stream.", role="member",
          body=RunCreate, status=202, response=Run, headers=("Location", "Idempotent-Replayed", DEFERRED),
          errors=("BAD_REQUEST", "CONFLICT", "SESSION_BUSY", "IDEMPOTENCY_MISMATCH", "QUOTA_EXCEEDED",
                  "ORG_DELETION_PENDING"),
          params=(Param("Idempotency-Key", {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX,
                                            "pattern": "^[!-~]([ -~]*[!-~])?$"},
                        "Makes a retry safe: the same key and body answer the run the first request made.",
                        where="header"),),
          admits_run=True, streams_on_accept=True)
async def create_run(call: Call[RunCreate]) -> Response:
    # A place under the org's cap on active runs was reserved (with the request's rate token, in
    # one Redis round trip) before the run is inserted, so concurrent POSTs cannot overshoot it;
    # it is released unless a run is made. Over the cap, a request with an Idempotency-Key still
    # goes on: a replay answers the run it made; anything new is refused (and rolled back).
    ticket = call.run_ticket
    try:
        session_id = call.path_id("session_id", "session")
        body, principal = call.body, call.principal
        key = _idempotency_key(call)
        if not ticket.admitted and key is None:
            raise ticket.refusal()
        request_hash = hashlib.sha256(orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)).hexdigest()
        # What is refused inside the transaction (a run over the cap when only a replay may pass, a
        # budget used up) must be known before it commits; otherwise the whole transaction is sent
        # at once and read after its commit (a refused or busy request wrote nothing).
        decide_before_commit = not ticket.admitted or budgets.any_set(ticket.limits)
        run_id = new_id("run")
        async with tenant_pipeline_tx(call.pool, principal.org_id) as conn:
            creating = await runs.send_create(
                conn, session_id=session_id, text=body.input, multitask=body.multitask, metadata=body.metadata,
                idempotency_key=key, request_hash=request_hash, created_by=principal.actor,
                trace_parent=_trace_parent(call), run_id=run_id,
            )
            await audit.record_if_run_made(conn, principal.actor, "run.create", run_id)
            if decide_before_commit:
                created = _made(await creating.result(), session_id)
                if created.created and not ticket.admitted:
                    raise ticket.refusal()  # rolls the insert back
                if created.created:
                    # Over a budget: 429, and the insert rolls back.
                    await budgets.admit_run(conn, ticket.limits, call.settings.usage.warn_at)
        created = _made(await creating.result(), session_id)
    except BaseException:
        await ticket.release()
        raise
    run = created.run
    headers = {"Location": f"/v1/runs/{run['id']}", TRACE_HEADER: run["trace_id"]}
    scope.bind(run_id=run["id"], session_id=session_id, agent_id=run["agent_id"], trace_id=run["trace_id"])
    if tracing.ON:
        tracing.annotate(**{names.RUN_ID: run["id"], names.SESSION_ID: session_id, names.AGENT_ID: run["agent_id"]})
    if not created.created:
        await ticket.release()
        headers["Idempotent-Replayed"] = "true"
        return await _answer(call, run, headers)
    shared = state_of(call.request)
    shared.fresh_runs.remember(principal.org_id, created.events[0])
    m = metrics.get()
    m.runs_created.labels(run["agent_id"], *m.org(principal.org_id)).inc()
    sending = _send_created(call, created, ticket)
    if wants_stream(call):
        # The stream's first event, the run's `run.queued`, is in hand: it goes out now, while the
        # run is published and sent to the workers (the stream reads nothing before that is done).
        # So this answer has no AgentOS-Deferred: had the broker been away, the watchdog sends the
        # run later, and the stream shows it starting then. A task of its own: a client that
        # leaves at once does not stop the send.
        return await _streamed(call, run, headers, shared.in_flight.start(sending, name=f"send {run['id']}"))
    headers.update(await sending)
    return call.reply(_public(run), headers=headers)


async def _send_created(call: Call[RunCreate], created: runs.Created, ticket: RunTicket) -> dict[str, str]:
    """After the commit: publish the new run's events and bind its admission ticket, and, first
    in its session's line, send it to the workers. The events, the bind and (once the sender is
    connected) the run's message to the workers share one Redis round trip; otherwise the run is
    sent from a thread alongside. The AgentOS-Deferred header when it could not be sent (stored
    and queued: the watchdog sends it once the broker answers); never raises."""
    infra, org_id, run_id = call.infra, call.principal.org_id, created.run["id"]
    queue = infra.jobs.run_commands(run_id, org_id) if created.first_in_line else None
    sending = send_run(infra, org_id, run_id) if created.first_in_line and queue is None else asyncio.sleep(0)
    not_queued, sent = await asyncio.gather(
        announce_created(infra, org_id, created.events, ticket, run_id, queue), sending, return_exceptions=True)
    failure = not_queued or (sent if isinstance(sent, BaseException) else None)
    return deferred(f"run {run_id}", failure) if failure is not None else {}


async def _answer(call: Call[RunCreate], run: runs.RunRow, headers: dict[str, str]) -> Response:
    """A replayed request's answer: the run (`202`, JSON), or, when the request's `Accept` asks
    for `text/event-stream`, the run's event stream from its `run.queued` (`202` too)."""
    if not wants_stream(call):
        return call.reply(_public(run), headers=headers)
    return await _streamed(call, run, headers)


async def _streamed(call: Call[RunCreate], run: runs.RunRow, headers: dict[str, str],
                    published: asyncio.Future[Any] | None = None) -> Response:
    """The run's event stream from its `run.queued` (`202`), with the JSON answer's `headers`;
    `published`: the send of a run just made, still in flight."""
    response = await run_stream(call, run["id"], None, status=202, published=published)
    response.headers.update(headers)
    return response


def _made(outcome: runs.Created | runs.Absent, session_id: str) -> runs.Created:
    if outcome is runs.Absent.SESSION:
        raise session_not_found(session_id)
    if outcome is runs.Absent.AGENT:
        raise ApiError("CONFLICT", "This session's agent was deleted; start a new session with another agent.")
    return outcome


@endpoint("Read one run.", response=Run)
async def get_run(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        run = await runs.get(conn, run_id)
    if run is None:
        raise run_not_found(run_id)
    return call.reply(_public(run), headers={TRACE_HEADER: run["trace_id"]})


@endpoint("A session's runs, newest first.", paginated=True, response=page_of(Run))
async def list_session_runs(call: Call[Any]) -> Response:
    session_id = call.path_id("session_id", "session")
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await sessions.get(conn, session_id) is None:
            raise session_not_found(session_id)
        rows = await runs.list_runs(conn, session_id, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page([_public(r) for r in data], next_cursor)


def _wait_timeout(call: Call[Any]) -> float:
    raw = call.request.query_params.get("timeout", "30")
    limit = call.settings.events.max_wait_s
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= limit:
        raise validation_failed([{"field": "timeout", "message": f"must be a number of seconds from 0 to {limit:g}"}])
    return value


# A wait that ended before the run did says so (status 202 and this header).
WAIT_HEADER = "AgentOS-Wait"
SESSION_SEQ_OF_RUN_SQL = "SELECT s.event_seq FROM sessions s JOIN runs r ON r.session_id = s.id WHERE r.id = %s"


@endpoint("Wait until the run ends (or `?timeout=` seconds pass, default 30, at most 300) and return it: `200` "
          "once it ended, `202` with `AgentOS-Wait: timeout` while it is still active.", response=Run, also=(202,),
          headers=(WAIT_HEADER,), params=(Param("timeout", {"type": "number", "minimum": 0, "default": 30},
                                                "Seconds to wait, at most `AGENTOS_EVENTS__MAX_WAIT_S` (300)."),))
async def wait_run(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    timeout = _wait_timeout(call)
    org_id = call.principal.org_id
    async with tenant_tx(call.pool, org_id) as conn:
        # The session's seq first, the run second: if the run is still active in the second
        # read, its terminal event will get a seq above the first, so following cannot miss it.
        row = await (await conn.execute(SESSION_SEQ_OF_RUN_SQL, (run_id,))).fetchone()
        run = await runs.get(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
    if run["status"] not in runs.TERMINAL and timeout > 0:
        after = int(row["event_seq"]) if row else 0
        reader = reader_for(call, run["session_id"])
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for event in reader.follow(after):
                    if event.run_id == run_id and event.terminal:
                        break
        async with tenant_tx(call.pool, org_id) as conn:
            run = await runs.get(conn, run_id)
        if run is None:  # deleted meanwhile
            raise run_not_found(run_id)
    if run["status"] in runs.TERMINAL:
        return call.reply(_public(run))
    return call.reply(_public(run), status=202, headers={WAIT_HEADER: "timeout"})


@endpoint("Cancel a run: a queued run ends at once; a running one stops within a step (`202`).",
          role="member", status=202, response=Run, errors=("CONFLICT",))
async def cancel_run(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    org_id = call.principal.org_id
    async with tenant_tx(call.pool, org_id) as conn:
        run = await runs.get(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
        if run["status"] in runs.TERMINAL:
            raise ApiError("CONFLICT", f"The run already ended ({run['status']}); there is nothing to cancel.",
                           details={"status": run["status"]})
        waiting = (RunStatus.QUEUED, RunStatus.AWAITING_CONFIRMATION)
        done = None
        if run["status"] in waiting:
            done = await runs.finish(conn, run_id, run["session_id"], RunStatus.CANCELLED, owner=None,
                                     from_status=waiting)
        if done is None:  # running (or it started meanwhile): the worker stops it
            await runs.request_cancel(conn, run_id)
        await audit.record(conn, call.principal.actor, "run.cancel", "run", run_id, trace_id=run["trace_id"])
    if done is None:
        await flag_cancel(call.infra, org_id, [run_id])
        return call.reply(_public(run))
    await run_ended(call.infra, org_id, done)
    return call.reply(_public(done.run))


routes = [
    resource("/v1/sessions/{session_id}/runs", POST=create_run, GET=list_session_runs),
    resource("/v1/runs/{run_id}", GET=get_run),
    resource("/v1/runs/{run_id}/wait", GET=wait_run),
    resource("/v1/runs/{run_id}/cancel", POST=cancel_run),
]
