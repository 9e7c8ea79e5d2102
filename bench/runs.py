"""End-to-end run benchmark: POST a run, follow its SSE stream to the terminal event.

    .venv/bin/python bench/runs.py [--runs N] [--concurrency C] [--workers W[,W...]] [--profile] [--trace]

Starts its own stack in a temp dir (embedded Postgres + Redis, non-durable), migrates, creates an
org and an `offline:default` agent through the API, starts `agentos worker` (prefork, W slots) and
`agentos api` (uvicorn) as child processes on 127.0.0.1, and stops all of them at the end, also on
Ctrl-C or an error. Then, per worker setting:

1. warm-up: a few runs at concurrency W (every prefork child opens its pools on its first run);
2. sequential: N runs, each in its own session (sessions are created before the timed part):
   POST latency, POST -> first SSE event (run.queued, replayed), POST -> terminal event;
3. concurrent: C asyncio clients, each POST + follow SSE to the end, until `--concurrent-runs`
   runs are done: runs/s and latencies.

Every run is also split with the events' own `ts` fields (API, queue wait, execution, delivery).
`--trace` turns tracing on in the API and the worker, exporting every span over OTLP/HTTP to a
local no-op collector (it answers each export without decoding it), to price tracing per run.
`--profile` adds: Postgres statements per run (from `log_statement=all` for a few runs), and
cProfile of the worker's `execute_run` and of the API's POST handler, both run in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import math
import os
import platform
import pstats
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agentos.stack.local import LocalStack, StackUrls  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from agentos.stack.worker import worker_process  # noqa: E402
from core.migrations import migrate  # noqa: E402
from tests.otlp_collector import OtlpCollector  # noqa: E402

TERMINAL = frozenset({"run.succeeded", "run.failed", "run.cancelled", "run.timed_out"})
APP_ROLE = "agentos_app"
console = Console(highlight=False, width=max(Console().width, 132))


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Sample:
    """One run as the client saw it, plus the server-side timestamps of its events."""

    post_s: float  # POST sent -> 202 received
    first_s: float  # POST sent -> first SSE event received
    terminal_s: float  # POST sent -> terminal SSE event received
    sent_wall: float  # time.time() when the POST was sent
    queued_ts: float  # run.queued `ts` (written by the API)
    started_ts: float  # run.started `ts` (written by the worker on claim)
    terminal_ts: float  # terminal event `ts` (written by the worker on finish)
    terminal_recv_wall: float  # time.time() when the terminal event reached the client
    status: str
    events: int
    timeline: list[tuple[str, float]] = field(default_factory=list)  # (type, ts) of every event

    @property
    def api_s(self) -> float:  # POST sent -> run.queued stored (auth, validation, insert tx)
        return self.queued_ts - self.sent_wall

    @property
    def queue_s(self) -> float:  # run.queued -> run.started: Celery hop + worker claim
        return self.started_ts - self.queued_ts

    @property
    def exec_s(self) -> float:  # run.started -> terminal event stored: the graph + finish tx
        return self.terminal_ts - self.started_ts

    @property
    def delivery_s(self) -> float:  # terminal stored -> at the client (XADD, XREAD, SSE)
        return self.terminal_recv_wall - self.terminal_ts


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f}"


def _ts(raw: str) -> float:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


@dataclass
class Phase:
    name: str
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.samples) / self.elapsed_s if self.elapsed_s else math.nan


# ---------------------------------------------------------------------------------------------
# The stack


def _child_env(urls: StackUrls, admin_token: str, log_level: str) -> dict[str, str]:
    env = {**os.environ, "AGENTOS_DATABASE_URL": urls.database_url, "AGENTOS_REDIS_URL": urls.redis_url,
           "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": admin_token, "AGENTOS_ENV": "development",
           "AGENTOS_LOG_LEVEL": log_level,
           # Admission limits are not what this measures: lift them out of the way.
           "AGENTOS_LIMITS__REQUESTS_PER_MINUTE": "10000000", "AGENTOS_LIMITS__MAX_ACTIVE_RUNS": "100000"}
    for name in ("AGENTOS_DATABASE__URL", "AGENTOS_REDIS__URL"):
        env.pop(name, None)
    return env


def api_ready(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def create_org_and_agent(api_url: str, admin_token: str, org_name: str, agent: dict[str, Any]) -> tuple[str, str, str]:
    """A fresh org (through the platform admin token) and one agent in it: (org id, key, agent id)."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        r = client.post("/v1/orgs", json={"name": org_name}, headers={"Authorization": f"Bearer {admin_token}"})
        r.raise_for_status()
        org_id, key = r.json()["org"]["id"], r.json()["api_key"]["key"]
        # No cap on active runs a bench could reach (`--profile` leaves 2 x --profile-runs queued).
        r = client.patch(f"/v1/orgs/{org_id}", json={"limits": {"max_active_runs": 100_000}},
                         headers={"Authorization": f"Bearer {admin_token}"})
        r.raise_for_status()
        r = client.post("/v1/agents", json=agent, headers={"Authorization": f"Bearer {key}"})
        r.raise_for_status()
        return str(org_id), str(key), str(r.json()["id"])


