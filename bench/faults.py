"""Fault benchmark: runs flow while Redis and Postgres are stopped and restarted and workers die.

    .venv/bin/python bench/faults.py [--redis 20] [--postgres 10] [--kills 10] [--min-down 2]
                                     [--max-down 20] [--runs 60] [--workers 3] [--concurrency 6]
                                     [--settle 120] [--seed S] [--keep]

Starts the same cluster as `bench/chaos.py` (its own embedded Postgres + non-durable Redis,
`agentos api`, W workers with one slot each, the watchdog), with liveness probes every 1 s and a
stall threshold of 5 s. C clients each create a session and POST a run (an `offline:default`
agent with `file_manager`, `confirm: "none"`: write / wait / list / wait / write, waits of
`--wait` seconds, so a run spans outages), then follow its SSE stream live; a client whose request
fails while a server is down retries it (the run POST with one `Idempotency-Key`, so a retry
never makes a second run), and a broken stream is resumed with `Last-Event-ID`.

Meanwhile an injector applies, in random order and at random moments (gaps of 1-8 s), `--redis`
stops of Redis and `--postgres` stops of Postgres, each down for a uniform 2-20 s (`--min-down`,
`--max-down`; the server comes back on its port: Redis empty, Postgres with its data), and
`--kills` SIGKILLs of a worker's process group (a fresh worker replaces it; `bench/chaos.py`'s
pick: one executing a run when there is one). Clients keep submitting until the injector is
done and `--runs` runs were made.

Checks, after the last fault:

- **terminal within `--settle` s** of the end of the last fault, else the run is lost;
- **no failure**: every run `succeeded`; failures are counted by error code (`INTERNAL` means a
  fault leaked into a run as a crash);
- **no side effect twice** (`bench/chaos.py`'s checks): the run's `tool_calls` rows are the 3
  scripted calls, all `succeeded`, and no `tool.call`/`tool.result` follows a call's
  `tool.result` (a call cut off mid-way and run again with its id is counted apart, as allowed);
- **streams**: the live follow (across resumes), a replay of the run's events and the session
  stream have consecutive seqs and exactly one terminal event, last;
- **no worker alive but idle**: every live worker's liveness heartbeat
  (`runtime/liveness.py`) says it consumes.

Prints the counts; exits 1 if a check fails. `run_faults(FaultOptions(...))` is the same logic for
the suite (`tests/test_faults.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.chaos import (  # noqa: E402
    WORKER_ENV,
    ChaosOptions,
    ChaosReport,
    Cluster,
    Driver,
    Kill,
    RunResult,
    console,
    read_sse,
    script,
    stream_problems,
)
from bench.runs import TERMINAL, _ts, machine  # noqa: E402
from runtime.liveness import check as liveness_check  # noqa: E402
from runtime.liveness import read_heartbeat  # noqa: E402

FAULT_ENV = WORKER_ENV | {
    "AGENTOS_WORKER__PROBE_INTERVAL_S": "1",
    "AGENTOS_WORKER__STALL_AFTER_S": "5",
    "AGENTOS_REDIS__SOCKET_TIMEOUT_S": "2",
    "AGENTOS_DATABASE__CONNECT_TIMEOUT_S": "2",
}
RETRYABLE = {429, 500, 502, 503, 504}
# The last line of a logged traceback: `psycopg_pool.PoolTimeout: couldn't get a connection ...`
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Timeout|Exception|Shutdown|Exit)\b[^\n]*$", re.M)


@dataclass
class FaultOptions(ChaosOptions):
    redis_restarts: int = 20
    postgres_restarts: int = 10
    kills: int = 10
    runs: int = 60
    min_down_s: float = 2.0
    max_down_s: float = 20.0
    min_gap_s: float = 1.0
    max_gap_s: float = 8.0
    wait_s: float = 1.0  # each of the run's two waits
    settle_s: float = 120.0  # bound on reaching a terminal state after the last fault
    max_seconds: float = 1500.0


@dataclass
class Fault:
    kind: str  # "redis" | "postgres"
    down_s: float


@dataclass
class FaultReport(ChaosReport):
    faults: list[Fault] = field(default_factory=list)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    failure_causes: Counter[str] = field(default_factory=Counter)  # exception logged by the worker
    resumes: int = 0  # live streams resumed with Last-Event-ID after a break
    retried_requests: int = 0  # client requests retried because a server was down
    unhealthy_workers: list[str] = field(default_factory=list)
    stall_reconnects: int = 0  # consumer reconnects forced by a stalled probe, live workers
    settle_max_s: float = 0.0  # last fault's end -> last run terminal (from the runs' events)

    @property
    def ok(self) -> bool:
        return super().ok and not self.unhealthy_workers


class FaultDriver(Driver):
    def __init__(self, cluster: Cluster, opts: FaultOptions, rng: random.Random) -> None:
        super().__init__(cluster, opts, rng)
        self.fopts = opts
        self.faults: list[Fault] = []
        self.injector_done = False
        self.last_fault_end = time.monotonic()
        self.last_fault_wall = time.time()
        self.resumes = 0
        self.retried = 0
        self.codes: dict[str, str] = {}

    def enough(self) -> bool:
        return (self.injector_done and len(self.results) >= self.opts.runs) or \
            time.monotonic() - self.t0 > self.opts.max_seconds

    async def injector(self) -> None:
        """Faults one after the other, from the main thread (see `Cluster.new_worker`)."""
        o, rng, stack = self.fopts, self.rng, self.cluster.stack
        assert stack is not None
        plan = ["redis"] * o.redis_restarts + ["postgres"] * o.postgres_restarts + ["kill"] * o.kills
        rng.shuffle(plan)
        try:
            for n, kind in enumerate(plan, 1):
                await asyncio.sleep(rng.uniform(o.min_gap_s, o.max_gap_s))
                if time.monotonic() - self.t0 > o.max_seconds:
                    break
                if kind == "kill":
                    await self._kill()
                else:
                    server = stack.redis if kind == "redis" else stack.postgres
                    down = rng.uniform(o.min_down_s, o.max_down_s)
                    server.stop()
                    await asyncio.sleep(down)
                    await self._start(server, kind)
                    self.faults.append(Fault(kind, down))
                self.last_fault_end, self.last_fault_wall = time.monotonic(), time.time()
                if not o.quiet:
                    console.print(f"  fault {n}/{len(plan)}: {kind}"
                                  f"{f' down {self.faults[-1].down_s:.1f}s' if kind != 'kill' else ''}; "
                                  f"{len(self.results)} runs submitted, {time.monotonic() - self.t0:.0f}s")
        finally:
            self.injector_done = True

    async def _start(self, server: Any, kind: str) -> None:
        for attempt in range(5):
            try:
                server.start()
                return
            except Exception as exc:  # e.g. the old postmaster still exiting: try again
                console.print(f"[yellow]{kind} did not start ({type(exc).__name__}); retrying[/yellow]")
                await asyncio.sleep(1 + attempt)
        raise RuntimeError(f"{kind} could not be restarted")

    async def _kill(self) -> None:
        try:
            holders = await asyncio.to_thread(self.cluster.holders)
        except Exception:  # Postgres may be down: kill a random worker then
            holders = {}
        kill: Kill | None = self.cluster.kill_one(self.rng, holders)
        if kill is not None:
            self.kills.append(kill)

    async def _request(self, client: httpx.AsyncClient, method: str, path: str, expect: int,
                       **kwargs: Any) -> dict[str, Any]:
        """The response body, retrying while a server is down (up to the settle bound)."""
        deadline = time.monotonic() + self.fopts.settle_s
        while True:
            try:
                r = await client.request(method, path, **kwargs)
                if r.status_code == expect:
                    return dict(r.json())
                if r.status_code not in RETRYABLE:
                    raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
                problem = f"{r.status_code}"
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: still failing ({problem})")
            self.retried += 1
            await asyncio.sleep(0.5)

    async def follow(self, client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
        """The run's events live, resuming after a break from the last seq seen."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.fopts.max_seconds + self.fopts.settle_s
        while time.monotonic() < deadline:
            batch: list[dict[str, Any]] = []
            headers = dict(self.cluster.headers)
            if events:
                headers["Last-Event-ID"] = str(events[-1]["seq"])
            try:
                await read_sse(client, f"/v1/runs/{run_id}/events", headers, into=batch)
            except (httpx.HTTPError, RuntimeError):
                pass
            events += batch
            if events and events[-1]["type"] in TERMINAL:
                return events
            self.resumes += 1
            await asyncio.sleep(0.5)
        raise TimeoutError("the live stream did not reach a terminal event")

    async def client_loop(self, client: httpx.AsyncClient) -> None:
        h = self.cluster.headers
        while not self.enough():
            session = await self._request(client, "POST", "/v1/sessions", 201,
                                          json={"agent_id": self.cluster.agent_id}, headers=h)
            tag = "r" + secrets.token_hex(6)
            run = await self._request(client, "POST", f"/v1/sessions/{session['id']}/runs", 202,
                                      json={"input": script(tag, self.fopts.wait_s)},
                                      headers=h | {"Idempotency-Key": tag})
            result = RunResult(run["id"], session["id"], tag)
            self.results.append(result)
            try:
                live = await self.follow(client, result.run_id)
                result.problems += stream_problems(live, "live run stream")
            except Exception as exc:
                result.live_error = f"{type(exc).__name__}: {exc}"

    async def check(self, client: httpx.AsyncClient, result: RunResult, deadline: float) -> None:
        await super().check(client, result, deadline)
        if result.status == "failed":
            run = (await client.get(f"/v1/runs/{result.run_id}", headers=self.cluster.headers)).json()
            self.codes[result.run_id] = str((run.get("error") or {}).get("code", "?"))

    async def run(self) -> FaultReport:
        report = FaultReport()
        limits = httpx.Limits(max_connections=2 * self.opts.concurrency + 4)
        async with httpx.AsyncClient(base_url=self.cluster.api_url, limits=limits, timeout=30) as client:
            injector = asyncio.create_task(self.injector())
            try:
                await asyncio.gather(*(self.client_loop(client) for _ in range(self.opts.concurrency)))
            finally:
                if not injector.done():
                    injector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await injector
            report.elapsed_s = time.monotonic() - self.t0
            deadline = self.last_fault_end + self.fopts.settle_s
            sem = asyncio.Semaphore(self.opts.concurrency)

            async def one(result: RunResult) -> None:
                async with sem:
                    try:
                        await self.check(client, result, deadline)
                    except Exception as exc:
                        result.problems.append(f"check: {type(exc).__name__}: {exc}")

            await asyncio.gather(*(one(r) for r in self.results))
        self.tally(report)
        report.faults = self.faults
        report.failed_by_code = Counter(self.codes.values())
        report.failure_causes = self.failure_causes()
        report.resumes, report.retried_requests = self.resumes, self.retried
        ends = [_event_wall(r.events[-1]) for r in self.results if r.events]
        report.settle_max_s = max([e - self.last_fault_wall for e in ends] + [0.0])
        await asyncio.sleep(3)  # a probe round trip after the last run
        self.judge_workers(report)
        return report

    def failure_causes(self) -> Counter[str]:
        """For each failed run, the exception its worker logged (`<type>: <message>`, first line)."""
        logs = "\n".join(p.read_text(errors="replace") for p in sorted(self.cluster.dir.glob("worker-*.log")))
        causes: Counter[str] = Counter()
        for run_id in self.codes:
            at = logs.rfind(f"run {run_id} failed\n")
            found = EXCEPTION_LINE.search(logs, at) if at >= 0 else None
            causes[found.group(0)[:160] if found else "? (not in the worker logs)"] += 1
        return causes

    def judge_workers(self, report: FaultReport) -> None:
        """Every live worker must prove it consumes."""
        assert self.cluster.urls is not None
        for w in self.cluster.workers:
            if not w.alive() or w.pid is None or w.env is None:
                continue
            path = Path(w.env["AGENTOS_WORKER__HEALTH_FILE"])
            verdict = liveness_check(path, self.cluster.urls.redis_url, pid=w.pid)
            hb = read_heartbeat(path)
            report.stall_reconnects += hb.reconnects if hb is not None and hb.pid == w.pid else 0
            if not verdict.healthy:
                report.unhealthy_workers.append(f"pid {w.pid}: {verdict.reason}")


