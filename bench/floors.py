"""Issue 18's floors: what this machine gives a hand-built run chain, and what each part of a
real run costs at the least, measured alone.

    .venv/bin/python bench/floors.py                     # ~1-2 min
    .venv/bin/python bench/floors.py --with-runs         # also runs bench/runs.py for the full-run figures

Starts its own embedded Postgres and Redis (non-durable, as bench/runs.py), migrates, and on
127.0.0.1 free ports: the real API (`bench/floors_api.py`: `agentos api` plus two trivial routes)
and the prototype's API and Celery worker (`bench/floors_proto.py`). Stops all of them by PID.

1. Machine calibration: the issue's prototype (Starlette -> Postgres -> Celery -> Redis Stream ->
   SSE, no LangGraph), driven like bench/runs.py (sequential, then C clients): runs/s, CPU ms per
   run of each process, POST -> first event and POST -> terminal.
2. Floors, each measured alone (CPU of every process involved, and wall):
   a. the run's two requests (POST + SSE GET) through the real API's stack with nothing behind
      them: middleware, authentication (key cache), rate check, body parsing, SSE framing;
   b. Postgres: an empty tenant transaction and a trivial statement, priced at the statement
      counts of a run (today's, from `bench/runs.py --profile`, and the least a run with the
      guarantees needs);
   c. Redis: XADD and XREAD per event, and a run's events in one pipelined XADD and one XREAD;
   d. the run graph (orchestrator.graph) on a hello input with the offline model: no saver,
      LangGraph's in-memory saver, our StepSaver (Postgres);
   e. Celery: bench/celery_overhead.py (not measured here; a line infers its worker side from the
      prototype's worker).
   Then a table: CPU per run, the ceiling it implies on the machine's cores, and the sum against
   the full run; the floors by the process that pays them; the wall floors of the first and the
   terminal event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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
from psycopg.types.json import Jsonb  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agentos.stack.local import LocalStack, StackUrls  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from bench import floors_proto  # noqa: E402
from bench.runs import _child_env, _machine_busy, _own_cpu, _tree_cpu, api_ready, create_org_and_agent, pct  # noqa: E402
from bench.runs import machine as machine_line  # noqa: E402
from core.migrations import migrate  # noqa: E402

APP_ROLE = "agentos_app"
ORG = "org_floors"
console = Console(highlight=False, width=max(Console().width, 140))

# bench/runs.py --profile on main, 2026-12-01 (night), docs/benchmarks.md: a hello run's
# statements and BEGIN..COMMIT transactions (API + worker), and the full run's figures at C=10.
TODAY_STATEMENTS, TODAY_TRANSACTIONS = 50.5, 7.1
FULL_CPU_MS, FULL_RUNS_S = 72.8, 24.8
# The least a hello run needs with the guarantees (docs/benchmarks.md, "Issue 18: the floors"):
# 4 tenant transactions (the POST's insert, the claim, one event batch, the end) with 5 writes in
# them (the end stores the answer and ends the run); the checkpoints (the thread's read, one per
# step) are priced in (d) with StepSaver.
MIN_TRANSACTIONS, MIN_WRITES = 4, 5
EVENTS_PER_RUN = 7  # a hello run today: queued, started, 2 x step.started, delta(s), completed, succeeded
RUN_EVENTS = f"a run's {EVENTS_PER_RUN} events: one pipelined XADD of them, one XREAD"


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


# ---------------------------------------------------------------------------------------------
# CPU by process, from /proc


@dataclass
class Cpu:
    """CPU seconds per operation by process group, and what the rest of the machine used."""

    per: dict[str, float]
    other: float

    @property
    def total(self) -> float:
        return sum(self.per.values())

    def fmt(self) -> str:
        parts = [f"{k} {v * 1000:.2f}" for k, v in self.per.items() if v * 1000 >= 0.005]
        return ", ".join(parts) + f"; other (not ours) {self.other * 1000:.2f}"


class CpuMeter:
    def __init__(self, groups: dict[str, Callable[[], float]]) -> None:
        self.groups = groups

    def snap(self) -> dict[str, float]:
        return {**{k: f() for k, f in self.groups.items()}, "__machine": _machine_busy()}

    def since(self, before: dict[str, float], ops: int, only: tuple[str, ...] | None = None) -> Cpu:
        after = self.snap()
        per = {k: (after[k] - before[k]) / max(ops, 1) for k in self.groups}
        machine = (after["__machine"] - before["__machine"]) / max(ops, 1)
        other = max(machine - sum(per.values()), 0.0)
        if only is not None:
            per = {k: v for k, v in per.items() if k in only}
        return Cpu(per, other)


# ---------------------------------------------------------------------------------------------
# The stack


class Stack:
    """Postgres, Redis, the real API, the prototype's API and worker; `close()` stops them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="agentos-floors-"))
        self.local: LocalStack | None = None
        self.urls = StackUrls("", "")
        self.procs: dict[str, ServerProcess] = {}
        self.admin_token = "floors-admin-" + secrets.token_hex(8)
        self.api_url = self.proto_url = ""
        self.key = ""

    def start(self) -> None:
        t0 = time.perf_counter()
        self.local = LocalStack(self.dir / "stack", database="agentos_floors", durable=False)
        self.urls = self.local.start()
        migrate(self.urls.database_url, APP_ROLE)
        with psycopg.connect(self.urls.database_url, autocommit=True) as conn:
            conn.execute(floors_proto.SCHEMA_SQL)
            conn.execute(f"GRANT SELECT, INSERT, UPDATE ON floors_runs TO {APP_ROLE}")
        env = _child_env(self.urls, self.admin_token, self.args.api_log_level)
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self._start("api", [sys.executable, "-m", "bench.floors_api", "api", "--host", "127.0.0.1", "--port",
                            str(port)], env, lambda: api_ready(self.api_url))
        proto_env = {**os.environ, "FLOORS_DATABASE_URL": self.urls.database_url,
                     "FLOORS_REDIS_URL": self.urls.redis_url, "FLOORS_APP_ROLE": APP_ROLE, "FLOORS_ORG": ORG,
                     "PYTHONPATH": str(REPO)}
        port = free_port()
        self.proto_url = f"http://127.0.0.1:{port}"
        self._start("proto api", [sys.executable, "-m", "bench.floors_proto", "api", "--port", str(port)], proto_env,
                    lambda: api_ready(self.proto_url))
        worker_log = self.dir / "proto-worker.log"
        self._start("proto worker", [sys.executable, "-m", "bench.floors_proto", "worker", "--concurrency",
                                     str(self.args.workers)], proto_env,
                    lambda: " ready." in worker_log.read_text(errors="replace") if worker_log.exists() else False,
                    group=True)
        _, self.key, _ = create_org_and_agent(self.api_url, self.admin_token, "floors",
                                              {"name": "floors", "model": "offline:default"})
        console.print(f"stack, migrations, API, prototype API and worker up in {time.perf_counter() - t0:.1f}s "
                      f"({self.dir})")

    def _start(self, name: str, argv: list[str], env: dict[str, str], ready: Callable[[], bool],
               group: bool = False) -> None:
        proc = ServerProcess(name, argv, self.dir / f"{name.replace(' ', '-')}.log", stop_signal=signal.SIGTERM,
                             env={**env, "PYTHONPATH": str(REPO)}, group=group)
        self.procs[name] = proc
        proc.start()
        proc.wait_until(ready, timeout_s=120)

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc else None

    def meter(self) -> CpuMeter:
        assert self.local is not None
        pg, rd = self.local.postgres.server, self.local.redis.server
        return CpuMeter({
            "api": lambda: _tree_cpu(self.pid("api")),
            "proto api": lambda: _tree_cpu(self.pid("proto api")),
            "proto worker": lambda: _tree_cpu(self.pid("proto worker")),
            "postgres": lambda: _tree_cpu(pg.pid if pg else None),
            "redis": lambda: _tree_cpu(rd.pid if rd else None),
            "client (this process)": _own_cpu,
        })

    def stop_servers(self) -> None:
        """Stop every process started, each by its own PID (or process group), last started first."""
        for name in reversed(list(self.procs)):
            try:
                self.procs.pop(name).stop()
            except Exception as exc:
                console.print(f"[yellow]while stopping {name}: {exc}[/yellow]")
        if self.local is not None:
            try:
                self.local.stop()
            except Exception as exc:
                console.print(f"[yellow]while stopping Postgres/Redis: {exc}[/yellow]")
            self.local = None

    def close(self) -> None:
        self.stop_servers()
        if self.args.keep:
            console.print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# HTTP clients: POST, then an SSE stream read to its last event


