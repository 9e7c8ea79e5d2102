"""The worker's event loop (runtime/services.py): `LoopThread`, the persistent loop a worker process
runs its tasks' coroutines on (`WorkerRuntime` is one with the process's services; `bench/hop.py`
times the hop), and `AGENTOS_WORKER__EVENT_LOOP`: uvloop's by default, Python's own on request,
and a run executes to its end on either."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pydantic
import pytest
import uvloop

from agentos.stack.local import StackUrls
from core.settings import load_settings
from core.store import runs
from core.tenancy import tenant_tx
from runtime.executor import execute_run
from runtime.services import LoopThread, WorkerRuntime, new_event_loop
from tests.helpers import RsaKeys, make_settings


def test_the_loop_is_uvloops_unless_asyncios_is_chosen():
    for choice, kind in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = new_event_loop(choice)
        try:
            assert isinstance(loop, kind)
            assert choice != "asyncio" or not isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    with pytest.raises(pydantic.ValidationError):
        load_settings(worker={"event_loop": "trio"})


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_a_run_executes_to_its_end_on_either_loop(client, org, stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path,
                                                 choice: str):
    agent = org.create_agent()
    session = org.create_session(agent["id"])
    settings = make_settings(stack, rsa_keys, worker={"workspace_root": str(tmp_path / "ws"), "event_loop": choice})
    runtime = WorkerRuntime(settings)
    try:
        async def create() -> str:
            async with tenant_tx(runtime.services.pool, org.id) as conn:
                created = await runs.create(conn, session_id=session["id"], text="hello",
                                            multitask="enqueue", metadata={}, idempotency_key=None,
                                            request_hash="loop", created_by="test")
            return str(created.run["id"])

        async def loop_kind() -> bool:
            return isinstance(asyncio.get_running_loop(), uvloop.Loop)

        run_id = runtime.run(create())
        delivery = runtime.run(execute_run(runtime.services, run_id, org.id))
        on_uvloop = runtime.run(loop_kind())
    finally:
        runtime.close()
    assert delivery.outcome == "succeeded"
    assert on_uvloop is (choice == "uvloop")
    r = client.get(f"/v1/runs/{run_id}", headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert r.json()["output"]["text"]


def test_a_coroutine_runs_on_the_loops_own_thread_and_its_result_comes_back() -> None:
    loop = LoopThread()
    try:
        async def where() -> tuple[str, int]:
            await asyncio.sleep(0)
            return threading.current_thread().name, id(asyncio.get_running_loop())

        first, second = loop.run(where()), loop.run(where())
        assert first[0] == "agentos-runtime" != threading.current_thread().name
        assert first[1] == second[1]  # one loop for every task of the process
    finally:
        loop.stop()


def test_a_coroutines_error_is_raised_to_the_caller_and_the_loop_goes_on() -> None:
    loop = LoopThread()
    try:
        async def fail() -> None:
            raise LookupError("nope")

        async def ok() -> int:
            return 7

        with pytest.raises(LookupError, match="nope"):
            loop.run(fail())
        assert loop.run(ok()) == 7
    finally:
        loop.stop()


def test_stop_ends_the_thread() -> None:
    def loop_threads() -> int:
        return sum(t.name == "agentos-runtime" and t.is_alive() for t in threading.enumerate())

    before = loop_threads()
    loop = LoopThread()
    assert loop_threads() == before + 1
    loop.stop()
    assert loop_threads() == before
