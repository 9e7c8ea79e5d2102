"""Chaos benchmark: runs with tool calls while workers are SIGKILLed at random moments.

    .venv/bin/python bench/chaos.py [--runs N] [--workers W] [--kills K] [--concurrency C] [--seed S]

Starts its own stack in a temp dir (embedded Postgres + Redis, non-durable, as `bench/runs.py`),
`agentos api`, W x `agentos worker --concurrency 1` (short leases: `LEASE_S=2`,
`HEARTBEAT_S=0.5`) and `agentos watchdog` (`WATCHDOG_INTERVAL_S=0.5`, `REQUEUE_AFTER_S=3`),
with admission limits lifted and `MAX_ATTEMPTS=100` (the maximum) (a run may be hit by many kills; what is
tested is that it is never lost, not the attempts cap).

C asyncio clients each create a session, POST a run in it (an `offline:default` agent with the
`file_manager` skill and `confirm: "none"`; the input scripts write / list / write with short
waits, so a run takes ~1 s and makes 3 tool calls) and follow its SSE stream live to the end:
every other run with one request (the POST asks for its stream, `Accept: text/event-stream`),
the others with the POST then `GET /v1/runs/{id}/events`.
A killer task meanwhile, every 0.5-2.5 s (random), picks a worker whose prefork child holds the
lease of a running run (`runs.lease_owner` = `host:pid:nonce`, read as the Postgres superuser),
or else a random ready worker, SIGKILLs its whole process group and starts a fresh worker in
its place. Clients keep submitting until N runs were made and K kills done (or `--max-seconds`).

At the end, per run:

- **terminal / lost**: `GET /v1/runs/{id}` is terminal (`succeeded` expected: the offline model
  does not fail); a run that is not terminal 60 s after the last kill is lost;
- **tool calls**: `GET /v1/runs/{id}/tool-calls` lists exactly the 3 scripted calls, all
  `succeeded`; in the run's events a `tool.call` seen twice for one `tool_call_id` before its
  `tool.result` is "re-executed mid-call" (the documented at-least-once window: the skill ran
  again after a crash during the call), while a `tool.call` or `tool.result` after that id's
  `tool.result` is a "duplicated completed call" (must be 0);
- **streams**: the live stream, and a replay of `GET /v1/runs/{id}/events` read to its end,
  have consecutive seqs (one session per run), exactly one terminal event, last; the session
  stream (`GET /v1/sessions/{id}/events?after=0`, read until the run's terminal event) starts
  at seq 1 with no gap;
- **recovery time**: for each kill whose victim run was known, the time from the kill to that
  run's next `run.started` (event `ts`).

Prints a summary and exits 1 if any check fails. `run_chaos(ChaosOptions(...)) -> ChaosReport`
is the same logic for the test suite (`tests/test_chaos.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agentos.stack.local import LocalStack, StackUrls  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from agentos.stack.worker import watchdog_process, worker_process  # noqa: E402
from bench.runs import (  # noqa: E402
    APP_ROLE,
    TERMINAL,
    _child_env,
    _ts,
    api_ready,
    create_org_and_agent,
    machine,
    mean,
    pct,
)
from core.migrations import migrate  # noqa: E402

console = Console(highlight=False, width=max(Console().width, 120))

WORKER_ENV = {
    "AGENTOS_LOG_LEVEL": "INFO",  # Celery logs " ready." at INFO
    "AGENTOS_WORKER__LEASE_S": "2",
    "AGENTOS_WORKER__HEARTBEAT_S": "0.5",
    "AGENTOS_WORKER__WATCHDOG_INTERVAL_S": "0.5",
    "AGENTOS_WORKER__REQUEUE_AFTER_S": "3",
    "AGENTOS_WORKER__MAX_ATTEMPTS": "100",
    "AGENTOS_LIMITS__REQUESTS_PER_MINUTE": "10000000",
    "AGENTOS_LIMITS__MAX_ACTIVE_RUNS": "100000",
}
EXPECTED_ACTIONS = ["write", "list", "write"]
HOLDERS_SQL = "SELECT id, lease_owner FROM runs WHERE status = 'running' AND lease_expires_at > now()"


def script(tag: str, wait_s: float = 0.3) -> str:
    """The run input: write, list, write, with short waits between (offline model directives)."""
    return "\n".join([
        f'call: file_manager {{"action": "write", "path": "{tag}-1.txt", "content": "1"}}',
        f"wait: {wait_s}",
        'call: file_manager {"action": "list"}',
        f"wait: {wait_s}",
        f'call: file_manager {{"action": "write", "path": "{tag}-2.txt", "content": "2"}}',
    ])


@dataclass
class ChaosOptions:
    runs: int = 300
    workers: int = 3
    kills: int = 200
    concurrency: int = 6
    seed: int | None = None
    min_interval_s: float = 0.5  # between kills (uniform random)
    max_interval_s: float = 2.5
    max_seconds: float = 600.0  # stop submitting (and killing) after this much wall time
    keep: bool = False
    quiet: bool = False


@dataclass
class Kill:
    wall: float  # time.time() of the SIGKILL
    worker_pid: int
    run_id: str | None  # the run its child was executing (None: a random pick)


@dataclass
class RunResult:
    run_id: str
    session_id: str
    tag: str
    status: str = "?"
    one_request: bool = False  # created and followed by one POST answering with its stream
    live_error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # the replayed run stream
    problems: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    runs: int = 0
    one_request_runs: int = 0  # of them, created and followed by one POST answering with its stream
    kills: int = 0
    kills_of_executing: int = 0  # kills of a worker that held a running run's lease
    succeeded: int = 0
    failed: int = 0
    other: int = 0  # cancelled / timed_out / not terminal
    lost: int = 0  # not terminal at the end
    restarts_attempts: int = 0  # run.started beyond the first, summed over runs
    tool_call_row_mismatches: int = 0  # runs whose tool_calls rows are not exactly the 3 expected
    reexecuted_mid_call: int = 0  # tool.call repeated before the call's tool.result
    duplicated_completed: int = 0  # tool.call/tool.result after the call's tool.result
    stream_gaps: int = 0  # run streams (live, replay, session) with a gap / bad terminal
    live_stream_errors: int = 0  # live follows that broke or timed out (the replay is checked too)
    recovery_s: list[float] = field(default_factory=list)
    victims_finished: int = 0  # kills whose victim run had no later run.started (it had finished)
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)  # first few, for the reader

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.failed == 0 and self.other == 0 and self.duplicated_completed == 0
                and self.stream_gaps == 0 and self.tool_call_row_mismatches == 0
                and self.succeeded == self.runs)


# ---------------------------------------------------------------------------------------------
# Processes


class Cluster:
    """The stack, the API, W workers and a watchdog; `close()` stops whatever was started."""

    def __init__(self, opts: ChaosOptions, *, worker_env: dict[str, str] | None = None,
                 prefix: str = "agentos-chaos-") -> None:
        self.opts = opts
        self.worker_env = worker_env or WORKER_ENV  # for the workers and the watchdog
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.stack: LocalStack | None = None
        self.urls: StackUrls | None = None
        self.api: ServerProcess | None = None
        self.watchdog: ServerProcess | None = None
        self.workers: list[ServerProcess] = []
        self.lock = threading.Lock()
        self.started = 0
        self.api_url = ""
        self.admin_token = "chaos-admin-" + secrets.token_hex(8)
        self.key = ""
        self.agent_id = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def start(self) -> None:
        self.stack = LocalStack(self.dir / "stack", database="agentos_chaos", durable=False)
        self.urls = self.stack.start()
        migrate(self.urls.database_url, APP_ROLE)
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", "--port", str(port)]
        self.api = ServerProcess("api", argv, self.dir / "api.log", stop_signal=signal.SIGTERM,
                                 env=_child_env(self.urls, self.admin_token, "WARNING"))
        self.api.start()
        self.watchdog = watchdog_process(self.dir / "watchdog.log", database_url=self.urls.database_url,
                                         redis_url=self.urls.redis_url, extra_env=self.worker_env)
        self.watchdog.start()
        for _ in range(self.opts.workers):
            self.workers.append(self.new_worker())
        self.api.wait_until(self._api_ready, timeout_s=60)
        for w in list(self.workers):
            _wait_ready(w)
        watchdog = self.watchdog
        watchdog.wait_until(lambda: "watchdog ready." in watchdog.log_tail(50), timeout_s=60)
        self._create_org_and_agent()

    def _api_ready(self) -> bool:
        return api_ready(self.api_url)

    def _create_org_and_agent(self) -> None:
        _, self.key, self.agent_id = create_org_and_agent(self.api_url, self.admin_token, "chaos", {
            "name": "chaos", "model": "offline:default", "instructions": "You are a chaos test agent.",
            "skills": ["file_manager"], "confirm": "none"})

    def new_worker(self) -> ServerProcess:
        assert self.urls is not None
        self.started += 1
        w = worker_process(self.dir / f"worker-{self.started}.log", database_url=self.urls.database_url,
                           redis_url=self.urls.redis_url, workspace_root=self.dir / "workspaces",
                           concurrency=1, extra_env=self.worker_env,
                           health_file=self.dir / f"worker-{self.started}.health.json")
        # Not `w.start()`: its preexec_fn (PR_SET_PDEATHSIG through ctypes) runs Python in the
        # forked child, which can deadlock when other threads of this process hold a lock at
        # fork time (seen here: restarted workers hung before exec). `setpriv` sets the same
        # parent-death signal after exec, and Popen without preexec_fn uses vfork/posix_spawn.
        setpriv = shutil.which("setpriv")
        argv = [setpriv, "--pdeathsig", "TERM", *w.argv] if setpriv else w.argv
        with open(w.log_path, "ab") as log:
            w.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, env=w.env)
        return w

    def holders(self) -> dict[int, str]:
        """pid of the process holding a live lease -> run id."""
        assert self.urls is not None
        with psycopg.connect(self.urls.database_url, autocommit=True) as conn:  # superuser: no RLS
            rows = conn.execute(HOLDERS_SQL).fetchall()
        found = {}
        for run_id, owner in rows:
            with contextlib.suppress(IndexError, ValueError, AttributeError):
                found[int(owner.split(":")[1])] = run_id
        return found

    def kill_one(self, rng: random.Random, holders: dict[int, str]) -> Kill | None:
        """SIGKILL the process group of a worker that is executing a run (else a random one),
        and start a fresh worker in its place. Called from the main thread (see `new_worker`)."""
        with self.lock:
            candidates: list[tuple[ServerProcess, str]] = []
            for w in self.workers:
                if not w.alive() or w.pid is None:
                    continue
                pids = {w.pid}
                with contextlib.suppress(psutil.Error):
                    pids |= {c.pid for c in psutil.Process(w.pid).children(recursive=True)}
                run_id = next((holders[p] for p in pids if p in holders), None)
                if run_id is not None:
                    candidates.append((w, run_id))
            if candidates:
                victim, run_id = rng.choice(candidates)
            else:
                alive = [w for w in self.workers if w.alive()]
                ready = [w for w in alive if " ready." in w.log_tail(400)]
                alive = ready or alive
                if not alive:
                    return None
                victim, run_id = rng.choice(alive), None
            assert victim.proc is not None
            pid = victim.proc.pid
            wall = time.time()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                victim.proc.wait(10)
            self.workers.remove(victim)
            self.workers.append(self.new_worker())
        return Kill(wall, pid, run_id)

    def close(self) -> None:
        with self.lock:
            procs = [*self.workers, self.watchdog, self.api]
            self.workers = []
        for proc in procs:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        if self.stack is not None:
            with contextlib.suppress(Exception):
                self.stack.stop()
        if self.opts.keep:
            console.print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Clients and checks


async def read_sse(client: httpx.AsyncClient, path: str, headers: dict[str, str], *,
                   until_run_terminal: str | None = None, into: list[dict[str, Any]] | None = None,
                   post: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Events of an SSE response until it ends (or, with `until_run_terminal`, until that run's
    terminal event). Checks that `id:`/`event:` agree with the data. `into`: append the events
    there as they arrive (kept when the stream breaks). `post`: the body of a POST that answers
    `202` with its stream (a run's create), instead of a GET."""
    found: list[dict[str, Any]] = [] if into is None else into
    method, status = ("GET", 200) if post is None else ("POST", 202)
    if post is not None:
        headers = headers | {"Accept": "text/event-stream"}
    async with client.stream(method, path, headers=headers, json=post) as resp:
        if resp.status_code != status:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {(await resp.aread())!r}")
        fields: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if line == "":
                if "data" in fields:
                    event = orjson.loads(fields["data"])
                    if fields.get("id") != str(event["seq"]) or fields.get("event") != event["type"]:
                        raise RuntimeError(f"SSE fields disagree with data: {fields} {event}")
                    found.append(event)
                    if until_run_terminal and event["run_id"] == until_run_terminal and event["type"] in TERMINAL:
                        return found
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
    return found