@dataclass
class Sample:
    post_s: float
    first_s: float
    terminal_s: float


@dataclass
class Phase:
    name: str
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu: Cpu | None = None
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.samples) / self.elapsed_s if self.elapsed_s else math.nan

    def p(self, what: str, q: float) -> float:
        return pct([getattr(s, what) for s in self.samples], q)


async def post_and_follow(client: httpx.AsyncClient, post_path: str, body: dict[str, Any],
                          events_path: Callable[[dict[str, Any]], str], last: Callable[[dict[str, Any]], bool],
                          headers: dict[str, str]) -> Sample:
    t0 = time.perf_counter()
    r = await client.post(post_path, json=body, headers=headers)
    post_s = time.perf_counter() - t0
    if r.status_code != 202:
        raise RuntimeError(f"POST {post_path}: {r.status_code} {r.text[:200]}")
    async with client.stream("GET", events_path(r.json()), headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"GET events: {resp.status_code}")
        first_s, terminal_s = await _read_to(resp, t0, last)
    return Sample(post_s, first_s, terminal_s)


async def _read_to(resp: httpx.Response, t0: float, last: Callable[[dict[str, Any]], bool]) -> tuple[float, float]:
    """(first event, `last` event) of a stream, in seconds from `t0`."""
    first_s = terminal_s = math.nan
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        now = time.perf_counter()
        if math.isnan(first_s):
            first_s = now - t0
        if last(orjson.loads(line[5:])):
            terminal_s = now - t0
    if math.isnan(terminal_s):
        raise RuntimeError("the stream ended without its last event")
    return first_s, terminal_s