class Bench:
    """The stack, the API and (one at a time) a worker; `close()` stops whatever was started."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="agentos-bench-"))
        self.stack: LocalStack | None = None
        self.urls: StackUrls | None = None
        self.api: ServerProcess | None = None
        self.worker: ServerProcess | None = None
        self.api_url = ""
        self.admin_token = "bench-admin-" + secrets.token_hex(8)
        self.org_id = ""
        self.key = ""
        self.agent_id = ""
        self.collector: OtlpCollector | None = OtlpCollector(keep=False).start() if args.trace else None

    def telemetry_env(self) -> dict[str, str]:
        if self.collector is None:
            return {}
        return {"AGENTOS_TELEMETRY__OTLP_ENDPOINT": self.collector.url}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def start_stack(self) -> None:
        t0 = time.perf_counter()
        self.stack = LocalStack(self.dir / "stack", database="agentos_bench", durable=False)
        self.urls = self.stack.start()
        migrate(self.urls.database_url, APP_ROLE)
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", "--port", str(port)]
        self.api = ServerProcess("api", argv, self.dir / "api.log", stop_signal=signal.SIGTERM,
                                 env=_child_env(self.urls, self.admin_token, self.args.api_log_level)
                                 | self.telemetry_env())
        self.api.start()
        self.api.wait_until(self._api_ready, timeout_s=60)
        console.print(f"stack, migrations and API up in {time.perf_counter() - t0:.1f}s ({self.dir})")

    def _api_ready(self) -> bool:
        return api_ready(self.api_url)

    def create_org_and_agent(self) -> None:
        agent: dict[str, Any] = {"name": "bench", "model": "offline:default",
                                 "instructions": "You are a benchmark agent."}
        if "call:" in self.args.input:  # a scripted tool call needs the tool
            agent["skills"] = ["file_manager"]
        self.org_id, self.key, self.agent_id = create_org_and_agent(self.api_url, self.admin_token, "bench", agent)

    def start_worker(self, concurrency: int) -> None:
        assert self.urls is not None
        t0 = time.perf_counter()
        log = self.dir / f"worker-{concurrency}.log"
        self.worker = worker_process(
            log, database_url=self.urls.database_url, redis_url=self.urls.redis_url,
            workspace_root=self.dir / "workspaces", concurrency=concurrency,
            extra_env={"AGENTOS_LOG_LEVEL": "INFO", **self.telemetry_env()},  # Celery logs " ready." at INFO
        )
        if self.args.pool != "prefork":
            self.worker.argv.append(f"--pool={self.args.pool}")
        self.worker.start()
        worker = self.worker
        worker.wait_until(lambda: " ready." in worker.log_tail(400), timeout_s=90)
        console.print(f"worker ({self.args.pool}, concurrency {concurrency}) ready in "
                      f"{time.perf_counter() - t0:.1f}s")

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def close(self) -> None:
        for step in (self.stop_worker, self._stop_api, self._stop_stack, self._stop_collector):
            try:
                step()
            except Exception as exc:  # keep stopping the rest
                console.print(f"[yellow]while stopping: {exc}[/yellow]")
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            console.print(f"kept {self.dir}")

    def _stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None

    def _stop_collector(self) -> None:
        if self.collector is not None:
            console.print(f"no-op collector: {self.collector.requests} OTLP export requests received")
            self.collector.stop()
            self.collector = None

    def _stop_stack(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None


# ---------------------------------------------------------------------------------------------
# The client


async def make_sessions(client: httpx.AsyncClient, bench: Bench, count: int) -> list[str]:
    sem = asyncio.Semaphore(8)

    async def one() -> str:
        async with sem:
            r = await client.post("/v1/sessions", json={"agent_id": bench.agent_id}, headers=bench.headers)
            r.raise_for_status()
            return str(r.json()["id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def one_run(client: httpx.AsyncClient, bench: Bench, session_id: str, text: str) -> Sample:
    """POST a run, then open its SSE stream at once and read it to the end; with `--one-request`,
    the POST itself asks for the stream (`Accept: text/event-stream`) and its answer is read."""
    sent_wall = time.time()
    t0 = time.perf_counter()
    path = f"/v1/sessions/{session_id}/runs"
    if bench.args.one_request:
        headers = bench.headers | {"Accept": "text/event-stream"}
        async with client.stream("POST", path, json={"input": text}, headers=headers) as resp:
            post_s = time.perf_counter() - t0
            if resp.status_code != 202:
                raise RuntimeError(f"POST run: {resp.status_code} {(await resp.aread())!r}")
            read = await _read_stream(resp, t0)
    else:
        r = await client.post(path, json={"input": text}, headers=bench.headers)
        post_s = time.perf_counter() - t0
        if r.status_code != 202:
            raise RuntimeError(f"POST run: {r.status_code} {r.text}")
        async with client.stream("GET", f"/v1/runs/{r.json()['id']}/events", headers=bench.headers) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"GET events: {resp.status_code} {(await resp.aread())!r}")
            read = await _read_stream(resp, t0)
    if read.status == "?":
        raise RuntimeError(f"session {session_id}: the stream ended without a terminal event")
    return Sample(post_s, read.first_s, read.terminal_s, sent_wall, read.stamps.get("run.queued", math.nan),
                  read.stamps.get("run.started", math.nan), read.stamps["terminal"], read.recv_wall, read.status,
                  read.count, read.timeline)


@dataclass
class StreamRead:
    """What the client read of one run's stream: times from the POST's send (`t0`)."""

    first_s: float = math.nan
    terminal_s: float = math.nan
    recv_wall: float = math.nan
    status: str = "?"
    count: int = 0
    stamps: dict[str, float] = field(default_factory=dict)
    timeline: list[tuple[str, float]] = field(default_factory=list)


async def _read_stream(resp: httpx.Response, t0: float) -> StreamRead:
    read = StreamRead()
    data: str | None = None
    async for line in resp.aiter_lines():
        if line:
            if line.startswith("data:"):
                data = line[5:].lstrip()
            continue
        if data is None:
            continue
        now = time.perf_counter()
        event = orjson.loads(data)
        data = None
        read.count += 1
        if read.count == 1:
            read.first_s = now - t0
        kind = event["type"]
        read.timeline.append((kind, _ts(event["ts"])))
        if kind in ("run.queued", "run.started") or kind in TERMINAL:
            read.stamps.setdefault("terminal" if kind in TERMINAL else kind, _ts(event["ts"]))
        if kind in TERMINAL:
            read.terminal_s, read.recv_wall, read.status = now - t0, time.time(), kind
            # keep reading: the server ends the stream itself, so the connection is reused
    return read


@contextlib.asynccontextmanager
async def http_client(bench: Bench, connections: int) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=bench.api_url, limits=limits, timeout=60) as client:
        yield client


async def run_many(bench: Bench, phase: Phase, sessions: list[str], concurrency: int, text: str) -> None:
    """`concurrency` clients take the next session and do one run in it until none are left."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for s in sessions:
        queue.put_nowait(s)

    async with http_client(bench, 2 * concurrency + 2) as client:

        async def loop() -> None:
            while True:
                try:
                    session_id = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    async with asyncio.timeout(60):
                        phase.samples.append(await one_run(client, bench, session_id, text))
                except Exception as exc:
                    phase.errors += 1
                    if phase.errors <= 3:
                        console.print(f"[red]{phase.name}: {type(exc).__name__}: {exc}[/red]")
                if concurrency == 1 and bench.args.gap_ms:
                    await asyncio.sleep(bench.args.gap_ms / 1000)  # a user's pause between messages

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        phase.elapsed_s = time.perf_counter() - t0


