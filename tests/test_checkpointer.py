"""The run graph's checkpointer (orchestrator/checkpointer.py) against the real Postgres:
LangGraph's own conformance suite, and what it does differently from the library's saver (a
step's writes wait for the step's checkpoint and go with it; writes no checkpoint follows are
stored by `flush_writes`, which the executor calls when the graph returns)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from agentos.stack.local import StackUrls
from core.migrations import setup_checkpoints
from orchestrator.checkpointer import StepSaver

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


async def _pool(url: str) -> Pool:
    pool: Pool = AsyncConnectionPool(url, kwargs={"autocommit": True, "prepare_threshold": 0,
                                                  "row_factory": dict_row}, min_size=1, max_size=2, open=False)
    await pool.open()
    return pool


@pytest.fixture
def scratch_db(stack: StackUrls) -> Any:
    """A database of its own with LangGraph's checkpoint tables: the suite lists checkpoints of
    every thread, so it must not see the rest of the test run's."""
    name = f"checkpoints_{secrets.token_hex(4)}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))
    setup_checkpoints(url)
    try:
        yield url
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize("buffer_writes", [True, False])
def test_the_saver_passes_langgraphs_checkpoint_conformance_suite(scratch_db: str, buffer_writes: bool) -> None:
    async def run() -> Any:
        pool = await _pool(scratch_db)

        @checkpointer_test(name=f"StepSaver(buffer_writes={buffer_writes})")
        async def factory() -> AsyncIterator[StepSaver]:
            yield StepSaver(pool, buffer_writes=buffer_writes)

        try:
            return await validate(factory)
        finally:
            await pool.close()

    report = asyncio.run(run())
    failures = {name: result.failures for name, result in report.results.items() if result.passed is False}
    assert report.passed_all_base(), failures
    assert report.results["prune"].passed, failures  # the library's saver has aprune; ours keeps it


def _writes_in_db(url: str, thread_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT checkpoint_id, channel FROM checkpoint_writes WHERE thread_id = %s ORDER BY checkpoint_id, idx",
            (thread_id,))]


def test_a_steps_writes_are_stored_with_its_checkpoint(scratch_db: str) -> None:
    """Seen from another connection (another worker): a task's writes appear with the checkpoint
    after them, not before; the saver's own reads see them at once."""
    thread_id = str(uuid.uuid4())

    async def run() -> None:
        pool = await _pool(scratch_db)
        try:
            saver = StepSaver(pool)
            first = empty_checkpoint()
            config = await saver.aput({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}, first,
                                      {"source": "input", "step": -1, "parents": {}}, {})
            await saver.aput_writes(config, [("messages", ["hi"]), ("answer", "a")], task_id="task-1")
            assert _writes_in_db(scratch_db, thread_id) == [], "kept until the step's checkpoint"
            second = empty_checkpoint()
            await saver.aput(config, second, {"source": "loop", "step": 0, "parents": {}}, {})
            assert _writes_in_db(scratch_db, thread_id) == [(first["id"], "messages"), (first["id"], "answer")]

            await saver.aput_writes({"configurable": {"thread_id": thread_id, "checkpoint_ns": "",
                                                      "checkpoint_id": second["id"]}}, [("answer", "b")], "task-2")
            got = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
            assert got is not None and got.pending_writes == [("task-2", "answer", "b")]
            assert _writes_in_db(scratch_db, thread_id)[-1] == (second["id"], "answer"), "a read stores them"

            await saver.aput_writes({"configurable": {"thread_id": thread_id, "checkpoint_ns": "",
                                                      "checkpoint_id": second["id"]}}, [("answer", "c")], "task-3")
            saver.discard_writes(thread_id)
            got = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
            assert got is not None and [w[0] for w in got.pending_writes or []] == ["task-2"]
        finally:
            await pool.close()

    asyncio.run(run())


class _State(TypedDict, total=False):
    steps: list[str]
    decision: str


def _approval_graph(saver: StepSaver, *, prepare_first: bool = True) -> Any:
    def prepare(state: _State) -> _State:
        return {"steps": [*state.get("steps", []), "prepare"]}

    def ask(state: _State) -> _State:
        decision = interrupt({"question": "go ahead?"})
        return {"steps": [*state.get("steps", []), "ask"], "decision": str(decision)}

    graph = StateGraph(_State)
    graph.add_node("ask", ask)
    if prepare_first:
        graph.add_node("prepare", prepare)
        graph.add_edge(START, "prepare")
        graph.add_edge("prepare", "ask")
    else:
        graph.add_edge(START, "ask")
    graph.add_edge("ask", END)
    return graph.compile(checkpointer=saver)


def _stored_steps(url: str, thread_id: str) -> list[tuple[int, bool]]:
    """(step, has a parent) of the thread's stored checkpoints, oldest first."""
    with psycopg.connect(url) as conn:
        return [(int(r[0]), r[1] is not None) for r in conn.execute(
            "SELECT metadata->>'step', parent_checkpoint_id FROM checkpoints WHERE thread_id = %s "
            "ORDER BY checkpoint_id", (thread_id,))]