def stream_problems(events: list[dict[str, Any]], what: str) -> list[str]:
    """Consecutive seqs, exactly one terminal event and it is the last."""
    out = []
    seqs = [e["seq"] for e in events]
    if not seqs:
        return [f"{what}: no events"]
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        out.append(f"{what}: seqs not consecutive {seqs}")
    terminals = [i for i, e in enumerate(events) if e["type"] in TERMINAL]
    if len(terminals) != 1 or terminals[0] != len(events) - 1:
        out.append(f"{what}: terminal events at {terminals} of {len(events)}")
    return out


class Driver:
    def __init__(self, cluster: Cluster, opts: ChaosOptions, rng: random.Random) -> None:
        self.cluster = cluster
        self.opts = opts
        self.rng = rng
        self.results: list[RunResult] = []
        self.kills: list[Kill] = []
        self.stop_killing = threading.Event()
        self.t0 = time.monotonic()

    def enough(self) -> bool:
        return (len(self.results) >= self.opts.runs and len(self.kills) >= self.opts.kills) or \
            time.monotonic() - self.t0 > self.opts.max_seconds

    async def killer(self) -> None:
        """Kills from the main thread; only the lease query runs in a helper thread."""
        while not self.stop_killing.is_set() and len(self.kills) < self.opts.kills:
            await asyncio.sleep(self.rng.uniform(self.opts.min_interval_s, self.opts.max_interval_s))
            if self.stop_killing.is_set():
                return
            try:
                holders = await asyncio.to_thread(self.cluster.holders)
                kill = self.cluster.kill_one(self.rng, holders)
            except Exception as exc:  # keep going: a failed pick is not a failed check
                console.print(f"[yellow]killer: {type(exc).__name__}: {exc}[/yellow]")
                continue
            if kill is not None:
                self.kills.append(kill)
                if not self.opts.quiet and len(self.kills) % 25 == 0:
                    console.print(f"  {len(self.kills)} kills, {len(self.results)} runs submitted, "
                                  f"{time.monotonic() - self.t0:.0f}s")

    async def client_loop(self, client: httpx.AsyncClient) -> None:
        h = self.cluster.headers
        while not self.enough():
            r = await client.post("/v1/sessions", json={"agent_id": self.cluster.agent_id}, headers=h)
            r.raise_for_status()
            session_id = r.json()["id"]
            tag = "r" + secrets.token_hex(6)
            one_request = len(self.results) % 2 == 0
            if one_request:
                await self.one_request(client, session_id, tag)
                continue
            r = await client.post(f"/v1/sessions/{session_id}/runs", json={"input": script(tag)}, headers=h)
            if r.status_code != 202:
                raise RuntimeError(f"POST run: {r.status_code} {r.text}")
            result = RunResult(r.json()["id"], session_id, tag)
            self.results.append(result)
            try:
                async with asyncio.timeout(120):
                    live = await read_sse(client, f"/v1/runs/{result.run_id}/events", h)
                result.problems += stream_problems(live, "live run stream")
            except Exception as exc:
                result.live_error = f"{type(exc).__name__}: {exc}"

    async def one_request(self, client: httpx.AsyncClient, session_id: str, tag: str) -> None:
        """A run created and followed by one POST that answers with its stream (its first event,
        `run.queued`, names the run)."""
        live: list[dict[str, Any]] = []
        error: str | None = None
        try:
            async with asyncio.timeout(120):
                await read_sse(client, f"/v1/sessions/{session_id}/runs", self.cluster.headers, into=live,
                               post={"input": script(tag)})
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if not live:
            raise RuntimeError(f"POST run with its stream: no event ({error})")
        result = RunResult(live[0]["run_id"], session_id, tag, one_request=True, live_error=error)
        self.results.append(result)
        if error is None:
            result.problems += stream_problems(live, "live run stream (one request)")

    async def check(self, client: httpx.AsyncClient, result: RunResult, deadline: float) -> None:
        h = self.cluster.headers
        while True:
            run = (await client.get(f"/v1/runs/{result.run_id}", headers=h)).json()
            result.status = run["status"]
            if result.status in {"succeeded", "failed", "cancelled", "timed_out"} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if result.status not in {"succeeded", "failed", "cancelled", "timed_out"}:
            return  # lost: nothing more to check
        async with asyncio.timeout(30):
            result.events = await read_sse(client, f"/v1/runs/{result.run_id}/events", h)
            session = await read_sse(client, f"/v1/sessions/{result.session_id}/events?after=0", h,
                                     until_run_terminal=result.run_id)
        result.problems += stream_problems(result.events, "replayed run stream")
        seqs = [e["seq"] for e in session]
        if seqs != list(range(1, len(seqs) + 1)):
            result.problems.append(f"session stream: seqs {seqs}")
        rows = (await client.get(f"/v1/runs/{result.run_id}/tool-calls", headers=h)).json()["data"]
        actions = [row["args"].get("action") for row in rows]
        if actions != EXPECTED_ACTIONS or any(row["status"] != "succeeded" for row in rows):
            result.problems.append(f"tool_calls rows: {[(row['args'].get('action'), row['status']) for row in rows]}")

    async def run(self) -> ChaosReport:
        report = ChaosReport()
        limits = httpx.Limits(max_connections=2 * self.opts.concurrency + 4)
        async with httpx.AsyncClient(base_url=self.cluster.api_url, limits=limits, timeout=60) as client:
            killer = asyncio.create_task(self.killer())
            try:
                await asyncio.gather(*(self.client_loop(client) for _ in range(self.opts.concurrency)))
            finally:
                self.stop_killing.set()
                killer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await killer
            report.elapsed_s = time.monotonic() - self.t0
            deadline = time.monotonic() + 60
            sem = asyncio.Semaphore(self.opts.concurrency)

            async def one(result: RunResult) -> None:
                async with sem:
                    try:
                        await self.check(client, result, deadline)
                    except Exception as exc:
                        result.problems.append(f"check: {type(exc).__name__}: {exc}")

            await asyncio.gather(*(one(r) for r in self.results))
        self.tally(report)
        return report

    def tally(self, report: ChaosReport) -> None:
        report.runs = len(self.results)
        report.one_request_runs = sum(1 for r in self.results if r.one_request)
        report.kills = len(self.kills)
        report.kills_of_executing = sum(1 for k in self.kills if k.run_id)
        by_id = {r.run_id: r for r in self.results}
        for r in self.results:
            if r.status == "succeeded":
                report.succeeded += 1
            elif r.status == "failed":
                report.failed += 1
            else:
                report.other += 1
            if r.status not in {"succeeded", "failed", "cancelled", "timed_out"}:
                report.lost += 1
                r.problems.append(f"lost: status {r.status}")
            if r.live_error:
                report.live_stream_errors += 1
            if any("stream" in p for p in r.problems):
                report.stream_gaps += 1
            if any(p.startswith("tool_calls rows") for p in r.problems):
                report.tool_call_row_mismatches += 1
            report.restarts_attempts += max(0, sum(1 for e in r.events if e["type"] == "run.started") - 1)
            calls: dict[str, int] = {}
            done: set[str] = set()
            for e in r.events:
                if e["type"] not in ("tool.call", "tool.result"):
                    continue
                tid = e["data"]["tool_call_id"]
                if tid in done:
                    report.duplicated_completed += 1
                    r.problems.append(f"duplicated completed call {tid}: {e['type']}")
                elif e["type"] == "tool.call":
                    calls[tid] = calls.get(tid, 0) + 1
                    if calls[tid] > 1:
                        report.reexecuted_mid_call += 1
                else:
                    done.add(tid)
            if r.problems and len(report.problems) < 10:
                report.problems.append(f"{r.run_id}: {'; '.join(r.problems)[:600]}")
        for k in self.kills:
            victim = by_id.get(k.run_id) if k.run_id else None
            if victim is None:
                continue
            later = [_ts(e["ts"]) for e in victim.events if e["type"] == "run.started" and _ts(e["ts"]) > k.wall]
            if later:
                report.recovery_s.append(min(later) - k.wall)
            else:
                report.victims_finished += 1