async def post_streaming(client: httpx.AsyncClient, post_path: str, body: dict[str, Any],
                         last: Callable[[dict[str, Any]], bool], headers: dict[str, str]) -> Sample:
    """A POST that answers with its stream (`Accept: text/event-stream`), read to `last`."""
    t0 = time.perf_counter()
    async with client.stream("POST", post_path, json=body, headers=headers | {"Accept": "text/event-stream"}) as resp:
        post_s = time.perf_counter() - t0
        if resp.status_code != 202:
            raise RuntimeError(f"POST {post_path}: {resp.status_code}")
        first_s, terminal_s = await _read_to(resp, t0, last)
    return Sample(post_s, first_s, terminal_s)


async def drive(name: str, base_url: str, n: int, concurrency: int,
                one: Callable[[httpx.AsyncClient], Awaitable[Sample]], meter: CpuMeter | None,
                only: tuple[str, ...] | None = None) -> Phase:
    phase = Phase(name)
    left = [n]
    limits = httpx.Limits(max_connections=2 * concurrency + 2, max_keepalive_connections=2 * concurrency + 2)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def loop() -> None:
            while left[0] > 0:
                left[0] -= 1
                try:
                    phase.samples.append(await one(client))
                except Exception as exc:
                    phase.errors += 1
                    if phase.errors <= 3:
                        console.print(f"[red]{name}: {type(exc).__name__}: {exc}[/red]")

        before = meter.snap() if meter else None
        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        phase.elapsed_s = time.perf_counter() - t0
        if meter and before:
            phase.cpu = meter.since(before, len(phase.samples), only)
    return phase


def proto_run(client: httpx.AsyncClient) -> Awaitable[Sample]:
    return post_and_follow(client, "/runs", {"session": "s_" + secrets.token_hex(4), "input": "hello"},
                           lambda r: f"/runs/{r['id']}/events", lambda e: e.get("type") == "ended", {})


def api_pair(key: str) -> Callable[[httpx.AsyncClient], Awaitable[Sample]]:
    headers = {"Authorization": f"Bearer {key}"}

    def one(client: httpx.AsyncClient) -> Awaitable[Sample]:
        return post_and_follow(client, "/bench/noop", {"input": "hello"}, lambda r: "/bench/noop/events",
                               lambda e: e.get("type") == "run.succeeded", headers)

    return one


def api_one_request(key: str) -> Callable[[httpx.AsyncClient], Awaitable[Sample]]:
    headers = {"Authorization": f"Bearer {key}"}

    def one(client: httpx.AsyncClient) -> Awaitable[Sample]:
        return post_streaming(client, "/bench/noop", {"input": "hello"}, lambda e: e.get("type") == "run.succeeded",
                              headers)

    return one


PROTO_PROCS = ("proto api", "proto worker", "postgres", "redis", "client (this process)")
API_PROCS = ("api", "postgres", "redis", "client (this process)")


async def calibration(stack: Stack, args: argparse.Namespace) -> list[Phase]:
    meter = stack.meter()
    await drive("warm-up", stack.proto_url, 4 * args.workers, args.workers, proto_run, None)
    seq = await drive("prototype, sequential", stack.proto_url, args.runs, 1, proto_run, meter, PROTO_PROCS)
    con = await drive(f"prototype, C={args.concurrency}", stack.proto_url, args.concurrent_runs, args.concurrency,
                      proto_run, meter, PROTO_PROCS)
    return [seq, con]


async def http_floor(stack: Stack, args: argparse.Namespace) -> list[Phase]:
    meter = stack.meter()
    one = api_pair(stack.key)
    await drive("warm-up", stack.api_url, 20, 2, one, None)
    seq = await drive("(a) API pair, sequential", stack.api_url, args.runs, 1, one, meter, API_PROCS)
    con = await drive(f"(a) API pair, C={args.concurrency}", stack.api_url, args.concurrent_runs, args.concurrency,
                      one, meter, API_PROCS)
    single = api_one_request(stack.key)
    seq1 = await drive("(a') API, one request, sequential", stack.api_url, args.runs, 1, single, meter, API_PROCS)
    con1 = await drive(f"(a') API, one request, C={args.concurrency}", stack.api_url, args.concurrent_runs,
                       args.concurrency, single, meter, API_PROCS)
    return [seq, con, seq1, con1]