def _event_wall(event: dict[str, Any]) -> float:
    return float(_ts(event["ts"]))


def run_faults(opts: FaultOptions) -> FaultReport:
    """Start a cluster, drive runs through the faults, check every run and worker, stop everything."""
    rng = random.Random(opts.seed)
    cluster = Cluster(opts, worker_env=FAULT_ENV, prefix="agentos-faults-")
    try:
        t0 = time.perf_counter()
        cluster.start()
        if not opts.quiet:
            console.print(f"stack, API, {opts.workers} workers and the watchdog up in "
                          f"{time.perf_counter() - t0:.1f}s ({cluster.dir})")
        return asyncio.run(FaultDriver(cluster, opts, rng).run())
    finally:
        cluster.close()


def print_report(report: FaultReport, opts: FaultOptions) -> None:
    table = Table(title="Faults: runs while Redis and Postgres restart and workers die")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("expected", justify="right")
    downs = {k: [f.down_s for f in report.faults if f.kind == k] for k in ("redis", "postgres")}
    failed = ", ".join(f"{code} {n}" for code, n in report.failed_by_code.most_common()) or "-"
    rows: list[tuple[str, object, str]] = [
        ("runs", report.runs, f">= {opts.runs}"),
        ("Redis restarts (total s down)", f"{len(downs['redis'])} ({sum(downs['redis']):.0f})",
         str(opts.redis_restarts)),
        ("Postgres restarts (total s down)", f"{len(downs['postgres'])} ({sum(downs['postgres']):.0f})",
         str(opts.postgres_restarts)),
        ("worker kills (of a worker executing a run)", f"{report.kills} ({report.kills_of_executing})",
         str(opts.kills)),
        ("succeeded", report.succeeded, "all"),
        ("failed, by error code", f"{report.failed} ({failed})", "0"),
        ("other (cancelled / timed out / not terminal)", report.other, "0"),
        (f"lost (not terminal {opts.settle_s:.0f} s after the last fault)", report.lost, "0"),
        ("last run terminal, s after the last fault", f"{report.settle_max_s:.1f}", f"<= {opts.settle_s:.0f}"),
        ("tool_calls rows not exactly the 3 calls, succeeded", report.tool_call_row_mismatches, "0"),
        ("duplicated completed calls", report.duplicated_completed, "0"),
        ("re-executed mid-call (at-least-once window)", report.reexecuted_mid_call, "any"),
        ("extra claims (run.started beyond the first)", report.restarts_attempts, ""),
        ("runs with a stream gap / bad terminal", report.stream_gaps, "0"),
        ("live streams resumed (Last-Event-ID)", report.resumes, ""),
        ("live streams that never ended", report.live_stream_errors, ""),
        ("client requests retried (server down)", report.retried_requests, ""),
        ("workers alive but not consuming", len(report.unhealthy_workers), "0"),
        ("consumer reconnects forced by a stall", report.stall_reconnects, ""),
        ("wall time s (driving)", f"{report.elapsed_s:.1f}", ""),
    ]
    for name, value, expected in rows:
        table.add_row(name, str(value), expected)
    console.print(table)
    for cause, n in report.failure_causes.most_common():
        console.print(f"[red]failed {n}x: {cause}[/red]")
    for p in report.problems + report.unhealthy_workers:
        console.print(f"[red]{p}[/red]")
    console.print("[green]all checks passed[/green]" if report.ok else "[red]CHECKS FAILED[/red]")