def run_chaos(opts: ChaosOptions) -> ChaosReport:
    """Start a cluster, drive runs while killing workers, check every run, stop everything."""
    rng = random.Random(opts.seed)
    cluster = Cluster(opts)
    try:
        t0 = time.perf_counter()
        cluster.start()
        if not opts.quiet:
            console.print(f"stack, API, {opts.workers} workers and the watchdog up in "
                          f"{time.perf_counter() - t0:.1f}s ({cluster.dir})")
        return asyncio.run(Driver(cluster, opts, rng).run())
    finally:
        cluster.close()


# ---------------------------------------------------------------------------------------------
# Output


def print_report(report: ChaosReport, opts: ChaosOptions) -> None:
    table = Table(title="Chaos: runs with tool calls while workers are SIGKILLed")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("expected", justify="right")
    rows = [
        ("runs", report.runs, f">= {opts.runs}"),
        ("  created and followed by one request", report.one_request_runs, ""),
        ("kills (SIGKILL of a worker's process group)", report.kills, f">= {opts.kills}"),
        ("  of a worker executing a run", report.kills_of_executing, ""),
        ("succeeded", report.succeeded, "all"),
        ("failed", report.failed, "0"),
        ("other (cancelled / timed out / not terminal)", report.other, "0"),
        ("lost (not terminal 60 s after the end)", report.lost, "0"),
        ("extra claims (run.started beyond the first)", report.restarts_attempts, ""),
        ("tool_calls rows not exactly the 3 calls, succeeded", report.tool_call_row_mismatches, "0"),
        ("duplicated completed calls", report.duplicated_completed, "0"),
        ("re-executed mid-call (at-least-once window)", report.reexecuted_mid_call, "any"),
        ("runs with a stream gap / bad terminal", report.stream_gaps, "0"),
        ("live streams broken or timed out", report.live_stream_errors, ""),
        ("kills whose victim had finished anyway", report.victims_finished, ""),
    ]
    for name, value, expected in rows:
        table.add_row(name, str(value), expected)
    rec = report.recovery_s
    table.add_section()
    table.add_row(f"recovery s (kill -> victim's next run.started), n={len(rec)}",
                  "-" if not rec else f"p50 {pct(rec, 50):.2f} / p90 {pct(rec, 90):.2f} / "
                                      f"max {max(rec):.2f} / mean {mean(rec):.2f}", "")
    table.add_row("wall time s (driving)", f"{report.elapsed_s:.1f}", "")
    console.print(table)
    for p in report.problems:
        console.print(f"[red]{p}[/red]")
    console.print("[green]all checks passed[/green]" if report.ok else "[red]CHECKS FAILED[/red]")