# ---------------------------------------------------------------------------------------------
# In-process floors: Postgres, Redis, the run graph


@dataclass
class Floor:
    name: str
    wall_s: float  # p50 per operation
    cpu: Cpu
    ops: int


async def timed(name: str, n: int, meter: CpuMeter, op: Callable[[], Awaitable[Any]],
                only: tuple[str, ...]) -> Floor:
    for _ in range(min(20, n)):  # warm: prepared statements, pools
        await op()
    walls: list[float] = []
    before = meter.snap()
    for _ in range(n):
        t0 = time.perf_counter()
        await op()
        walls.append(time.perf_counter() - t0)
    return Floor(name, pct(walls, 50), meter.since(before, n, only), n)


IN_PROCESS = ("client (this process)", "postgres", "redis")


async def postgres_floors(stack: Stack, args: argparse.Namespace) -> list[Floor]:
    from core.db import open_pool
    from core.settings import load_settings
    from core.tenancy import tenant_tx

    settings = load_settings(database={"url": stack.urls.database_url, "pool_min": 1, "pool_max": 2},
                             redis={"url": stack.urls.redis_url})
    pool = await open_pool(settings.database, name="floors")
    autocommit = await open_pool(settings.database, name="floors-autocommit", autocommit=True, max_size=1)
    meter = stack.meter()
    n = args.ops
    out: list[Floor] = []
    try:
        async def empty_tx() -> None:
            async with tenant_tx(pool, ORG):
                pass

        out.append(await timed("empty tenant tx (BEGIN, set_config, COMMIT)", n, meter, empty_tx, IN_PROCESS))

        async with tenant_tx(pool, ORG) as conn:
            async def select_one() -> None:
                await (await conn.execute("SELECT 1")).fetchone()

            out.append(await timed("trivial statement in a tx (SELECT 1)", n, meter, select_one, IN_PROCESS))

        async def insert_tx() -> None:
            async with tenant_tx(pool, ORG) as conn:
                await conn.execute(floors_proto.INSERT_SQL, (
                    "run_" + secrets.token_hex(10), ORG, "s", Jsonb({"input": "hello"})))

        out.append(await timed("tenant tx with one INSERT (RLS table)", n, meter, insert_tx, IN_PROCESS))

        async def autocommit_select() -> None:
            async with autocommit.connection() as conn:
                await (await conn.execute("SELECT 1")).fetchone()

        out.append(await timed("autocommit statement (checkpoint pool)", n, meter, autocommit_select, IN_PROCESS))
    finally:
        await autocommit.close()
        await pool.close()
    return out


async def redis_floors(stack: Stack, args: argparse.Namespace) -> list[Floor]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(stack.urls.redis_url)
    meter = stack.meter()
    key = f"floors:{ORG}:bench:events"
    payload = orjson.dumps({"seq": 1, "type": "message.delta", "run_id": "run_" + "x" * 20, "session_id": "s" * 24,
                            "ts": "2026-12-01T20:00:00.000000Z", "data": {"text": "Hello! " * 8, "agent_id": "a" * 24}})
    last = ["0-0"]

    async def xadd() -> None:
        added: Any = await client.xadd(key, {"e": payload}, maxlen=1000, approximate=True)
        last[0] = added.decode()

    async def xadd_xread() -> None:
        before = last[0]
        await xadd()
        await client.xread({key: before}, count=100)

    async def batch() -> None:  # a run's events as RunEmitter and the event hub move them at best
        before = last[0]
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(EVENTS_PER_RUN):
                pipe.xadd(key, {"e": payload}, maxlen=1000, approximate=True)
            added = await pipe.execute()
        last[0] = added[-1].decode()
        await client.xread({key: before}, count=100)

    try:
        return [await timed("XADD (one event)", args.ops, meter, xadd, IN_PROCESS),
                await timed("XADD + XREAD of it (one event)", args.ops, meter, xadd_xread, IN_PROCESS),
                await timed(RUN_EVENTS, args.ops, meter, batch, IN_PROCESS)]
    finally:
        await client.aclose()


class _Emitter:
    """Stands in for `core.events.RunEmitter`: the graph's events go nowhere (their Postgres and
    Redis costs are floors (b) and (c))."""

    def __init__(self) -> None:
        self.events = 0

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events += 1

    async def delta(self, text: str, agent_id: str) -> None:
        self.events += 1


