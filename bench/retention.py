"""Retention benchmark (issue #23): what one retention pass costs and reclaims on a big event log,
and what partitioning the log by week changed.

    .venv/bin/python -m bench.retention                      # 10M events (the issue's size; long)
    .venv/bin/python -m bench.retention --events 200000      # quick mode: proves it works
    .venv/bin/python -m bench.retention --batched            # no partition drops: rows deleted in batches

Starts its own embedded Postgres and Redis in a temp dir (or `--database-url` / `--redis-url`:
an owner/superuser URL of an empty database to migrate and fill), migrates up to the version
BEFORE the event log was partitioned, and generates server-side (`generate_series`, as the table
owner) `--orgs` orgs, one run per session of `--events-per-run` events each, so `--events` events
in all; `--old-fraction` of the runs ended 100 to 150 days ago (past the 90-day events default,
and past the 7-day checkpoint default), the rest within the last 60 days (the last one an hour
ago), each run's events stamped with its end and its session created two minutes before (the
replay's time bound starts from the session's creation). Every session gets a checkpoint thread of
`--checkpoints` checkpoints (a blob of `--blob-bytes` and a pending write each), as LangGraph
leaves them.

Then it measures, through the product's own paths on a pool of the application role (row-level
security applies):
1. replay latency of the most recent session: `core.event_reader.from_postgres` (the query by
   session and seq), `--replays` times, p50/p99, on the unpartitioned log; then the migration
   that partitions it (`_partitioned_events`: the cut-over copy, timed), and the same replay on
   the partitioned log, and again after the retention pass;
2. run creation latency (`core.store.runs.create` in a `tenant_tx`, as the API does) with no
   pass running (baseline), then while one retention pass (`core.retention.enforce`, the
   maintenance job) runs: p50/p99 of each, and the pass's duration, the partitions it dropped and
   the rows it deleted in batches;
3. bytes: the relation sizes (table + TOAST + indexes; a partitioned table's partitions summed)
   of run_events, tool_calls and the three checkpoint tables before, after the pass with a plain
   VACUUM (space reusable, files not shrunk) and after VACUUM FULL (returned to the OS). A
   dropped partition's bytes go back at once; `--batched` turns drops off, for comparison.

On a machine shared with other work the latencies are noisy; the byte and row counts are not.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from agentos.stack.local import LocalStack  # noqa: E402
from core.event_reader import CLOCK_MARGIN, LIST_EVENTS_SQL, from_postgres, replay_params  # noqa: E402
from core.infra import Infra  # noqa: E402
from core.migrations import MIGRATIONS, _partitioned_events, migrate  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import agents, runs  # noqa: E402
from core.tenancy import tenant_tx  # noqa: E402

APP_ROLE = "agentos_app"
TABLES = ("run_events", "tool_calls", "checkpoints", "checkpoint_blobs", "checkpoint_writes")

GENERATE_SQL = """
INSERT INTO orgs (id, name) SELECT 'org_bench' || o, 'bench org ' || o FROM generate_series(1, %(orgs)s) o;
INSERT INTO agents (id, org_id, name, config)
    SELECT 'agt_bench' || o, 'org_bench' || o, 'bench', '{"instructions": "x"}' FROM generate_series(1, %(orgs)s) o;
INSERT INTO sessions (id, org_id, agent_id, event_seq, created_at, updated_at)
    SELECT 'ses_bench' || s, 'org_bench' || (s %% %(orgs)s + 1), 'agt_bench' || (s %% %(orgs)s + 1), %(per_run)s,
           t - interval '2 minutes', t
    FROM (SELECT s, CASE WHEN s <= %(old)s THEN now() - make_interval(days => 100 + s %% 50)
                         ELSE now() - make_interval(days => (%(sessions)s - s) %% 60) - interval '1 hour' END AS t
          FROM generate_series(1, %(sessions)s) s) x;
INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, status, input, trace_id, created_at, started_at,
                  finished_at)
    SELECT 'run_bench' || s, 'org_bench' || (s %% %(orgs)s + 1), 'ses_bench' || s, 'agt_bench' || (s %% %(orgs)s + 1),
           1, 'succeeded', '{"text": "hi"}', md5(s::text),
           x.updated_at - interval '1 minute', x.updated_at - interval '1 minute', x.updated_at
    FROM (SELECT s, updated_at FROM generate_series(1, %(sessions)s) s
          JOIN sessions ON id = 'ses_bench' || s) x;
INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts)
    SELECT 'org_bench' || (s %% %(orgs)s + 1), 'ses_bench' || s, e, 'run_bench' || s,
           CASE WHEN e = 1 THEN 'run.queued' WHEN e = %(per_run)s THEN 'run.succeeded' ELSE 'message.delta' END,
           jsonb_build_object('text', repeat('w', 40), 'n', e), r.finished_at
    FROM generate_series(1, %(sessions)s) s JOIN runs r ON r.id = 'run_bench' || s, generate_series(1, %(per_run)s) e;
INSERT INTO tool_calls (id, org_id, run_id, session_id, agent_id, name, args, status, output)
    SELECT 'tc_bench' || s, 'org_bench' || (s %% %(orgs)s + 1), 'run_bench' || s, 'ses_bench' || s,
           'agt_bench' || (s %% %(orgs)s + 1), 'calculator', '{"expression": "1+1"}', 'succeeded', '{"value": 2}'
    FROM generate_series(1, %(sessions)s) s;
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, checkpoint)
    SELECT 'org_bench' || (s %% %(orgs)s + 1) || ':ses_bench' || s, '', lpad(c::text, 8, '0'),
           jsonb_build_object('channel_versions', jsonb_build_object('messages', lpad(c::text, 32, '0') || '.1'))
    FROM generate_series(1, %(sessions)s) s, generate_series(1, %(checkpoints)s) c;
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT 'org_bench' || (s %% %(orgs)s + 1) || ':ses_bench' || s, '', 'messages', lpad(c::text, 32, '0') || '.1',
           'msgpack', convert_to(repeat(md5((s * 1000 + c)::text), %(blob_md5s)s), 'UTF8')
    FROM generate_series(1, %(sessions)s) s, generate_series(1, %(checkpoints)s) c;
INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob)
    SELECT 'org_bench' || (s %% %(orgs)s + 1) || ':ses_bench' || s, '', lpad(c::text, 8, '0'), 't', 0, 'messages',
           'msgpack', '\\x00'
    FROM generate_series(1, %(sessions)s) s, generate_series(1, %(checkpoints)s) c;
"""
# A partitioned table has no storage of its own: its size is its partitions'.
SIZES_SQL = """
SELECT pg_total_relation_size(%(t)s::regclass)
     + coalesce((SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits
                 WHERE inhparent = %(t)s::regclass), 0) AS bytes
