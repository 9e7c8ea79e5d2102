"""`api.in_flight.InFlight`: work a request started runs to its end without its client; at
shutdown the lifespan waits for it a moment and cancels what is left."""

from __future__ import annotations

import asyncio

from api.in_flight import InFlight


def test_held_work_ends_and_is_let_go() -> None:
    async def scenario() -> tuple[int, int, str]:
        in_flight = InFlight()
        gate = asyncio.Event()

        async def work() -> str:
            await gate.wait()
            return "sent"

        task = in_flight.start(work(), name="send run_1")
        held = len(in_flight)
        gate.set()
        result = await task
        await asyncio.sleep(0)  # the done callback runs
        return held, len(in_flight), result

    assert asyncio.run(scenario()) == (1, 0, "sent")


def test_drain_waits_for_work_that_ends_and_cancels_work_that_does_not() -> None:
    async def scenario() -> tuple[bool, bool]:
        in_flight = InFlight()

        async def quick() -> None:
            await asyncio.sleep(0.05)

        quick_task = in_flight.start(quick(), name="quick")
        stuck_task = in_flight.start(asyncio.Event().wait(), name="stuck")
        await in_flight.drain(0.3)
        return quick_task.done() and not quick_task.cancelled(), stuck_task.cancelled()

    assert asyncio.run(scenario()) == (True, True)
