"""The run lifecycle in a worker: claim -> execute the graph (with heartbeat, cancel watch and
deadline) -> finish with exactly one terminal event -> start the session's next run.

Where a run is executed: `execute_run`. Every way a run can end maps to one terminal status
here, so a run never stays `running` because of an error in its own execution.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from langchain_core.messages import HumanMessage
from langgraph.types import Command
from opentelemetry.trace import SpanKind
from psycopg.rows import DictRow
from redis.exceptions import RedisError

from core import budgets
from core.agent_config import AgentConfig
from core.events import RunEmitter
from core.ids import new_id
from core.infra import is_infra_error
from core.jobs import RUNS_QUEUE
from core.metering import Meter
from core.run_signals import run_ended, start_next
from core.store import agents, files, runs, tool_calls
from core.store.runs import RunStatus
from core.telemetry import metrics, names, scope, tracing
from core.tenancy import Statement, checkpoint_thread_id, run_cancel_key, tenant_pipeline_tx, tenant_tx
from orchestrator.context import AgentSpec, Budget, LimitExceeded, RunContext
from orchestrator.memory_context import prefetch, settle_memory
from orchestrator.models import ModelConfigError, aclose_model, describe_error
from orchestrator.nodes import ModelCallFailed
from runtime.services import Services
from skills.attachments import sync_attachments
from skills.catalogue import RunSkills

log = logging.getLogger("agentos.worker")
_NOOP: AbstractContextManager[None] = nullcontext()


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    answer: str | None = None


class _Watch:
    """Why the graph task was stopped from outside, if it was."""

    cancelled = False
    lease_lost = False
    released = False  # the worker is shutting down and its grace period ended


class _Released:
    """`_execute`'s answer when the run was stopped because its worker is shutting down."""


RELEASED = _Released()


@dataclass(frozen=True)
class Delivery:
    """What one delivery of a run's task did; `retry_after_s` asks for another delivery later
    (the run is held by another worker's lease, which may lapse if that worker died)."""

    outcome: str
    retry_after_s: float | None = None
    trace_id: str | None = None  # the run's, when the delivery got as far as claiming it


async def _graph_input(svc: Services, config: Any, user_message: HumanMessage, resume: bool) -> Any:
    """What to invoke the graph with. A first try starts from the user's message. A later one
    (after a crash, a human's decision, or an infrastructure error mid-step) continues from the
    last checkpoint if the thread holds this input: `Command(resume=...)` when it stopped for a
    human, `None` to re-run the step that was cut off, and `FINISHED` when the graph already
    ended for this input (only the run's own ending was not recorded). With no step left to run
    and no answer recorded (a checkpoint write failed mid-step), the graph starts again from the
    same input message: its id keeps the thread from holding it twice, and the steps already in
    the thread (and the tool calls keyed by them) are not repeated."""
    start = {"messages": [user_message], "plan": ""}
    if not resume:
        return start
    state = await svc.graph.aget_state(config)
    values = state.values or {}
    if not any(getattr(m, "id", None) == user_message.id for m in values.get("messages", [])):
        return start
    if values.get("answered") == user_message.id:
        return FINISHED
    if not state.next:
        return start
    return Command(resume="decided") if state.interrupts else None


# `_graph_input`'s answer when the thread already finished this run's input.
FINISHED = object()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _agent_loader(svc: Services, org_id: str) -> Callable[[str], Awaitable[AgentSpec | None]]:
    """Sub-agents by id, at their current version, read once per run."""
    cache: dict[str, AgentSpec | None] = {}

    async def load(agent_id: str) -> AgentSpec | None:
        if agent_id not in cache:
            async with tenant_tx(svc.pool, org_id) as conn:
                row = await agents.get(conn, agent_id)
            cache[agent_id] = _spec(row) if row is not None else None
        return cache[agent_id]

    return load


def _spec(row: agents.AgentRow | agents.AgentVersionRow) -> AgentSpec:
    return AgentSpec(id=row["id"], name=row["name"], version=row["version"], config=AgentConfig(**row["config"]))


