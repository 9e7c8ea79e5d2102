"""A worker's own cost per run, in one process: CPU and wall of `execute_run`, and what Postgres spent.

    .venv/bin/python bench/execute.py [--runs 200] [--input hello] [--per-session 1] [--pg-stats] [--stages]

Starts its own stack (bench/runs.py's `Bench`: embedded Postgres and Redis, migrations, the API
for the org and its agent), stores `--runs` queued runs of an `offline:default` agent, each in a
session of its own, and executes them one after another in this process with
`runtime.executor.execute_run`, as a Celery task would (no Celery, no API, no client: what is left
is the run itself). Prints the p10/p50/p90 of each run's wall time and of this process's CPU time
(user + system) while it ran. The first runs warm the pools (psycopg prepares a statement at its
5th use on each pooled connection) and are not counted. `--per-session K` runs K runs in each
session, one after another, as a conversation does (a session's later runs carry its thread).

`--pg-stats` starts Postgres with `pg_stat_statements` and prints the server's own time per run
(execution + planning) and the statements that cost most. The default event loop is asyncio's;
the worker's (uvloop) is a little cheaper.

`--stages` stamps when a few parts of each run start and end (the claim, the memory prefetch,
the graph and its checkpoint read, the model call, the usage record, the ending and its announcement; each wrapped with
`time.perf_counter`, nothing else instrumented) and prints, per part, the median start and
duration from `execute_run`'s call, and its share of the median run. Compare two commits by running this from each one's
checkout, interleaved (docs/benchmarks.md, "Issue 18: the worker's critical path").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from agentos.stack.process import ServerProcess  # noqa: E402
from bench.runs import Bench, console, new_sessions, stack_with_org  # noqa: E402

WARM = 20
PG_STATS_ARGS = ["-c", "shared_preload_libraries=pg_stat_statements", "-c", "pg_stat_statements.track=all",
                 "-c", "pg_stat_statements.track_planning=on"]


def with_pg_stats() -> None:
    """Start this process's embedded Postgres with pg_stat_statements loaded."""
    original = ServerProcess.__init__

    def init(self: Any, name: str, argv: list[str], *args: Any, **kwargs: Any) -> None:
        original(self, name, [*argv, *PG_STATS_ARGS] if name == "postgres" else argv, *args, **kwargs)

    ServerProcess.__init__ = init  # type: ignore[method-assign]


# (module, class or None, function, label) of the parts `--stages` times.
STAGES = (("core.store.runs", None, "claim_batch", "claim (one round trip)"),
          ("orchestrator.memory_context", None, "_fetch", "memory prefetch (beside the graph)"),
          ("orchestrator.checkpointer", "StepSaver", "aget_tuple", "checkpoint read (graph start)"),
          ("orchestrator.nodes", None, "_think_with", "model call (offline model)"),
          ("core.metering", "Meter", "model_call", "usage record (one round trip)"),
          ("runtime.executor", None, "_complete", "ending (transaction)"),
          ("runtime.executor", None, "run_ended", "ending (Redis pipeline)"))


class Stages:
    """`--stages`: stamps (start, end) of each part of the run under way, keyed by label."""

    def __init__(self, graph: Any) -> None:
        import importlib

        self.stamps: dict[str, tuple[float, float]] = {}
        self.runs: list[dict[str, tuple[float, float]]] = []
        self._t0 = 0.0
        self._wrap(graph, "ainvoke", "graph (ainvoke)")
        for module, cls, name, label in STAGES:
            owner = importlib.import_module(module)
            self._wrap(getattr(owner, cls) if cls else owner, name, label)

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.stamps.setdefault(label, (start - self._t0, time.perf_counter() - self._t0))

        setattr(owner, name, timed)

    def begin(self) -> None:
        self.stamps, self._t0 = {}, time.perf_counter()

    def end(self, total: float) -> None:
        self.runs.append({**self.stamps, "whole run": (0.0, total)})

    def report(self) -> None:
        labels = sorted({k for r in self.runs for k in r},
                        key=lambda k: pct([r[k][0] for r in self.runs if k in r], 50))
        whole = pct([r["whole run"][1] for r in self.runs], 50)
        console.print("Stages (first call of each per run), ms from execute_run's call, medians:")
        for label in labels:
            starts = [r[label][0] for r in self.runs if label in r]
            lengths = [r[label][1] - r[label][0] for r in self.runs if label in r]
            console.print(f"  {label:36s} starts {pct(starts, 50) * 1000:6.2f}  lasts {pct(lengths, 50) * 1000:6.2f}"
                          f"  ({pct(lengths, 50) / whole:4.0%} of the run)")