async def new_sessions(bench: Bench, count: int) -> list[str]:
    async with http_client(bench, 10) as client:
        return await make_sessions(client, bench, count)


@contextlib.contextmanager
def stack_with_org(args: argparse.Namespace) -> Iterator[Bench]:
    """For the benches that run the platform's code in their own process (bench/execute.py,
    run_start.py, pg_batch.py): the stack, the API, an org and its agent, stopped at the end.
    `args` needs only `keep` (and `input`, when it has one); the rest of what `Bench` reads is
    filled in: no tracing, the API logging warnings, the default pool."""
    for name, default in (("trace", False), ("api_log_level", "WARNING"), ("input", "hello"), ("pool", "prefork")):
        if not hasattr(args, name):
            setattr(args, name, default)
    bench = Bench(args)
    try:
        bench.start_stack()
        bench.create_org_and_agent()
        yield bench
    finally:
        bench.close()


def _tree_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def _own_cpu() -> float:
    """This process only: the servers are its children, counted above."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def cpu_by_process(bench: Bench) -> dict[str, float]:
    stack = bench.stack
    pg = stack.postgres.server if stack else None
    rd = stack.redis.server if stack else None
    return {
        "api (uvicorn)": _tree_cpu(bench.api.pid if bench.api else None),
        "worker (celery + children)": _tree_cpu(bench.worker.pid if bench.worker else None),
        "postgres (all backends)": _tree_cpu(pg.pid if pg else None),
        "redis": _tree_cpu(rd.pid if rd else None),
        "bench client (this process)": _own_cpu(),
    }


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def cpu_snapshot(bench: Bench) -> dict[str, float]:
    return {**cpu_by_process(bench), "machine": _machine_busy()}


def cpu_delta(before: dict[str, float], after: dict[str, float], runs: int) -> dict[str, float]:
    """CPU seconds per run by process group, plus "other" = the machine's busy time that none of
    ours used (other programs: it should stay near 0 for figures worth keeping)."""
    per = {k: (after[k] - before[k]) / max(runs, 1) for k in after}
    machine_total = per.pop("machine")
    per["other (not ours)"] = max(machine_total - sum(per.values()), 0.0)
    return per


def redis_commands(url: str) -> Counter[str]:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


async def measure(bench: Bench, concurrency: int, workers: int) -> list[Phase]:
    args = bench.args
    assert bench.urls is not None
    warm = Phase("warm-up")
    await run_many(bench, warm, await new_sessions(bench, max(args.warmup, 2 * workers)), workers, args.input)

    seq_sessions = await new_sessions(bench, args.runs)
    con_sessions = await new_sessions(bench, args.concurrent_runs)

    mode = ", one request" if args.one_request else ""
    seq = Phase(f"sequential (W={workers}{mode})")
    before, cpu_before = redis_commands(bench.urls.redis_url), cpu_snapshot(bench)
    await run_many(bench, seq, seq_sessions, 1, args.input)
    after = redis_commands(bench.urls.redis_url)
    seq.extra["cpu_per_run"] = cpu_delta(cpu_before, cpu_snapshot(bench), len(seq.samples))
    seq.extra["redis_per_run"] = {k: (after[k] - before[k]) / max(len(seq.samples), 1)
                                  for k in after if after[k] != before[k]}

    con = Phase(f"concurrent C={concurrency} (W={workers}{mode})")
    cpu_before = cpu_snapshot(bench)
    await run_many(bench, con, con_sessions, concurrency, args.input)
    cpu_after = cpu_snapshot(bench)
    con.extra["cpu_per_run"] = cpu_delta(cpu_before, cpu_after, len(con.samples))
    busy = cpu_after["machine"] - cpu_before["machine"]
    con.extra["cpu_busy"] = busy / max(con.elapsed_s * (psutil.cpu_count() or 1), 1e-9)
    for phase in (warm, seq, con):
        if phase.errors:
            console.print(f"[red]{phase.name}: {phase.errors} run(s) failed[/red]")
    return [seq, con]


# ---------------------------------------------------------------------------------------------
# Profiling (in this process, against the same stack)


def _bucket(filename: str) -> str:
    f = filename.replace("\\", "/")
    for name in ("langgraph", "langchain_core", "psycopg_pool", "psycopg", "redis", "pydantic", "kombu", "celery",
                 "orjson", "uvicorn", "starlette", "httpx", "httpcore", "anyio"):
        if f"/{name}/" in f or f"/{name}_" in f:
            return name
    for mine in ("/core/", "/runtime/", "/orchestrator/", "/api/", "/skills/"):
        if str(REPO) in f and mine in f:
            return "agentos " + mine.strip("/")
    if "asyncio" in f or "uvloop" in f or "selectors" in f:
        return "asyncio / event loop"
    if f.startswith("<") or "~" in f:
        return "builtins / C"
    return "other stdlib / libs"


def _profile_report(title: str, prof: cProfile.Profile, runs: int, top: int = 18) -> None:
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_bucket: Counter[str] = Counter()
    total = 0.0
    for (filename, _line, _fn), (_cc, _nc, tt, _ct, _callers) in raw.items():
        by_bucket[_bucket(filename)] += tt
        total += tt
    table = Table(title=f"{title}: CPU in this process, {total / runs * 1000:.2f} ms per run (own time by package)")
    table.add_column("package")
    table.add_column("ms/run", justify="right")
    table.add_column("share", justify="right")
    for name, tt in by_bucket.most_common(12):
        table.add_row(name, f"{tt / runs * 1000:.2f}", f"{tt / total:.0%}")
    console.print(table)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    console.print(f"[dim]top {top} functions by own time ({runs} runs):[/dim]")
    for ln in lines[start:start + top + 1]:
        console.print(f"[dim]{ln.replace(str(REPO) + '/', '')[:150]}[/dim]", soft_wrap=True)


class Timers:
    """Wall time spent in chosen functions, by wrapping them in this process (restored after)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        orig = getattr(owner, name, None)
        if orig is None:  # the code moved on: measure what is still there
            return
        if asyncio.iscoroutinefunction(orig):
            @functools.wraps(orig)
            async def timed(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await orig(*a, **kw)
                finally:
                    self.total[label] += time.perf_counter() - t0
                    self.calls[label] += 1
        else:
            @functools.wraps(orig)
            def timed(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return orig(*a, **kw)
                finally:
                    self.total[label] += time.perf_counter() - t0
                    self.calls[label] += 1
        setattr(owner, name, timed)
        self._undo.append((owner, name, orig))

    def wrap_cm(self, owner: Any, name: str, label: str) -> None:
        """`wrap` for an async context manager factory: the time from its entry to its exit."""
        orig = getattr(owner, name, None)
        if orig is None:
            return

        @contextlib.asynccontextmanager
        async def timed(*a: Any, **kw: Any) -> AsyncIterator[Any]:
            t0 = time.perf_counter()
            try:
                async with orig(*a, **kw) as value:
                    yield value
            finally:
                self.total[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, name, timed)
        self._undo.append((owner, name, orig))

    def restore(self) -> None:
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)
        self._undo.clear()

    def report(self, title: str, runs: int, walls: list[float], cpus: list[float]) -> None:
        table = Table(title=f"{title}: wall p50 {ms(pct(walls, 50))} ms, mean {ms(mean(walls))} ms; "
                            f"CPU of this process {ms(mean(cpus))} ms per run (no profiler)")
        table.add_column("inside (wall, nested rows overlap)")
        table.add_column("ms/run", justify="right")
        table.add_column("calls/run", justify="right")
        for label in self.total:
            table.add_row(label, f"{self.total[label] / runs * 1000:.2f}", f"{self.calls[label] / runs:.1f}")
        console.print(table)


async def _execute_stored_runs(bench: Bench, svc: Any, sessions: list[str], prof: cProfile.Profile | None,
                               walls: list[float], cpus: list[float]) -> None:
    from core.store import agents, runs
    from core.tenancy import tenant_tx
    from runtime.executor import execute_run

    for session_id in sessions:
        async with tenant_tx(svc.pool, bench.org_id) as conn:
            agent = await agents.get(conn, bench.agent_id)
            assert agent is not None
            created = await runs.create(conn, session_id=session_id, text=bench.args.input,
                                        multitask="enqueue", metadata={}, idempotency_key=None,
                                        request_hash="bench", created_by="bench")
        assert created is not None
        t0, c0 = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        outcome = await execute_run(svc, created.run["id"], bench.org_id)
        if prof is not None:
            prof.disable()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        outcome = getattr(outcome, "outcome", outcome)  # a str, or an object carrying one
        if outcome != "succeeded":
            raise RuntimeError(f"profiled run: {outcome}")


async def profile_worker(bench: Bench, runs_n: int) -> None:
    """`runtime.executor.execute_run` in this process on runs stored (not enqueued) here: first
    timed with wrappers (no profiler), then under cProfile."""
    import runtime.executor as executor
    from core.events import RunEmitter
    from core.settings import load_settings
    from core.store import runs
    from orchestrator.checkpointer import StepSaver
    from runtime.services import Services

    assert bench.urls is not None
    settings = load_settings(database={"url": bench.urls.database_url}, redis={"url": bench.urls.redis_url},
                             worker={"workspace_root": str(bench.dir / "workspaces")})
    svc = await Services.open(settings)
    sessions = await new_sessions(bench, 2 * runs_n + 3)
    timers = Timers()
    try:
        await _execute_stored_runs(bench, svc, sessions[:3], None, [], [])  # warm: imports, caches
        timers.wrap(runs, "get", "runs.get (SQL of the load tx)")
        timers.wrap(executor, "_load_agent", "_load_agent (tx)")
        timers.wrap(runs, "claim_batch", "runs.claim_batch (the claim's one batch)")
        timers.wrap(executor, "_execute", "_execute (the graph, incl. its event writes)")
        timers.wrap(RunEmitter, "_write", "  RunEmitter._write (event tx + XADD)")
        timers.wrap(StepSaver, "aget_tuple", "  checkpoint aget_tuple")
        timers.wrap(StepSaver, "aput", "  checkpoint aput (the step's writes, blobs, checkpoint)")
        timers.wrap(StepSaver, "aput_writes", "  checkpoint aput_writes (kept until the checkpoint)")
        timers.wrap(StepSaver, "flush_writes", "  checkpoint flush_writes")
        timers.wrap(executor, "_complete", "_complete (finish tx + XADD + next)")
        walls: list[float] = []
        cpus: list[float] = []
        try:
            await _execute_stored_runs(bench, svc, sessions[3:3 + runs_n], None, walls, cpus)
        finally:
            timers.restore()
        console.print()
        timers.report("worker execute_run in-process", len(walls), walls, cpus)
        prof = cProfile.Profile()
        await _execute_stored_runs(bench, svc, sessions[3 + runs_n:], prof, [], [])
    finally:
        timers.restore()
        await svc.close()
    _profile_report("execute_run under cProfile", prof, runs_n)


async def profile_api(bench: Bench, runs_n: int) -> None:
    """POST /v1/sessions/{id}/runs through the ASGI app in this process (no network): timed with
    wrappers, then under cProfile. The runs are enqueued for real (the running worker executes them)."""
    import api.routes.runs as run_routes
    from api.app import create_app
    from core.admission import Admission
    from core.jobs import JobQueue
    from core.settings import load_settings
    from core.store import api_keys

    assert bench.urls is not None
    settings = load_settings(database={"url": bench.urls.database_url}, redis={"url": bench.urls.redis_url},
                             auth={"platform_admin_token": bench.admin_token}, log_level="WARNING")
    app = create_app(settings)
    sessions = await new_sessions(bench, 2 * runs_n + 3)
    timers = Timers()

    async def post_all(client: httpx.AsyncClient, batch: list[str], prof: cProfile.Profile | None,
                       walls: list[float], cpus: list[float]) -> None:
        for session_id in batch:
            t0, c0 = time.perf_counter(), time.process_time()
            if prof is not None:
                prof.enable()
            r = await client.post(f"/v1/sessions/{session_id}/runs", json={"input": bench.args.input},
                                  headers=bench.headers)
            if prof is not None:
                prof.disable()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            if r.status_code != 202:
                raise RuntimeError(f"profiled POST: {r.status_code} {r.text}")

    prof = cProfile.Profile()
    async with app.router.lifespan_context(app) as lifespan_state:
        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            # What a server does with the lifespan's state (httpx's ASGI transport does not).
            scope["state"] = dict(lifespan_state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            await post_all(client, sessions[:3], None, [], [])
            timers.wrap(api_keys, "verify", "api_keys.verify (auth tx: a key not in the cache)")
            timers.wrap(Admission, "check_rate_and_admit_run", "admission: rate and run ticket (one Redis round trip)")
            timers.wrap_cm(run_routes, "tenant_pipeline_tx", "the insert transaction (one Postgres round trip)")
            timers.wrap(run_routes, "announce_created", "announce: ticket, XADD, EXPIRE, LPUSH (one Redis round trip)")
            timers.wrap(JobQueue, "send_run", "  send_run in a thread (kombu; before the sender is primed)")
            walls: list[float] = []
            cpus: list[float] = []
            try:
                await post_all(client, sessions[3:3 + runs_n], None, walls, cpus)
            finally:
                timers.restore()
            console.print()
            timers.report("API POST /runs in-process (ASGI)", len(walls), walls, cpus)
            await post_all(client, sessions[3 + runs_n:], prof, [], [])
    _profile_report("POST /runs under cProfile (the Celery send thread is not profiled)", prof, runs_n)


_STATEMENT = re.compile(r"LOG:\s+(?:statement|execute [^:]*):\s*(.*)$")


def _kind(sql: str) -> str:
    s = sql.strip()
    word = s.split(None, 1)[0].upper() if s else "?"
    if "checkpoint" in s.lower():
        return f"{word} (langgraph checkpoint)"
    if "set_config('app.org_id'" in s or "set_config('app.api_key_prefix'" in s:
        return "SELECT set_config (tenant scope)"
    if word in ("SELECT", "UPDATE", "INSERT", "DELETE"):
        table = re.search(r"\b(?:FROM|UPDATE|INTO)\s+([a-z_]+)", s, re.IGNORECASE)
        return f"{word} {table.group(1) if table else ''}".strip()
    return word


async def count_statements(bench: Bench, runs_n: int) -> None:
    """Postgres statements per run, from `log_statement = all` over a few sequential runs."""
    assert bench.urls is not None and bench.stack is not None
    log_path = bench.stack.data_dir / "postgres.log"
    sessions = await new_sessions(bench, runs_n)
    with psycopg.connect(bench.urls.database_url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("SELECT pg_reload_conf()")
    await asyncio.sleep(0.5)
    offset = log_path.stat().st_size
    phase = Phase("statements")
    try:
        await run_many(bench, phase, sessions, 1, bench.args.input)
        await asyncio.sleep(0.3)
    finally:
        with psycopg.connect(bench.urls.database_url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("SELECT pg_reload_conf()")
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    statements: list[str] = []
    for line in text.splitlines():
        m = _STATEMENT.search(line)
        if m:
            statements.append(m.group(1))
        elif line.startswith("\t") and statements:  # a multi-line statement continues
            statements[-1] += "\n" + line
    kinds = Counter(_kind(sql) for sql in statements if "log_statement" not in sql)
    n = max(len(phase.samples), 1)
    total = sum(kinds.values())
    xacts = kinds["BEGIN"] + sum(c for k, c in kinds.items() if "checkpoint" in k)
    table = Table(title=f"Postgres statements per run ({n} sequential runs, API + worker): {total / n:.1f} "
                        f"statements, ~{xacts / n:.1f} transactions (BEGIN..COMMIT + autocommit checkpoint writes)")
    table.add_column("statement")
    table.add_column("per run", justify="right")
    for kind, count in kinds.most_common(25):
        table.add_row(kind, f"{count / n:.1f}")
    console.print(table)


# ---------------------------------------------------------------------------------------------
# Output


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    table = Table(title="Latency (ms) per run")
    for col in ("phase", "metric", "p50", "p99", "mean", "max"):
        table.add_column(col, justify="left" if col in ("phase", "metric") else "right")
    metrics: list[tuple[str, Callable[[Sample], float]]] = [
        ("POST latency", lambda s: s.post_s),
        ("POST -> first event", lambda s: s.first_s),
        ("POST -> terminal", lambda s: s.terminal_s),
        ("  split: API (POST -> run.queued ts)", lambda s: s.api_s),
        ("  split: queue wait (queued -> started)", lambda s: s.queue_s),
        ("  split: execution (started -> terminal)", lambda s: s.exec_s),
        ("  split: delivery (terminal ts -> client)", lambda s: s.delivery_s),
    ]
    for phase in phases:
        for i, (name, get) in enumerate(metrics):
            values = [v for v in (get(s) for s in phase.samples) if not math.isnan(v)]
            label = f"{phase.name}\n{len(phase.samples)} runs" if i == 0 else ""
            table.add_row(label, name, ms(pct(values, 50)), ms(pct(values, 99)), ms(mean(values)),
                          ms(max(values) if values else math.nan))
        table.add_section()
    console.print(table)

    summary = Table(title="Throughput")
    for col in ("phase", "runs", "errors", "elapsed s", "runs/s", "CPU busy", "events/run"):
        summary.add_column(col, justify="left" if col == "phase" else "right")
    for phase in phases:
        busy = phase.extra.get("cpu_busy")
        summary.add_row(phase.name, str(len(phase.samples)), str(phase.errors), f"{phase.elapsed_s:.2f}",
                        f"{phase.rate:.1f}", f"{busy:.0%}" if busy is not None else "-",
                        f"{mean([s.events for s in phase.samples]):.1f}")
    console.print(summary)
    cpu = Table(title="CPU time per run (ms) by process, from /proc (user + system)")
    cpu.add_column("phase")
    names = list(next((p.extra["cpu_per_run"] for p in phases if "cpu_per_run" in p.extra), {}))
    for name in [*names, "total"]:
        cpu.add_column(name, justify="right")
    for phase in phases:
        per = phase.extra.get("cpu_per_run")
        if per:
            cpu.add_row(phase.name, *(f"{per[n] * 1000:.1f}" for n in names), f"{sum(per.values()) * 1000:.1f}")
    console.print(cpu)
    noisy = [p.name for p in phases if p.extra.get("cpu_per_run", {}).get("other (not ours)", 0.0) > 0.005]
    if noisy:
        console.print(f"[yellow]warning: other programs used > 5 ms CPU per run during {', '.join(noisy)}; "
                      "those figures are disturbed[/yellow]")
    for phase in phases:
        gaps: dict[str, list[float]] = {}
        for sample in phase.samples:
            events = sample.timeline
            for (a, ta), (b, tb) in zip(events, events[1:], strict=False):
                gaps.setdefault(f"{a} -> {b}", []).append(tb - ta)
        if gaps:
            console.print(f"Event timeline (median gap between consecutive event ts, ms), {phase.name}: "
                          + "; ".join(f"{k} {ms(pct(v, 50))}" for k, v in gaps.items()))
    for phase in phases:
        per_run = phase.extra.get("redis_per_run")
        if per_run:
            top = sorted(per_run.items(), key=lambda kv: -kv[1])[:10]
            console.print(f"Redis commands per run, {phase.name}: "
                          + ", ".join(f"{k} {v:.1f}" for k, v in top))


def targets(phases: list[Phase], concurrency: int) -> None:
    seq = [p for p in phases if p.name.startswith("sequential")]
    con = [p for p in phases if p.name.startswith("concurrent")]
    def verdict(met: bool) -> str:
        return "[green]met[/green]" if met else "[red]not met[/red]"

    # Issue 18's targets.
    for p in seq:
        first = [s.first_s for s in p.samples]
        terminal = pct([s.terminal_s for s in p.samples], 50)
        console.print(f"target first event p50 <= 8 ms, p99 <= 20 ms, {p.name}: {ms(pct(first, 50))} / "
                      f"{ms(pct(first, 99))} ms -> {verdict(pct(first, 50) <= 0.008 and pct(first, 99) <= 0.020)}")
        console.print(f"target terminal p50 <= 18 ms, {p.name}: {ms(terminal)} ms -> {verdict(terminal <= 0.018)}")
    for p in con:
        cpu = sum(p.extra.get("cpu_per_run", {}).values()) - p.extra.get("cpu_per_run", {}).get("other (not ours)", 0)
        console.print(f"target >= 110 runs/s at <= 17 ms CPU per run with {concurrency} clients, {p.name}: "
                      f"{p.rate:.1f} runs/s at {cpu * 1000:.1f} ms -> {verdict(p.rate >= 110 and cpu <= 0.017)}")


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (f"{psutil.cpu_count(logical=True)} logical cores ({psutil.cpu_count(logical=False)} physical), "
            f"{mem:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=100, help="sequential runs (default 100)")
    p.add_argument("--concurrency", type=int, default=10, help="concurrent clients (default 10)")
    p.add_argument("--concurrent-runs", type=int, default=300, help="runs in the concurrent phase (default 300)")
    p.add_argument("--workers", default="2",
                   help="worker concurrency (Celery slots); a comma list runs the phases once per value "
                        "(default 2, as `agentos dev`)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"], help="Celery pool")
    p.add_argument("--one-request", action="store_true",
                   help="each run's POST asks for its stream (Accept: text/event-stream) instead of a POST then a GET")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="pause between sequential runs (default 0: the next POST as soon as the terminal event "
                        "arrives, while the worker still finishes the run before)")
    p.add_argument("--warmup", type=int, default=6, help="warm-up runs (at least 2 per worker slot)")
    p.add_argument("--input", default="hello",
                   help="the run input (default: a plain message -> canned reply); with a "
                        "`call: file_manager {...}` line the agent gets the file_manager skill")
    p.add_argument("--api-log-level", default="INFO",
                   help="AGENTOS_LOG_LEVEL of the API process (default INFO, as `agentos dev`: access log on)")
    p.add_argument("--profile", action="store_true",
                   help="also count Postgres statements per run and cProfile execute_run and the POST handler")
    p.add_argument("--profile-runs", type=int, default=30, help="runs per profiling step (default 30)")
    p.add_argument("--json", type=Path, help="also write every run's sample and the settings to this file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    p.add_argument("--trace", action="store_true",
                   help="tracing on in the API and worker, spans exported to a local no-op OTLP collector")
    args = p.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    except ValueError:
        p.error("--workers takes integers, e.g. 2 or 2,4,8")
    if not args.worker_counts or min(args.worker_counts) < 1 or args.runs < 1 or args.concurrency < 1:
        p.error("--runs, --concurrency and --workers must be >= 1")
    return args


async def amain(bench: Bench) -> None:
    args = bench.args
    phases: list[Phase] = []
    for workers in args.worker_counts:
        bench.start_worker(workers)
        try:
            phases += await measure(bench, args.concurrency, workers)
            if args.profile and workers == args.worker_counts[-1]:
                await count_statements(bench, min(args.profile_runs, 20))
                await profile_worker(bench, args.profile_runs)
                await profile_api(bench, args.profile_runs)
        finally:
            bench.stop_worker()
    console.print()
    console.print(f"machine: {machine()}")
    console.print(f"settings: runs={args.runs} concurrency={args.concurrency} concurrent-runs={args.concurrent_runs} "
                  f"workers={args.workers} pool={args.pool} input={args.input!r} api-log-level={args.api_log_level} "
                  f"trace={args.trace}")
    report(phases, args)
    targets(phases, args.concurrency)
    if args.json:
        write_json(args.json, phases, args)


def write_json(path: Path, phases: list[Phase], args: argparse.Namespace) -> None:
    doc = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "phases": [{
            "name": p.name, "runs": len(p.samples), "errors": p.errors, "elapsed_s": p.elapsed_s,
            "runs_per_s": p.rate, "extra": p.extra,
            "samples": [{
                "post_s": s.post_s, "first_s": s.first_s, "terminal_s": s.terminal_s, "api_s": s.api_s,
                "queue_s": s.queue_s, "exec_s": s.exec_s, "delivery_s": s.delivery_s, "status": s.status,
                "events": s.events,
            } for s in p.samples],
        } for p in phases],
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    console.print(f"wrote {path}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    busy = psutil.cpu_percent(interval=0.5)
    if busy > 20:
        console.print(f"[yellow]the CPUs are {busy:.0f}% busy before the start: figures will be noisy[/yellow]")
    bench = Bench(args)
    with _sigterm_as_interrupt():
        try:
            bench.start_stack()
            bench.create_org_and_agent()
            runner_factory: Any = None
            with contextlib.suppress(ImportError):
                import uvloop

                runner_factory = uvloop.new_event_loop
            with asyncio.Runner(loop_factory=runner_factory) as runner:
                runner.run(amain(bench))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; stopping everything[/yellow]")
            return 130
        finally:
            bench.close()
    console.print(f"total wall time {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