async def execute_run(svc: Services, run_id: str, org_id: str, traceparent: str | None = None) -> Delivery:
    """Execute one delivery of a run: claim it, run it, record how it ended.

    Raises only when Postgres/Redis/the broker is away (the task retries the delivery later). A
    bug anywhere else ends the run `failed` `INTERNAL` at once, logged with its traceback,
    instead of being retried as if the database were down.

    `traceparent`: the sender's trace context (task headers); with tracing on, the delivery is a
    consumer span under it."""
    scope.bind(org_id=org_id, run_id=run_id)
    if not tracing.ON:
        return await _execute_run(svc, run_id, org_id)
    parent = tracing.extract({"traceparent": traceparent}) if traceparent else None
    with tracing.span(names.RUN_EXECUTE, {names.MESSAGING_SYSTEM: "celery", names.MESSAGING_OPERATION: "process",
                                          names.MESSAGING_DESTINATION: RUNS_QUEUE},
                      kind=SpanKind.CONSUMER, parent=parent):
        return await _execute_run(svc, run_id, org_id)


async def _execute_run(svc: Services, run_id: str, org_id: str) -> Delivery:
    owner = worker_id()
    try:
        return await _deliver(svc, run_id, org_id, owner)
    except Exception as exc:
        if is_infra_error(exc):
            raise
        log.exception("run %s: unexpected error outside its graph", run_id)
        return Delivery(await _fail_internal(svc, run_id, org_id, owner, exc))


async def _deliver(svc: Services, run_id: str, org_id: str, owner: str) -> Delivery:
    # One round trip: read the run and its agent version, claim it, and (of use once it is
    # claimed) the org's budgets, month so far and embedding model (core.budgets; so the first
    # recall needs no transaction of its own) and the session's attached files, brought into its
    # workspace before the first step (core.store.runs.claim_batch).
    found = await runs.claim_batch(svc.pool, org_id, run_id, owner, svc.settings.worker.lease_s,
                                   (budgets.ORG_BUDGET_SQL, ()), files.run_attachments(run_id))
    run, claimed = found.run, found.claim
    if run is None:
        return Delivery("missing")
    if run["status"] in runs.TERMINAL:
        return Delivery("already finished")
    if found.agent is None:
        return Delivery(await _finish_unstarted(svc, run, org_id, "The run's agent version no longer exists."))
    if isinstance(claimed, runs.NotClaimed):
        if claimed.status == RunStatus.RUNNING and claimed.lease_left_s is not None:
            # Another worker holds it. Look again when its lease would lapse: if that worker
            # died, this delivery takes over; if it is alive, its heartbeat keeps the lease.
            return Delivery("held by another worker's lease", retry_after_s=max(claimed.lease_left_s, 0.0) + 1.0)
        return Delivery(f"not claimable ({claimed.status or 'session gone'}; a queued run starts when the one "
                        "before it ends)")
    emitter = RunEmitter(svc.pool, svc.redis, org_id, run["session_id"], run_id,
                         maxlen=svc.settings.events.stream_maxlen, ttl_s=svc.settings.events.stream_ttl_s)
    emitter.publish_soon(claimed.events)  # while the graph starts: its next publish waits for it
    try:
        return await _run_claimed(svc, org_id, owner, found.agent, found.also, claimed, emitter)
    finally:
        await emitter.published()