"""
REPLAY_PLAN_SQL = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON) " + LIST_EVENTS_SQL


def sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: int(conn.execute(SIZES_SQL, {"t": t}).fetchone()[0]) for t in TABLES}  # type: ignore[index]


def replay_plan(url: str, org_id: str, session_id: str, since: datetime | None = None) -> str:
    """The replay's plan as the application role runs it (`core.event_reader.LIST_EVENTS_SQL`):
    the partitions it read, those pruned (at planning or when the time bound's subquery ran),
    buffers and planning time, one line."""
    params = replay_params(session_id, 0, limit=500, since=since)
    with psycopg.connect(url) as conn:
        conn.execute(f"SET ROLE {APP_ROLE}")
        conn.execute("SELECT set_config('app.org_id', %s, true)", (org_id,))
        conn.execute(REPLAY_PLAN_SQL, params)  # the first planning also fills the catalog caches
        lines = [str(r[0]).strip() for r in conn.execute(REPLAY_PLAN_SQL, params).fetchall()]
    scans = [line for line in lines if " Scan" in line and " on run_events" in line and "Bitmap Index" not in line]
    read = [line for line in scans if "never executed" not in line]
    kinds = [line.split(" on ")[0].removeprefix("->  ").split(" using ")[0] for line in read]
    removed = sum(int(line.split(":")[1]) for line in lines if line.startswith("Subplans Removed"))
    shared = next((line for line in lines if line.startswith("Buffers:")), "")
    planning = next((line for line in lines if line.startswith("Planning Time")), "")
    counts = ", ".join(f"{n} x {k}" for k, n in {k: kinds.count(k) for k in dict.fromkeys(kinds)}.items())
    return (f"{len(read)} partition scans run ({counts}), {len(scans) - len(read)} never executed, "
            f"{removed} removed at planning; {shared}; {planning}")


def vacuum(url: str, full: bool) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for t in TABLES:
            conn.execute(f"VACUUM {'FULL ' if full else ''}ANALYZE {t}")
    return time.perf_counter() - t0


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"n={len(ordered)} p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


async def replays(infra: Infra, org_id: str, session_id: str, n: int, since: datetime | None = None) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        events = await from_postgres(infra.pool, org_id, session_id, 0, since=since)
        out.append(time.perf_counter() - t0)
        assert events, "the replayed session has events"
    return out


async def create_runs(infra: Infra, org_id: str, stop: asyncio.Event | None, n: int) -> list[float]:
    """Runs created one after another in fresh sessions of `org_id`, as the API creates them,
    until `stop` is set (or `n` runs without one)."""
    out: list[float] = []
    async with tenant_tx(infra.pool, org_id) as conn:
        agent = await agents.get(conn, org_id.replace("org_", "agt_"))
    assert agent is not None
    i = 0
    while (stop is None and i < n) or (stop is not None and not stop.is_set()):
        i += 1
        session_id = f"ses_new{time.monotonic_ns()}"
        async with tenant_tx(infra.pool, org_id) as conn:
            await conn.execute("INSERT INTO sessions (id, org_id, agent_id) VALUES (%s, %s, %s)",
                               (session_id, org_id, agent["id"]))
        t0 = time.perf_counter()
        async with tenant_tx(infra.pool, org_id) as conn:
            await runs.lock_session(conn, session_id)
            await runs.create(conn, session_id=session_id, text="hello", multitask="enqueue",
                              metadata={}, idempotency_key=None, request_hash="", created_by=None)
        out.append(time.perf_counter() - t0)
    return out


def removed_rows(report: str | None) -> dict[str, int]:
    """Rows per table from the retention job's report ("<org>: N rows (t n, ...), ..." per org)."""
    removed: dict[str, int] = {}
    for part in (report or "").split("; "):
        if "rows (" in part and not part.startswith("event partitions"):
            for item in part.split("rows (")[1].split(")")[0].split(", "):
                name, _, count = item.rpartition(" ")
                if name:
                    removed[name] = removed.get(name, 0) + int(count)
    return removed


async def measure_replay(settings: Settings, args: argparse.Namespace, org_id: str, session_id: str,
                         label: str, since: datetime | None = None) -> None:
    infra = await Infra.open(settings, name="bench-retention", pool_min=1, pool_max=2)
    try:
        await replays(infra, org_id, session_id, 20, since)  # warm
        print(f"replay of a recent session ({args.events_per_run} events), {label}: "
              f"{percentiles(await replays(infra, org_id, session_id, args.replays, since))}")
    finally:
        await infra.close()


async def measure_pass(settings: Settings, args: argparse.Namespace, recent_session: str, recent_org: str) -> None:
    from core import event_partitions, retention

    infra = await Infra.open(settings, name="bench-retention", pool_min=2, pool_max=6)
    try:
        baseline = await create_runs(infra, recent_org, None, args.baseline_runs)
        print(f"run creation, no pass running: {percentiles(baseline)}")
        stop = asyncio.Event()
        creating = asyncio.create_task(create_runs(infra, recent_org, stop, 0))
        # The job's two phases, timed apart: what `retention.enforce` does first (drop the event
        # partitions wholly past every org's retention), then the same call, which finds none left
        # to drop and deletes the rest in batches.
        t0 = time.perf_counter()
        dropped = await event_partitions.drop_expired(infra.pool, await retention.events_horizon(infra))
        drop_s = time.perf_counter() - t0
        report = await retention.enforce(infra)
        pass_s = time.perf_counter() - t0
        stop.set()
        during = await creating
        print(f"retention pass ({'batched deletes only' if args.batched else 'partition drops, then batches'}): "
              f"{pass_s:.2f} s, of which dropping partitions {drop_s:.2f} s")
        print(f"run creation during the pass: {percentiles(during)}")
        print(f"event partitions dropped: {len(dropped)} ({sum(d.rows for d in dropped):,} rows, "
              f"{sum(d.bytes for d in dropped):,} bytes)")
        print(f"deleted in batches: {removed_rows(report)}")
        await replays(infra, recent_org, recent_session, 20)
        after = await replays(infra, recent_org, recent_session, args.replays)
        print(f"replay of the same session, after the pass: {percentiles(after)}")
    finally:
        await infra.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--events-per-run", type=int, default=100)
    p.add_argument("--orgs", type=int, default=50)
    p.add_argument("--old-fraction", type=float, default=0.5)
    p.add_argument("--checkpoints", type=int, default=8, help="checkpoints per session thread")
    p.add_argument("--blob-bytes", type=int, default=2048, help="bytes of each checkpoint blob")
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--baseline-runs", type=int, default=200)
    p.add_argument("--database-url", help="an owner/superuser URL of a database to use instead of a new stack")
    p.add_argument("--redis-url", help="with --database-url: the Redis to use")
    p.add_argument("--batched", action="store_true",
                   help="no partition drops (AGENTOS_LIFECYCLE__DROP_EVENT_PARTITIONS=false): every old row is "
                        "deleted in batches, for comparison")
    return p.parse_args(argv)


def _stop_on_signal(signum: int, _frame: object) -> None:
    # SIGTERM or SIGHUP unwind like Ctrl-C, so `main`'s finally stops the Postgres and Redis it started.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    sessions = max(2, args.events // args.events_per_run)
    old = int(sessions * args.old_fraction)
    temp: Path | None = None
    stack: LocalStack | None = None
    try:
        url, redis_url = args.database_url, args.redis_url
        if url is None:
            temp = Path(tempfile.mkdtemp(prefix="agentos-bench-retention-"))
            stack = LocalStack(temp, database="agentos_bench", durable=False)
            urls = stack.start()
            url, redis_url = urls.database_url, urls.redis_url
        partitioned_at = next(v for v, m in enumerate(MIGRATIONS, start=1) if m.apply is _partitioned_events)
        migrate(url, APP_ROLE, target=partitioned_at - 1)
        t0 = time.perf_counter()
        params = {"orgs": args.orgs, "sessions": sessions, "per_run": args.events_per_run, "old": old,
                  "checkpoints": args.checkpoints, "blob_md5s": max(1, args.blob_bytes // 32)}
        with psycopg.connect(url) as conn:
            for statement in GENERATE_SQL.split(";\n"):
                if statement.strip():
                    conn.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})
        print(f"generated {sessions * args.events_per_run:,} events, {sessions:,} runs and sessions ({old:,} ended "
              f"100-150 days ago, the rest within 60 days), {sessions * args.checkpoints:,} checkpoints "
              f"in {time.perf_counter() - t0:.1f} s")
        vacuum(url, full=False)
        settings = Settings(database={"url": url, "app_role": APP_ROLE},  # type: ignore[arg-type]
                            redis={"url": redis_url},  # type: ignore[arg-type]
                            lifecycle={"drop_event_partitions": not args.batched})  # type: ignore[arg-type]
        recent = sessions  # the last session ended an hour ago
        recent_session, recent_org = f"ses_bench{recent}", f"org_bench{recent % args.orgs + 1}"
        unpartitioned = sizes(url)["run_events"]
        print(f"replay plan, unpartitioned: {replay_plan(url, recent_org, recent_session)}")
        asyncio.run(measure_replay(settings, args, recent_org, recent_session, "unpartitioned log"))
        t0 = time.perf_counter()
        migrate(url, APP_ROLE)
        cut_over_s = time.perf_counter() - t0
        vacuum(url, full=False)
        with psycopg.connect(url) as conn:
            parts = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'run_events'::regclass").fetchone()
        before = sizes(url)
        print(f"partitioning migration (one-transaction cut-over copy): {cut_over_s:.1f} s for "
              f"{sessions * args.events_per_run:,} events; {parts[0] if parts else '?'} partitions; run_events "
              f"{unpartitioned:,} bytes before, {before['run_events']:,} after")
        print(f"replay plan, partitioned, bound by the session row: {replay_plan(url, recent_org, recent_session)}")
        asyncio.run(measure_replay(settings, args, recent_org, recent_session,
                                   "partitioned log, bound by the session row"))
        # The generated ids are not `new_id`'s, so the bound an id gives the product's replays
        # (a parameter, pruned while planning) is passed as the id would give it.
        with psycopg.connect(url) as conn:
            created = conn.execute("SELECT created_at FROM sessions WHERE id = %s", (recent_session,)).fetchone()
        since = created[0] - CLOCK_MARGIN if created else None
        print(f"replay plan, partitioned, bound by the id: {replay_plan(url, recent_org, recent_session, since)}")
        asyncio.run(measure_replay(settings, args, recent_org, recent_session, "partitioned log, bound by the id",
                                   since))
        asyncio.run(measure_pass(settings, args, recent_session, recent_org))
        passed = sizes(url)
        vacuum_s = vacuum(url, full=False)
        plain = sizes(url)
        full_s = vacuum(url, full=True)
        full = sizes(url)
        print(f"{'table':<20}{'before':>14}{'after the pass':>16}{'after VACUUM':>16}{'after VACUUM FULL':>20}")
        for t in TABLES:
            print(f"{t:<20}{before[t]:>14,}{passed[t]:>16,}{plain[t]:>16,}{full[t]:>20,}")
        print(f"{'total':<20}{sum(before.values()):>14,}{sum(passed.values()):>16,}{sum(plain.values()):>16,}"
              f"{sum(full.values()):>20,}")
        events_before = before["run_events"]
        print(f"run_events bytes returned by the pass itself (no VACUUM): {events_before - passed['run_events']:,}"
              f"; by VACUUM FULL: {events_before - full['run_events']:,}")
        print(f"bytes reclaimed, all tables (returned by VACUUM FULL): {sum(before.values()) - sum(full.values()):,}; "
              f"VACUUM {vacuum_s:.1f} s, VACUUM FULL {full_s:.1f} s")
    finally:
        if stack is not None:
            stack.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
