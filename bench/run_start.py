"""Round trips from a run's delivery to its first model call, counted on the wire.

    .venv/bin/python bench/run_start.py [--runs N] [--wall]

Starts its own stack (bench/runs.py's `Bench`), then executes runs of an `offline:default` agent
in this process (`runtime.executor.execute_run`, as a Celery task would) with the worker's
Postgres and Redis reached through `bench.wire_turns.TurnCounter`s, and prints the turns (round
trips the worker waited for) of each stretch of a run: the claim (`_deliver` up to `_execute`),
from there to the first THINK's memory reads, those reads (`memory_context`: recall and the
session window), the rest up to the model call, and the rest of the run. Each run is counted
twice: the first run of a fresh session, and a second run of the same session (its window then
comes from Redis). Turn counts do not depend on the machine's load; `--wall` also prints each
stretch's median wall time without the forwarders (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.runs import Bench, new_sessions, stack_with_org  # noqa: E402
from bench.wire_turns import TurnCounter, around, via  # noqa: E402

# Runs before counting: psycopg prepares a statement at its 5th use on each pooled connection.
WARM = 30
MARKS = ("claim", "to memory", "memory", "to model", "rest")


Stretches = dict[str, tuple[float, tuple[int, ...]]]  # stretch -> (seconds, turns per counter)


class Marks:
    """Where a run is (each stretch's start), as snapshots of the counters and the clock."""

    def __init__(self, counters: list[TurnCounter]) -> None:
        self.counters = counters
        self.points: list[tuple[str, float, tuple[int, ...]]] = []
        self.said = []

    def mark(self, name: str) -> None:
        if any(p[0] == name for p in self.points):
            return  # only the first THINK counts
        self.points.append((name, time.perf_counter(), tuple(c.snapshot()[0] for c in self.counters)))
        self.said.append(f"-- {name}")

    said: list[str]  # with --explain: every statement and Redis command, in order

    def stretches(self) -> Stretches:
        out = {}
        for (name, t, turns), (_, t2, turns2) in zip(self.points, self.points[1:], strict=False):
            out[name] = (t2 - t, tuple(b - a for a, b in zip(turns, turns2, strict=True)))
        return out


def hook(owner: Any, attr: str, before: Callable[[], None], after: Callable[[], None] | None = None) -> None:
    setattr(owner, attr, around(getattr(owner, attr), before, after))


def explain(marks: list[Marks]) -> None:
    """Note every statement and Redis command sent (their text, not their round trips)."""
    import psycopg
    import redis.asyncio as aioredis

    def note(label: str) -> None:
        marks[0].said.append(label)

    execute = psycopg.AsyncCursor.execute

    async def cursor_execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        note("SQL " + " ".join(str(query).split())[:90])
        return await execute(self, query, params, **kwargs)

    command: Any = aioredis.Redis.execute_command  # untyped in redis-py

    async def redis_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        note(f"REDIS {args[0]}")
        return await command(self, *args, **kwargs)

    pipeline: Any = aioredis.client.Pipeline.execute

    async def pipeline_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        note("REDIS pipeline " + ",".join(str(c[0][0]) for c in self.command_stack))
        return await pipeline(self, *args, **kwargs)

    psycopg.AsyncCursor.execute = cursor_execute  # type: ignore[method-assign]
    aioredis.Redis.execute_command = redis_command  # type: ignore[method-assign]
    aioredis.client.Pipeline.execute = pipeline_execute  # type: ignore[method-assign]


async def measure(bench: Bench, runs: int, counted: bool, explained: bool = False) -> dict[str, list[Stretches]]:
    import orchestrator.nodes as nodes
    import runtime.executor as executor
    from core.settings import load_settings
    from core.store import runs as run_store
    from core.tenancy import tenant_tx
    from runtime.services import Services

    assert bench.urls is not None
    pg = TurnCounter(urlsplit(bench.urls.database_url).port or 0)
    rd = TurnCounter(urlsplit(bench.urls.redis_url).port or 0)
    pg.__enter__()
    rd.__enter__()
    try:
        database_url = via(bench.urls.database_url, pg.port) if counted else bench.urls.database_url
        redis_url = via(bench.urls.redis_url, rd.port) if counted else bench.urls.redis_url
        # The cancel poll and the heartbeat would add turns of their own while a run executes.
        settings = load_settings(database={"url": database_url}, redis={"url": redis_url},
                                 worker={"workspace_root": str(bench.dir / "workspaces"), "cancel_poll_s": 60,
                                         "heartbeat_s": 60, "lease_s": 120})
        svc = await Services.open(settings)
        marks: list[Marks] = [Marks([pg, rd])]
        if explained:
            explain(marks)

        def at(name: str) -> Callable[[], None]:
            return lambda: marks[0].mark(name)

        hook(executor, "_deliver", at("claim"))
        hook(executor, "_execute", at("to memory"))
        hook(nodes, "memory_context", at("memory"), at("to model"))
        hook(nodes, "_think_with", at("rest"))
        sessions = await new_sessions(bench, runs + WARM)
        results: dict[str, list[Stretches]] = {"first run": [], "second run": []}
        for which in results:
            for i, session_id in enumerate(sessions):
                async with tenant_tx(svc.pool, bench.org_id) as conn:
                    created = await run_store.create(conn, session_id=session_id, text="hello",
                                                     multitask="enqueue", metadata={}, idempotency_key=None,
                                                     request_hash="bench", created_by="bench")
                marks[0] = Marks([pg, rd])
                delivery = await executor.execute_run(svc, created.run["id"], bench.org_id)
                marks[0].mark("end")
                assert delivery.outcome == "succeeded", delivery
                if i >= WARM:  # warm: pools grown, statements prepared on every pooled connection
                    results[which].append(marks[0].stretches())
                    if explained and i == len(sessions) - 1:
                        print(f"{which}, statements and commands:")
                        print("\n".join("  " + line for line in marks[0].said))
        await svc.close()
        return results
    finally:
        pg.__exit__(None, None, None)
        rd.__exit__(None, None, None)


def report(results: dict[str, list[Stretches]], counted: bool) -> None:
    for which, samples in results.items():
        print(f"{which} ({len(samples)} runs, medians):")
        total = [0, 0]
        upto_model = [0, 0]
        for name in MARKS:
            if counted:
                pg = statistics.median(s[name][1][0] for s in samples)
                rd = statistics.median(s[name][1][1] for s in samples)
                spread = {s[name][1] for s in samples}
                total[0] += int(pg)
                total[1] += int(rd)
                if name != "rest":
                    upto_model[0] += int(pg)
                    upto_model[1] += int(rd)
                note = "" if len(spread) == 1 else f"  (varied: {sorted(spread)})"
                print(f"  {name:10s} {pg:4.0f} Postgres + {rd:3.0f} Redis turns{note}")
            else:
                wall = statistics.median(s[name][0] for s in samples) * 1000
                print(f"  {name:10s} {wall:6.2f} ms")
        if counted:
            print(f"  delivery -> model call: {upto_model[0]} Postgres + {upto_model[1]} Redis = "
                  f"{sum(upto_model)} turns; whole run {sum(total)}")
        else:
            walls = [sum(s[n][0] for n in MARKS if n != "rest") * 1000 for s in samples]
            print(f"  delivery -> model call: {statistics.median(walls):.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--wall", action="store_true", help="also time the stretches without the forwarders")
    parser.add_argument("--explain", action="store_true", help="print the statements and commands of a run")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    with stack_with_org(args) as bench:
        report(asyncio.run(measure(bench, args.runs, counted=True, explained=args.explain)), counted=True)
        if args.wall:
            report(asyncio.run(measure(bench, args.runs * 3, counted=False)), counted=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