async def _run_claimed(svc: Services, org_id: str, owner: str, agent_row: agents.AgentVersionRow,
                       also: list[list[DictRow]], claimed: runs.Claimed, emitter: RunEmitter) -> Delivery:
    """The claimed run (its `run.started` on its way to the stream), to its end."""
    # Parsed once claimed (the claim did not wait for Python): a stored config that no longer
    # parses is a bug, and the run, started, ends `failed` `INTERNAL` (`_execute_run`).
    agent = _spec(agent_row)
    org = budgets.at_claim(also[0], svc.settings.limits)
    attached = cast(list[files.AttachmentRow], also[1])
    row = claimed.run
    # Which version of each of the org's skills this run uses: fixed by the claim at its first
    # start and read back by every later attempt.
    resolved = dict(row["skill_versions"] or {})
    scope.bind(session_id=row["session_id"], agent_id=row["agent_id"], trace_id=row["trace_id"])
    if row["attempt"] == 1:  # the run's first start: how long it waited for a worker
        metrics.get().time_to_first_event.observe((datetime.now(UTC) - row["created_at"]).total_seconds())
    if tracing.ON:
        attributes: dict[str, str | int | None] = {names.SESSION_ID: row["session_id"],
                                                   names.AGENT_ID: row["agent_id"], names.ATTEMPT: row["attempt"]}
        tracing.annotate(**attributes)
    max_attempts = svc.settings.worker.max_attempts
    if row["lapses"] >= max_attempts:  # its workers keep dying: stop trying
        ended: Outcome | _Released | None = Outcome(RunStatus.FAILED, error={"code": "ATTEMPTS_EXHAUSTED", "message": (
            f"The run was given up: its worker stopped {row['lapses']} times before finishing it "
            f"(AGENTOS_WORKER__MAX_ATTEMPTS is {max_attempts}); see the worker logs.")})
    elif row["deadline_at"] <= datetime.now(UTC):  # taken over after the run's time was up
        ended = Outcome(RunStatus.TIMED_OUT, error={
            "code": "TIMED_OUT", "message": "The run's time limit passed while its worker was gone."})
    else:
        svc.memory.note_org_model(org_id, org.embedding_model)
        meter = Meter(emitter, svc.settings.usage, org.limits, org.month)
        with tracing.continue_run(row["trace_parent"], row["trace_id"]) if tracing.ON else _NOOP:
            ended = await _execute(svc, row, agent, emitter, owner, claimed.user_id,
                                   resolved, meter, attached)
    if ended is None:
        return Delivery("lease lost: another worker owns the run")
    if isinstance(ended, _Released):
        return Delivery(await _release(svc, row, emitter, owner), trace_id=row["trace_id"])
    return Delivery(await _complete(svc, row, emitter, owner, ended), trace_id=row["trace_id"])