def pct(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * q // 100)]


async def measure(bench: Bench, args: argparse.Namespace) -> None:
    import runtime.executor as executor
    from core.settings import load_settings
    from core.store import runs
    from core.tenancy import tenant_tx
    from runtime.services import Services

    assert bench.urls is not None
    database_url = bench.urls.database_url
    if args.pg_stats:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    settings = load_settings(database={"url": database_url}, redis={"url": bench.urls.redis_url},
                             worker={"workspace_root": str(bench.dir / "workspaces")})
    svc = await Services.open(settings)
    stages = Stages(svc.graph) if args.stages else None
    walls: list[float] = []
    cpus: list[float] = []
    try:
        async def queued_run(session_id: str) -> str:
            async with tenant_tx(svc.pool, bench.org_id) as conn:
                created = await runs.create(conn, session_id=session_id, text=args.input, multitask="enqueue",
                                            metadata={}, idempotency_key=None, request_hash="bench",
                                            created_by="bench")
            return str(created.run["id"])

        total = WARM + args.runs
        sessions = await new_sessions(bench, -(-total // args.per_session))
        # One run per session: all made up front (out of `--pg-stats`'s count). Several: each made
        # just before it runs, as a session's next run is queued once the one before ended.
        run_ids = [await queued_run(s) for s in sessions] if args.per_session == 1 else []
        for i in range(total):
            run_id = run_ids[i] if run_ids else await queued_run(sessions[i // args.per_session])
            if i == WARM and args.pg_stats:
                with psycopg.connect(database_url, autocommit=True) as conn:
                    conn.execute("SELECT pg_stat_statements_reset()")
            if stages is not None:
                stages.begin()
            t0, c0 = time.perf_counter(), time.process_time()
            delivery = await executor.execute_run(svc, run_id, bench.org_id)
            if i >= WARM:
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
                if stages is not None:
                    stages.end(walls[-1])
                    await asyncio.sleep(0.02)  # what the run left in the background (its publishes) settles
            if delivery.outcome != "succeeded":
                raise RuntimeError(f"run {run_id}: {delivery.outcome}")
    finally:
        await svc.close()
    console.print(f"{args.runs} runs of {args.input!r} in process, {args.per_session} per session (after {WARM} to "
                  "warm up), ms:")
    for name, values in (("wall", walls), ("CPU of this process", cpus)):
        console.print(f"  {name:20s} p10 {pct(values, 10) * 1000:6.1f}  p50 {pct(values, 50) * 1000:6.1f}  "
                      f"p90 {pct(values, 90) * 1000:6.1f}")
    if stages is not None:
        stages.report()
    if args.pg_stats:
        report_pg_stats(database_url, args.runs)


def report_pg_stats(database_url: str, runs: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, total_exec_time, total_plan_time, query FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time + total_plan_time DESC").fetchall()
    total = sum(r[1] + r[2] for r in rows)
    console.print(f"Postgres, per run: {total / runs:.2f} ms executing and planning, "
                  f"{sum(r[0] for r in rows) / runs:.1f} statements (foreign-key checks and BEGIN/COMMIT included)")
    for calls, exec_ms, plan_ms, query in rows[:12]:
        console.print(f"  {calls / runs:5.2f}/run  exec {exec_ms / calls:6.3f}  plan {plan_ms / calls:6.3f} ms  "
                      f"{' '.join(query.split())[:90]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=200, help="runs measured (default 200)")
    p.add_argument("--input", default="hello", help="each run's input (default hello)")
    p.add_argument("--per-session", type=int, default=1,
                   help="runs per session, one after another (default 1: a session's first run each)")
    p.add_argument("--pg-stats", action="store_true", help="Postgres with pg_stat_statements: its time per run")
    p.add_argument("--stages", action="store_true", help="when parts of each run start and how long they last")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    args = p.parse_args(argv)
    if args.pg_stats:
        with_pg_stats()
    with stack_with_org(args) as bench:
        asyncio.run(measure(bench, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