def parse_args(argv: list[str] | None = None) -> FaultOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--redis", type=int, default=20, help="Redis stops (default 20)")
    p.add_argument("--postgres", type=int, default=10, help="Postgres stops (default 10)")
    p.add_argument("--kills", type=int, default=10, help="worker SIGKILLs (default 10)")
    p.add_argument("--min-down", type=float, default=2.0, help="shortest outage, s (default 2)")
    p.add_argument("--max-down", type=float, default=20.0, help="longest outage, s (default 20)")
    p.add_argument("--runs", type=int, default=60, help="runs to make at least (default 60)")
    p.add_argument("--workers", type=int, default=3, help="worker processes, one slot each (default 3)")
    p.add_argument("--concurrency", type=int, default=6, help="concurrent clients (default 6)")
    p.add_argument("--wait", type=float, default=1.0, help="each of a run's two waits, s (default 1)")
    p.add_argument("--settle", type=float, default=120.0, help="bound after the last fault, s (default 120)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=1500, help="stop injecting after (default 1500)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    a = p.parse_args(argv)
    if min(a.runs, a.workers, a.concurrency) < 1 or min(a.redis, a.postgres, a.kills) < 0 \
            or not 0 < a.min_down <= a.max_down:
        p.error("counts must be >= 0 (runs, workers, concurrency >= 1) and 0 < --min-down <= --max-down")
    return FaultOptions(redis_restarts=a.redis, postgres_restarts=a.postgres, kills=a.kills, min_down_s=a.min_down,
                        max_down_s=a.max_down, runs=a.runs, workers=a.workers, concurrency=a.concurrency,
                        wait_s=a.wait, settle_s=a.settle, seed=a.seed, max_seconds=a.max_seconds, keep=a.keep)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    t0 = time.perf_counter()
    try:
        report = run_faults(opts)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopped everything[/yellow]")
        return 130
    console.print(f"machine: {machine()}")
    console.print(f"settings: redis={opts.redis_restarts} postgres={opts.postgres_restarts} kills={opts.kills} "
                  f"down={opts.min_down_s}-{opts.max_down_s}s runs={opts.runs} workers={opts.workers} "
                  f"concurrency={opts.concurrency} wait={opts.wait_s}s seed={opts.seed}")
    print_report(report, opts)
    console.print(f"total wall time {time.perf_counter() - t0:.1f}s")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