async def graph_floors(stack: Stack, args: argparse.Namespace) -> list[Floor]:
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver

    from core.agent_config import AgentConfig
    from core.db import open_pool
    from core.settings import load_settings
    from orchestrator.checkpointer import StepSaver
    from orchestrator.context import AgentSpec, Budget, RunContext
    from orchestrator.graph import build_graph
    from skills import default_registry
    from skills.catalogue import RunSkills

    settings = load_settings(database={"url": stack.urls.database_url, "pool_min": 1, "pool_max": 2},
                             redis={"url": stack.urls.redis_url})
    pool = await open_pool(settings.database, name="floors-graph")
    checkpoints = await open_pool(settings.database, name="floors-checkpoints", autocommit=True, max_size=2)
    builtins = default_registry()
    agent = AgentSpec("agent_floors", "floors", 1, AgentConfig(model="offline:default",
                                                               instructions="You are a benchmark agent."))
    step_saver = StepSaver(checkpoints, skip_start=True)
    # Built one at a time: the in-memory saver's threads are dropped before the next variant, so
    # its garbage does not weigh on the StepSaver figure (the garbage collector walks it).
    graphs: list[tuple[str, Callable[[], Any]]] = [
        ("(d) run graph, no checkpointer", lambda: build_graph(None)),
        ("(d) run graph, InMemorySaver", lambda: build_graph(InMemorySaver())),
        ("(d) run graph, StepSaver (Postgres)", lambda: build_graph(step_saver))]
    meter = stack.meter()
    emitted: list[int] = []
    loop = asyncio.get_running_loop()

    def invoker(graph: Any) -> Callable[[], Awaitable[None]]:
        async def invoke() -> None:
            run_id = "run_" + secrets.token_hex(10)
            session_id = "session_" + secrets.token_hex(8)
            emitter = _Emitter()
            ctx = RunContext(
                org_id=ORG, session_id=session_id, run_id=run_id, agent=agent,
                budget=Budget(max_steps=20, max_tokens=100_000, deadline=loop.time() + 60),
                emitter=emitter, pool=pool, skills=RunSkills(builtins, pool, ORG, {}, {}, settings),  # type: ignore[arg-type]
                models=settings.models, workspace=stack.dir / "workspace", load_agent=_no_agent,
            )
            config = {"configurable": {"thread_id": f"{ORG}:{session_id}"}}
            result = await graph.ainvoke({"messages": [HumanMessage(args.input, id=f"input-{run_id}")], "plan": ""},
                                         config, context=ctx)
            await step_saver.flush_writes(f"{ORG}:{session_id}")
            if not result.get("answer"):
                raise RuntimeError("the graph gave no answer")
            emitted.append(emitter.events)

        return invoke

    out: list[Floor] = []
    try:
        for name, build in graphs:
            out.append(await timed(name, args.graph_runs, meter, invoker(build()), IN_PROCESS))
            gc.collect()
    finally:
        await checkpoints.close()
        await pool.close()
    if emitted:
        console.print(f"[dim]run graph: {sum(emitted) / len(emitted):.1f} events emitted per invoke[/dim]")
    return out


