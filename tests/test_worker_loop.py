"""`runtime.services.LoopThread`: the persistent event loop a worker process runs its tasks'
coroutines on (`WorkerRuntime` is one with the process's services; `bench/hop.py` times the hop)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime.services import LoopThread


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