@pytest.mark.parametrize("prepare_first", [True, False])
def test_skip_start_stores_no_checkpoint_before_the_first_real_step(scratch_db: str, prepare_first: bool) -> None:
    """`skip_start` (the worker's setting): the input checkpoint and the one after `__start__`
    are stored only if the graph stops before another checkpoint follows (here: an interrupt in
    the first node, like plan mode's). Either way another saver resumes the run, and a node
    that finished is not run again."""
    thread_id = str(uuid.uuid4())
    config: Any = {"configurable": {"thread_id": thread_id}}

    async def run() -> None:
        pool, other_pool = await _pool(scratch_db), await _pool(scratch_db)
        try:
            saver = StepSaver(pool, skip_start=True)
            result = await _approval_graph(saver, prepare_first=prepare_first).ainvoke(
                {"steps": []}, config, durability="sync")
            assert result.get("__interrupt__"), result
            await saver.flush_writes(thread_id)
            # With `prepare`, its checkpoint (step 1) is the first stored, standing in for the two
            # before it (so it has no parent); without, the graph stopped in step 1 and the held
            # checkpoint after `__start__` was stored with the interrupt.
            assert _stored_steps(scratch_db, thread_id) == [(1, False)] if prepare_first else [(0, False)]

            resumer = _approval_graph(StepSaver(other_pool, skip_start=True), prepare_first=prepare_first)
            state = await resumer.aget_state(config)
            assert [i.value for i in state.interrupts] == [{"question": "go ahead?"}]
            done = await resumer.ainvoke(Command(resume="yes"), config)
            assert done == {"steps": ["prepare", "ask"] if prepare_first else ["ask"], "decision": "yes"}
        finally:
            await pool.close()
            await other_pool.close()

    asyncio.run(run())


def test_skip_start_holds_back_a_later_runs_start_too(scratch_db: str) -> None:
    """A thread's later run (a session's next message) starts with an input checkpoint and one
    after `__start__` too, further on in the thread: held back as in its first run, so the first
    real step's checkpoint is again the run's first stored (it was one round trip before the first
    step in every run but a session's first). The thread reads the same from another saver."""
    thread_id = str(uuid.uuid4())
    config: Any = {"configurable": {"thread_id": thread_id}}

    def prepare(state: _State) -> _State:
        return {"steps": [*state.get("steps", []), "prepare"]}

    graph = StateGraph(_State)
    graph.add_node("prepare", prepare)
    graph.add_edge(START, "prepare")
    graph.add_edge("prepare", END)

    async def run() -> None:
        pool = await _pool(scratch_db)
        try:
            compiled = graph.compile(checkpointer=StepSaver(pool, skip_start=True))
            assert await compiled.ainvoke({"steps": []}, config) == {"steps": ["prepare"]}
            assert _stored_steps(scratch_db, thread_id) == [(1, False)]
            assert await compiled.ainvoke({"steps": ["again"]}, config) == {"steps": ["again", "prepare"]}
            # Steps 2 (the input) and 3 (after `__start__`) held back; step 4 stands in for them.
            assert _stored_steps(scratch_db, thread_id) == [(1, False), (4, True)]
            with psycopg.connect(scratch_db) as conn:
                parents = conn.execute("SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints "
                                       "WHERE thread_id = %s ORDER BY checkpoint_id", (thread_id,)).fetchall()
            assert parents[1][1] == parents[0][0]
            reader = graph.compile(checkpointer=StepSaver(pool, skip_start=True))
            assert (await reader.aget_state(config)).values == {"steps": ["again", "prepare"]}
        finally:
            await pool.close()

    asyncio.run(run())


def test_an_interrupt_flushed_at_the_graphs_return_is_resumed_by_another_saver(scratch_db: str) -> None:
    """The pause for a human, as the executor does it: the interrupting step has no checkpoint
    after it, so its writes are stored by `flush_writes`; a fresh saver (the worker that resumes
    the run) sees the interrupt and the resume finishes the graph without re-running `prepare`."""
    config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}}

    async def run() -> None:
        pool, other_pool = await _pool(scratch_db), await _pool(scratch_db)
        try:
            saver = StepSaver(pool)
            # "sync": each checkpoint is stored before the next step starts, so no later `aput`
            # takes the interrupt's writes along (under "async" one may, or may not).
            result = await _approval_graph(saver).ainvoke({"steps": []}, config, durability="sync")
            assert result.get("__interrupt__"), result
            unflushed = await _approval_graph(StepSaver(other_pool)).aget_state(config)
            assert unflushed.interrupts == (), "not stored yet: this is why the executor flushes"
            await saver.flush_writes(config["configurable"]["thread_id"])

            resumer = _approval_graph(StepSaver(other_pool))
            state = await resumer.aget_state(config)
            assert [i.value for i in state.interrupts] == [{"question": "go ahead?"}]
            done = await resumer.ainvoke(Command(resume="yes"), config)
            assert done == {"steps": ["prepare", "ask"], "decision": "yes"}
        finally:
            await pool.close()
            await other_pool.close()

    asyncio.run(run())