async def _execute(
    svc: Services, run: runs.ClaimedRun, agent: AgentSpec, emitter: RunEmitter, owner: str, user_id: str | None,
    resolved: dict[str, int], meter: Meter, attached: list[files.AttachmentRow],
) -> Outcome | _Released | None:
    loop = asyncio.get_running_loop()
    org_id, session_id = emitter.org_id, emitter.session_id
    remaining = (run["deadline_at"] - datetime.now(UTC)).total_seconds()
    deadline = loop.time() + remaining
    limits = agent.config.limits
    workspace = Path(svc.settings.worker.workspace_root).resolve() / org_id / session_id
    try:
        await sync_attachments(svc.storage, attached, workspace)  # files/ as attached now
    except Exception as exc:  # the file storage is away: the run goes on, its files/ as they were
        if is_infra_error(exc):
            raise
        log.warning("run %s: attached files not brought into the workspace: %s", run["id"], exc)
    ctx = RunContext(
        org_id=org_id, session_id=session_id, run_id=run["id"], agent=agent,
        budget=Budget(max_steps=limits.max_steps, max_tokens=limits.max_tokens, deadline=deadline),
        emitter=emitter, pool=svc.pool, models=svc.settings.models,
        skills=RunSkills(svc.skills, svc.pool, org_id, resolved, svc.skill_builders, svc.settings),
        workspace=workspace,
        load_agent=_agent_loader(svc, org_id),
        max_depth=svc.settings.worker.max_delegation_depth, user_id=user_id, memory=svc.memory,
        sandbox=svc.sandbox, infra=svc.infra, meter=meter,
    )
    thread_id = checkpoint_thread_id(org_id, session_id)
    config: Any = {"configurable": {"thread_id": thread_id}}
    text = (run["input"] or {}).get("text", "")
    # The input's message id is the run's, so a later attempt never adds it to the thread twice.
    user_message = HumanMessage(text, id=f"input-{run['id']}")

    if agent.config.mode != "plan":  # (a plan is proposed, and waits for a human, before any THINK)
        prefetch(ctx, text)  # the first THINK's memory reads, while the graph starts

    async def invoke() -> dict[str, Any]:
        await meter.start()  # a budget already used up stops the run at its first step
        async with asyncio.timeout_at(deadline):
            resume = run["attempt"] > 1
            for failures in itertools.count():
                try:
                    graph_input = await _graph_input(svc, config, user_message, resume)
                    if graph_input is FINISHED:
                        state = await svc.graph.aget_state(config)
                        return dict(state.values)
                    result: dict[str, Any] = await svc.graph.ainvoke(graph_input, config, context=ctx)
                    # Writes no checkpoint followed (a step stopped for a human) are stored before
                    # the run pauses: the delivery that resumes it reads them (orchestrator.checkpointer).
                    await svc.checkpointer.flush_writes(thread_id)
                    return result
                except Exception as exc:
                    if not is_infra_error(exc):
                        raise  # the run ends: `_settle_thread` below
                    # A step cut off runs again from the last stored checkpoint: what it held goes.
                    svc.checkpointer.discard_writes(thread_id)
                    # Postgres or Redis went away mid-step. The step is re-run from the last
                    # checkpoint once they answer (side effects are keyed by tool call, so a
                    # re-run does not repeat them), while the lease is still ours.
                    delay = infra_backoff(failures)
                    log.warning("run %s: a step failed for lack of Postgres/Redis (%s: %s); retrying in %.1f s",
                                run["id"], type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    resume = True
                    try:
                        await _still_ours(svc, org_id, run["id"], owner)
                    except Exception as again:  # still away: the next try waits longer
                        if not is_infra_error(again):
                            raise
            raise AssertionError("unreachable")

    watch = _Watch()
    ours = True  # False once another worker goes on with the run (or this one stops mid-way)
    # The thread's checkpoints go with the run's events and deferred usage records, in one
    # transaction per step (orchestrator.checkpointer, core.metering); detached in `finally`.
    svc.checkpointer.attach_writer(thread_id, emitter.flush_along)
    task = asyncio.create_task(invoke())
    watcher = asyncio.create_task(_watch(svc, org_id, run["id"], owner, task, watch))
    try:
        result = await task
        if result.get("__interrupt__"):
            return Outcome(RunStatus.AWAITING_CONFIRMATION)
        answer = str(result.get("answer", ""))
        return Outcome(RunStatus.SUCCEEDED, output={"text": answer}, answer=answer)
    except _LeaseLost:
        ours = False
        return None
    except asyncio.CancelledError:
        ours = watch.cancelled
        if watch.lease_lost:
            return None
        if watch.released:
            return RELEASED
        if watch.cancelled:
            return Outcome(RunStatus.CANCELLED)
        raise
    except TimeoutError:
        return Outcome(RunStatus.TIMED_OUT, error={
            "code": "TIMED_OUT", "message": f"The run did not finish within its limit of {limits.timeout_s} s; "
                                            "raise limits.timeout_s or give the agent a smaller task."})
    except LimitExceeded as exc:
        return Outcome(RunStatus.FAILED, error={"code": exc.code, "message": exc.message})
    except ModelCallFailed as exc:
        attempts = svc.settings.models.max_retries + 1
        message = describe_error(exc.cause, attempts=attempts)
        return Outcome(RunStatus.FAILED, error={"code": "MODEL_ERROR", "message": message})
    except ModelConfigError as exc:
        return Outcome(RunStatus.FAILED, error={"code": "MODEL_CONFIG", "message": str(exc)})
    except Exception as exc:
        log.exception("run %s failed", run["id"])
        return Outcome(RunStatus.FAILED, error={"code": "INTERNAL", "message": f"The run failed unexpectedly "
                                                                        f"({type(exc).__name__}); see the worker log."})
    finally:
        watcher.cancel()
        await settle_memory(ctx)
        try:
            await _settle_thread(svc, thread_id, keep=ours)
        finally:
            svc.checkpointer.detach_writer(thread_id)
        for model in ctx.model_cache.values():
            await aclose_model(model)
        await ctx.skills.aclose()


async def _settle_thread(svc: Services, thread_id: str, *, keep: bool) -> None:
    """What the checkpointer still holds back for the thread once the graph stopped
    (orchestrator.checkpointer): stored when the run ends here (failed, cancelled, timed out),
    as LangGraph's own saver would have stored it already, so the session's next run finds the
    thread as before; dropped when another delivery goes on with the run from the last stored
    checkpoint (lease lost, released at shutdown)."""
    if keep:
        try:
            await svc.checkpointer.flush_writes(thread_id)
            return
        except Exception as exc:
            log.warning("checkpoint writes of thread %s not stored after the run stopped: %s", thread_id, exc)
    svc.checkpointer.discard_writes(thread_id)


async def _watch(svc: Services, org_id: str, run_id: str, owner: str, task: asyncio.Task[Any], watch: _Watch) -> None:
    """Renew the lease every `heartbeat_s`; stop the run when it is cancelled, the lease is lost,
    or the worker's shutdown grace period ends (`runtime.drain`)."""
    settings = svc.settings.worker
    key = run_cancel_key(org_id, run_id)
    loop = asyncio.get_running_loop()
    next_beat = loop.time() + settings.heartbeat_s
    while not task.done():
        await asyncio.sleep(settings.cancel_poll_s)
        if svc.drain is not None and svc.drain.release_due():
            watch.released = True
            task.cancel()
            return
        cancel = False
        try:
            cancel = bool(await svc.redis.exists(key))
        except (RedisError, OSError):
            pass  # the heartbeat below reads the request from Postgres too
        if loop.time() >= next_beat:
            next_beat = loop.time() + settings.heartbeat_s
            try:
                async with tenant_tx(svc.pool, org_id) as conn:
                    ours, requested = await runs.heartbeat(conn, run_id, owner, settings.lease_s)
            except Exception as exc:  # keep going; if Postgres stays away the lease lapses
                log.warning("heartbeat of run %s failed: %s", run_id, exc)
                continue
            if not ours:
                watch.lease_lost = True
                task.cancel()
                return
            cancel = cancel or requested
        if cancel:
            watch.cancelled = True
            task.cancel()
            return


class _LeaseLost(Exception):
    """Another worker took the run over while this one waited for Postgres/Redis."""


def infra_backoff(failures: int) -> float:
    """Seconds to wait after the `failures`-th consecutive infrastructure error: exponential
    from 0.5 s, capped at 8 s, with jitter so workers do not return in step."""
    return float(min(0.5 * 2**failures, 8.0) * random.uniform(0.75, 1.25))


async def _still_ours(svc: Services, org_id: str, run_id: str, owner: str) -> None:
    """Renew the lease before re-running a step; stop if another worker took the run over. While
    Postgres is still away this raises its error, and the step waits again."""
    async with tenant_tx(svc.pool, org_id) as conn:
        ours, _ = await runs.heartbeat(conn, run_id, owner, svc.settings.worker.lease_s)
    if not ours:
        raise _LeaseLost


async def _release(svc: Services, run: runs.ClaimedRun, emitter: RunEmitter, owner: str) -> str:
    """The worker is shutting down and the run did not finish within the grace period: store the
    events it emitted, queue it again and send it to the other workers. The one that claims it
    resumes from the last checkpoint (a step cut off here runs again there)."""
    await emitter.close()
    async with tenant_tx(svc.pool, emitter.org_id) as conn:
        released = await runs.release(conn, run["id"], owner)
    if not released:
        return "lease lost before releasing: another worker owns the run"
    log.info("run %s: released at shutdown; another worker resumes it from its last checkpoint", run["id"])
    await start_next(svc.infra, emitter.org_id, run["id"])  # a failed send: the watchdog sends it
    return "released at shutdown (sent to another worker)"


class _NotOurs(Exception):
    """The run was no longer ours to finish; roll the finishing transaction back."""


async def _complete(svc: Services, run: runs.ClaimedRun, emitter: RunEmitter, owner: str, outcome: Outcome) -> str:
    """Store the events still buffered, the answer, the terminal state and its events in one
    transaction, then announce the ending (`core.run_signals.run_ended`). An infrastructure error
    while finishing is retried here (the run's work is done; only its record is missing) for up
    to a lease, then raised so the delivery is retried."""
    give_up = asyncio.get_running_loop().time() + svc.settings.worker.lease_s
    # The graph's last checkpoint, if it got that far, is stored by the ending's transaction.
    tries = EndTries(checkpoint=svc.checkpointer.take_final(checkpoint_thread_id(emitter.org_id, emitter.session_id)))
    for failures in itertools.count():
        try:
            return await _record_end(svc, run, emitter, owner, outcome, tries)
        except Exception as exc:
            if not is_infra_error(exc) or asyncio.get_running_loop().time() >= give_up:
                raise
            delay = infra_backoff(failures)
            log.warning("run %s: recording its end failed (%s); retrying in %.1f s", run["id"], exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class EndTries:
    """What the tries of one run's ending (`_complete`) leave behind for the next."""

    # A try failed while committing: whether its commit went through is unknown (if it did, the
    # run is no longer ours to finish, and its buffered events were stored by that commit).
    commit_unknown: bool = False
    # The graph's last checkpoint (`StepSaver.take_final`), stored with the run's end: a crash
    # before that commit leaves the thread at the step before, which the next delivery re-runs.
    checkpoint: Statement | None = None


async def _record_end(svc: Services, run: runs.ClaimedRun, emitter: RunEmitter, owner: str, outcome: Outcome,
                      tries: EndTries) -> str:
    org_id, session_id, run_id = emitter.org_id, emitter.session_id, run["id"]
    if outcome.status == RunStatus.AWAITING_CONFIRMATION:
        await emitter.close()
        async with tenant_tx(svc.pool, org_id) as conn:
            pause = await runs.pause(conn, run_id, owner)
            # A human may have decided while the graph was stopping; then go straight on.
            resumed = pause == runs.Pause.PAUSED and await tool_calls.pending_in_run(conn, run_id) == 0 and \
                await runs.resume(conn, run_id) is not None
        if resumed:
            await start_next(svc.infra, org_id, run_id)
            return "decided while pausing: re-queued"
        if pause == runs.Pause.CANCEL_REQUESTED:  # cancelled while the graph was stopping
            outcome = Outcome(RunStatus.CANCELLED)
        else:
            return "awaiting confirmation (worker released)" if pause == runs.Pause.PAUSED else \
                "lease lost before pausing"
    answer = runs.Answer(new_id("message"), outcome.answer or "", {"agent_id": run["agent_id"]}) \
        if outcome.status == RunStatus.SUCCEEDED else None
    committing = False
    try:
        # One transaction in two round trips (docs/runs.md, "How a run ends"): the events still
        # buffered first, then the answer's `message.completed` and the terminal event.
        async with emitter.ending() as buffered, tenant_pipeline_tx(svc.pool, org_id) as conn:
            done = await runs.finish(conn, run_id, session_id, outcome.status, owner=owner, output=outcome.output,
                                     error=outcome.error, answer=answer, earlier_events=buffered)
            if done is None:
                raise _NotOurs
            if tries.checkpoint is not None:
                await conn.execute(*tries.checkpoint)  # read by nobody: it travels with the COMMIT
            # Left: the events' statement and the COMMIT, sent together at the block's end. An
            # error from here on may be the commit's answer lost after the commit was done.
            committing = True
    except _NotOurs:
        if tries.commit_unknown:
            # Perhaps our own earlier commit ended the run and stored these events with it:
            # storing them again would repeat them after its terminal event.
            emitter.discard()
        else:
            await emitter.close()  # stored, as before: the run's events up to the lease's loss
        return "lease lost before finishing: another worker owns the run"
    except BaseException:
        tries.commit_unknown = tries.commit_unknown or committing
        raise
    await run_ended(svc.infra, org_id, done)
    return outcome.status


async def _end_unstarted(svc: Services, run_id: str, org_id: str, session_id: str, owner: str | None,
                         error: dict[str, Any]) -> runs.Finished | None:
    """Fail a run this delivery could not execute: one it holds (`owner`), else a queued one."""
    async with tenant_tx(svc.pool, org_id) as conn:
        done = None
        if owner is not None:
            done = await runs.finish(conn, run_id, session_id, RunStatus.FAILED, owner=owner, error=error)
        if done is None:
            done = await runs.finish(conn, run_id, session_id, RunStatus.FAILED, owner=None,
                                     from_status=(RunStatus.QUEUED,), error=error)
    if done is not None:
        await run_ended(svc.infra, org_id, done)
    return done


async def _finish_unstarted(svc: Services, run: runs.RunRow, org_id: str, message: str) -> str:
    done = await _end_unstarted(svc, run["id"], org_id, run["session_id"], None,
                                {"code": "AGENT_MISSING", "message": message})
    return "failed: agent missing" if done is not None else "not claimable"


async def _fail_internal(svc: Services, run_id: str, org_id: str, owner: str, exc: Exception) -> str:
    async with tenant_tx(svc.pool, org_id) as conn:
        run = await runs.get(conn, run_id)
    if run is None or run["status"] in runs.TERMINAL:
        return "unexpected error; the run had already ended"
    error = {"code": "INTERNAL", "message": f"The run failed unexpectedly ({type(exc).__name__}); see the worker log."}
    done = await _end_unstarted(svc, run_id, org_id, run["session_id"], owner, error)
    return "failed: internal error" if done is not None else "unexpected error; the run is another worker's"