def parse_args(argv: list[str] | None = None) -> ChaosOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=300, help="runs to make at least (default 300)")
    p.add_argument("--workers", type=int, default=3, help="worker processes, one slot each (default 3)")
    p.add_argument("--kills", type=int, default=200,
                   help="kills to make; runs keep being submitted until both targets are met (default 200)")
    p.add_argument("--concurrency", type=int, default=6, help="concurrent clients (default 6)")
    p.add_argument("--seed", type=int, default=None, help="random seed for the killer")
    p.add_argument("--min-interval", type=float, default=0.5, help="min seconds between kills (default 0.5)")
    p.add_argument("--max-interval", type=float, default=2.5, help="max seconds between kills (default 2.5)")
    p.add_argument("--max-seconds", type=float, default=600, help="stop submitting and killing after (default 600)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    a = p.parse_args(argv)
    if min(a.runs, a.workers, a.concurrency) < 1 or a.kills < 0:
        p.error("--runs, --workers, --concurrency must be >= 1 and --kills >= 0")
    return ChaosOptions(runs=a.runs, workers=a.workers, kills=a.kills, concurrency=a.concurrency, seed=a.seed,
                        min_interval_s=a.min_interval, max_interval_s=a.max_interval, max_seconds=a.max_seconds,
                        keep=a.keep)


def _wait_ready(worker: ServerProcess) -> None:
    worker.wait_until(lambda: " ready." in worker.log_tail(400), timeout_s=90)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    t0 = time.perf_counter()
    try:
        report = run_chaos(opts)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopped everything[/yellow]")
        return 130
    console.print(f"machine: {machine()}")
    console.print(f"settings: runs={opts.runs} workers={opts.workers} kills={opts.kills} "
                  f"concurrency={opts.concurrency} seed={opts.seed} interval={opts.min_interval_s}-"
                  f"{opts.max_interval_s}s")
    print_report(report, opts)
    console.print(f"total wall time {time.perf_counter() - t0:.1f}s")
    if report.kills < opts.kills:
        console.print(f"[yellow]only {report.kills} of {opts.kills} kills fit in --max-seconds[/yellow]")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