async def _no_agent(agent_id: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# The full run (bench/runs.py), optional


@dataclass
class FullRun:
    cpu_ms: float
    runs_s: float
    how: str
    by_process: dict[str, float] = field(default_factory=dict)  # CPU ms per run, bench/runs.py's names


def full_run(args: argparse.Namespace) -> FullRun:
    """CPU ms per run and runs/s at C=10 from bench/runs.py, run now, or the figures given."""
    if not args.with_runs:
        return FullRun(args.full_cpu_ms, args.full_runs_s, "given (--full-cpu-ms / --full-runs-s)")
    out = Path(tempfile.mkdtemp(prefix="agentos-floors-runs-")) / "runs.json"
    try:
        argv = [sys.executable, str(REPO / "bench" / "runs.py"), "--runs", "50", "--concurrent-runs", "200",
                "--json", str(out)]
        console.print(f"running {' '.join(argv[1:])} ...")
        subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        doc = json.loads(out.read_text())
        con = next(p for p in doc["phases"] if p["name"].startswith("concurrent"))
        per = {k: v * 1000 for k, v in con["extra"]["cpu_per_run"].items() if k != "other (not ours)"}
        return FullRun(sum(per.values()), float(con["runs_per_s"]),
                       "measured now (bench/runs.py --runs 50 --concurrent-runs 200)", per)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Output


def phase_table(title: str, phases: list[Phase]) -> None:
    table = Table(title=title)
    for col in ("phase", "runs", "errors", "runs/s", "POST p50", "first event p50", "p99", "terminal p50",
                "CPU ms/run by process", "total"):
        table.add_column(col, justify="left" if col in ("phase", "CPU ms/run by process") else "right")
    for p in phases:
        cpu = p.cpu
        table.add_row(p.name, str(len(p.samples)), str(p.errors), f"{p.rate:.1f}", ms(p.p("post_s", 50)),
                      ms(p.p("first_s", 50)), ms(p.p("first_s", 99)), ms(p.p("terminal_s", 50)),
                      cpu.fmt() if cpu else "-", f"{cpu.total * 1000:.2f}" if cpu else "-")
    console.print(table)


def floor_table(title: str, floors: list[Floor]) -> None:
    table = Table(title=title)
    for col in ("operation", "n", "wall p50 ms", "CPU ms per operation by process", "total CPU ms"):
        table.add_column(col, justify="left" if col in ("operation", "CPU ms per operation by process") else "right")
    for f in floors:
        table.add_row(f.name, str(f.ops), ms(f.wall_s), f.cpu.fmt(), f"{f.cpu.total * 1000:.3f}")
    console.print(table)


def ceiling(cpu_ms: float, cores: int) -> str:
    return f"{cores * 1000 / cpu_ms:.0f}" if cpu_ms > 0 else "-"


def summary(args: argparse.Namespace, proto: list[Phase], pair: list[Phase], pg: list[Floor], rd: list[Floor],
            graph: list[Floor]) -> None:
    cores = psutil.cpu_count() or 2
    by = {f.name: f for f in [*pg, *rd, *graph]}
    empty, insert = by["empty tenant tx (BEGIN, set_config, COMMIT)"], by["tenant tx with one INSERT (RLS table)"]
    tx, stmt = empty.cpu.total * 1000, by["trivial statement in a tx (SELECT 1)"].cpu.total * 1000
    write = max(insert.cpu.total * 1000 - tx, stmt)  # one INSERT inside a transaction
    today_inner = args.statements - 3 * args.transactions  # BEGIN, set_config, COMMIT are in `tx`
    pg_today = args.transactions * tx + today_inner * stmt
    pg_min = MIN_TRANSACTIONS * tx + MIN_WRITES * write
    events = by[RUN_EVENTS].cpu.total * 1000
    con, con1 = pair[1].cpu, pair[3].cpu
    pair_api = (con.per.get("api", 0.0) + con.per.get("redis", 0.0)) * 1000 if con else math.nan
    pair_all = con.total * 1000 if con else math.nan
    single_all = con1.total * 1000 if con1 else math.nan
    graph_mem = by["(d) run graph, InMemorySaver"].cpu.total * 1000
    graph_step = by["(d) run graph, StepSaver (Postgres)"].cpu.total * 1000
    full = full_run(args)
    full_cpu, full_rate, full_how = full.cpu_ms, full.runs_s, full.how
    celery = args.celery_ms
    worker = proto[-1].cpu.per.get("proto worker", math.nan) * 1000 if proto[-1].cpu else math.nan
    xadd = by["XADD (one event)"].cpu.total * 1000
    inferred = max(worker - 3 * xadd - insert.cpu.total * 1000, 0.0)
    rows: list[tuple[str, float, str]] = [
        (f"(a) HTTP pair through the API, C={args.concurrency}: API + Redis (rate check)", pair_api, ""),
        ("(a) the same + the bench client (bench/runs.py counts it)", pair_all, "summed"),
        ("(a') one request instead (the POST answers with the stream), the client included", single_all,
         "in the one-request sum"),
        (f"(b) Postgres at today's count ({args.statements:g} statements, {args.transactions:g} tx), priced at "
         "trivial statements", pg_today, f"{args.transactions:g} x {tx:.2f} + {today_inner:.1f} x {stmt:.2f}"),
        (f"(b) Postgres at the least with the guarantees: {MIN_TRANSACTIONS} tenant tx, {MIN_WRITES} writes in "
         "them (checkpoints: in d)", pg_min, f"{MIN_TRANSACTIONS} x {tx:.2f} + {MIN_WRITES} x {write:.2f}; summed"),
        (f"(c) Redis: {RUN_EVENTS}", events, "summed"),
        ("(d) run graph, InMemorySaver (LangGraph, our nodes, the offline model)", graph_mem, ""),
        ("(d) run graph, StepSaver: + its checkpoint read and 2 writes", graph_step, "summed"),
        ("(e) Celery per task: bench/celery_overhead.py", celery,
         "given (--celery-ms); summed" if not math.isnan(celery) else "not measured here"),
        ("(e') Celery's worker side, inferred: the prototype worker's CPU - its 3 XADDs and its tx", inferred,
         "an estimate, not a measurement; in the second sum"),
    ]
    table = Table(title=f"Floors per run (CPU ms, all processes involved) and the ceiling each implies on {cores} "
                        "cores")
    for col in ("component", "CPU ms/run", f"ceiling runs/s ({cores} cores)", "how"):
        table.add_column(col, justify="left" if col in ("component", "how") else "right")
    for name, value, how in rows:
        table.add_row(name, "-" if math.isnan(value) else f"{value:.2f}",
                      "-" if math.isnan(value) else ceiling(value, cores), how)
    floor = sum(v for v in (pair_all, pg_min, events, graph_step, celery) if not math.isnan(v))
    table.add_section()
    table.add_row("sum of the floors marked summed", f"{floor:.2f}", ceiling(floor, cores), "")
    floor1 = floor - pair_all + single_all
    table.add_row("the same with one request (a') for (a)", f"{floor1:.2f}", ceiling(floor1, cores), "")
    with_celery = floor + (inferred if math.isnan(celery) else 0.0)
    if math.isnan(celery):
        table.add_row("the same + (e') Celery's worker side, inferred", f"{with_celery:.2f}",
                      ceiling(with_celery, cores), "")
    proto_cpu = proto[-1].cpu.total * 1000 if proto[-1].cpu else math.nan
    table.add_row(f"prototype, C={args.concurrency} (measured above)", f"{proto_cpu:.2f}", ceiling(proto_cpu, cores),
                  f"measured {proto[-1].rate:.1f} runs/s")
    table.add_row("full run, bench/runs.py C=10", f"{full_cpu:.2f}", ceiling(full_cpu, cores),
                  f"{full_how}: {full_rate:.1f} runs/s")
    console.print(table)

    by_process_table(args, pair, insert, empty, by, inferred if math.isnan(celery) else celery, full)

    speed = args.speedup
    console.print(f"runs/s: >= 110 on {cores} cores needs <= {cores * 1000 / 110:.1f} ms CPU per run (the issue: "
                  f"<= 17). The floors sum to {with_celery:.1f} ms here with Celery (at most "
                  f"{ceiling(with_celery, cores)} runs/s); on a machine {speed:g}x faster, "
                  f"{with_celery / speed:.1f} ms ({ceiling(with_celery / speed, cores)} runs/s).")
    pair_first, insert_w = pair[0].p("first_s", 50) * 1000, insert.wall_s * 1000
    xread_w = by["XADD + XREAD of it (one event)"].wall_s * 1000
    first = pair_first + insert_w + xread_w
    console.print(f"first event p50 (sequential), at the least: the API pair's POST -> first event {pair_first:.1f} + "
                  f"the insert tx {insert_w:.1f} + XADD/XREAD {xread_w:.1f} = {first:.1f} ms (target <= 8; "
                  f"{first / speed:.1f} ms {speed:g}x faster). Not in it: the Celery send in the POST.")
    single_first = pair[2].p("first_s", 50) * 1000
    xadd_w = by["XADD (one event)"].wall_s * 1000
    console.print(f"first event p50 (sequential, one request), at the least: the API's POST -> first event "
                  f"{single_first:.1f} + the insert tx {insert_w:.1f} + the XADD {xadd_w:.1f} = "
                  f"{single_first + insert_w + xadd_w:.1f} ms (target <= 8).")
    hop = (proto[0].p("first_s", 50) - proto[0].p("post_s", 50)) * 1000
    graph_w = by["(d) run graph, StepSaver (Postgres)"].wall_s * 1000
    post = pair[0].p("post_s", 50) * 1000 + insert_w
    terminal = post + hop + 3 * insert_w + graph_w
    console.print(f"terminal p50 (sequential), at the least: the API pair's POST + the insert tx {post:.1f} + the "
                  f"prototype's first event after its 202 (Celery hop, XADD, XREAD, SSE; the GET meanwhile) {hop:.1f} "
                  f"+ claim, event batch and end, each a one-write tx, {3 * insert_w:.1f} + the graph with StepSaver "
                  f"{graph_w:.1f} = {terminal:.1f} ms (target <= 18; {terminal / speed:.1f} ms {speed:g}x faster)")


def by_process_table(args: argparse.Namespace, pair: list[Phase], insert: Floor, empty: Floor,
                     by: dict[str, Floor], celery: float, full: FullRun) -> None:
    """The summed floors laid out by the process that pays them in a real run, beside the full
    run's own split (with --with-runs): how far each process is above its floor."""
    client, pg_server = "client (this process)", "postgres"
    con = pair[1].cpu
    per = con.per if con else {}
    step = by["(d) run graph, StepSaver (Postgres)"].cpu.per
    events = by[RUN_EVENTS].cpu.per
    tx_c = insert.cpu.per.get(client, 0.0)  # a tenant tx with one write, client side
    write_c = max(tx_c - empty.cpu.per.get(client, 0.0), 0.0)
    tx_s = insert.cpu.per.get(pg_server, 0.0)
    write_s = max(tx_s - empty.cpu.per.get(pg_server, 0.0), 0.0)
    floors = {
        # the pair, and the POST's insert tx
        "api": (per.get("api", 0.0) + tx_c) * 1000,
        # the graph with its checkpoints, claim + event batch + end (a second write), the events' XADDs, Celery
        "worker": (step.get(client, 0.0) + 3 * tx_c + write_c + events.get(client, 0.0)) * 1000
        + (0.0 if math.isnan(celery) else celery),
        "postgres": (4 * tx_s + write_s + step.get(pg_server, 0.0)) * 1000,
        "redis": (per.get("redis", 0.0) + events.get("redis", 0.0)) * 1000,
        "bench client": per.get(client, 0.0) * 1000,
    }
    names = {"api": "api (uvicorn)", "worker": "worker (celery + children)", "postgres": "postgres (all backends)",
             "redis": "redis", "bench client": "bench client (this process)"}
    table = Table(title="The floors by the process that pays them in a run (CPU ms per run; worker: with Celery "
                        "as inferred or given)")
    table.add_column("")
    for name in floors:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    table.add_row("floors", *(f"{v:.2f}" for v in floors.values()), f"{sum(floors.values()):.2f}")
    if full.by_process:
        got = [full.by_process.get(names[n], math.nan) for n in floors]
        table.add_row("full run, bench/runs.py C=10", *(f"{v:.2f}" for v in got), f"{full.cpu_ms:.2f}")
        table.add_row("full run / floor", *(f"{g / f:.1f}x" if f > 0 else "-" for g, f in zip(got, floors.values(),
                                                                                              strict=True)),
                      f"{full.cpu_ms / sum(floors.values()):.1f}x")
    console.print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=100, help="sequential runs / request pairs (100)")
    p.add_argument("--concurrency", type=int, default=10, help="clients (10)")
    p.add_argument("--concurrent-runs", type=int, default=300, help="runs / pairs with C clients (300)")
    p.add_argument("--workers", type=int, default=2, help="the prototype's Celery slots (2, as bench/runs.py)")
    p.add_argument("--ops", type=int, default=1000, help="operations per Postgres / Redis floor (1000)")
    p.add_argument("--graph-runs", type=int, default=100, help="graph invocations per variant (100)")
    p.add_argument("--input", default="hello", help="the graph's input (hello)")
    p.add_argument("--api-log-level", default="INFO", help="the real API's log level (INFO: access log on, as "
                                                            "bench/runs.py)")
    p.add_argument("--statements", type=float, default=TODAY_STATEMENTS,
                   help=f"statements per run today (bench/runs.py --profile; {TODAY_STATEMENTS})")
    p.add_argument("--transactions", type=float, default=TODAY_TRANSACTIONS,
                   help=f"BEGIN..COMMIT transactions per run today ({TODAY_TRANSACTIONS})")
    p.add_argument("--with-runs", action="store_true", help="run bench/runs.py (shorter: 50 + 200 runs) at the end "
                                                            "for the full run's CPU and runs/s")
    p.add_argument("--full-cpu-ms", type=float, default=FULL_CPU_MS,
                   help=f"the full run's CPU ms per run at C=10 without --with-runs ({FULL_CPU_MS})")
    p.add_argument("--full-runs-s", type=float, default=FULL_RUNS_S, help=f"its runs/s ({FULL_RUNS_S})")
    p.add_argument("--celery-ms", type=float, default=math.nan,
                   help="Celery's CPU ms per task, from bench/celery_overhead.py, to add to the sum")
    p.add_argument("--speedup", type=float, default=2.0,
                   help="how much faster the machine the targets were set on was (2.0: 2026-11-23)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    return p.parse_args(argv)


async def amain(stack: Stack, args: argparse.Namespace) -> None:
    proto = await calibration(stack, args)
    phase_table("1. Machine calibration: the issue's prototype (Starlette -> Postgres -> Celery -> Redis Stream -> "
                "SSE), CPU ms per run", proto)
    pair = await http_floor(stack, args)
    phase_table("2a. A run's two requests (POST + SSE GET of 7 events) through the real API, nothing behind them; "
                "(a') the POST answering with the stream",
                pair)
    pg = await postgres_floors(stack, args)
    floor_table("2b. Postgres, in process (psycopg async pool as the application role, core.tenancy)", pg)
    rd = await redis_floors(stack, args)
    floor_table("2c. Redis, in process (redis.asyncio)", rd)
    graph = await graph_floors(stack, args)
    floor_table(f"2d. The run graph, in process, input {args.input!r}, offline model (events go nowhere)", graph)
    console.print("2e. Celery's per-task overhead: bench/celery_overhead.py (another bench; not measured here)")
    stack.stop_servers()  # before bench/runs.py, if it runs
    summary(args, proto, pair, pg, rd, graph)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    if load > 1.5:
        console.print(f"[yellow]load average {load:.1f} at the start: the machine is busy, figures are under "
                      "load[/yellow]")
    stack = Stack(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        stack.start()
        runner_factory: Any = None
        with contextlib.suppress(ImportError):
            import uvloop

            runner_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=runner_factory) as runner:
            runner.run(amain(stack, args))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping everything[/yellow]")
        return 130
    finally:
        stack.close()
        signal.signal(signal.SIGTERM, previous)
    console.print(f"machine: {machine_line()}; load average at the end {os.getloadavg()[0]:.1f}")
    console.print(f"total wall time {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
