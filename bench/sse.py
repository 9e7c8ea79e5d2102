"""Idle SSE streams benchmark: what N open, quiet event streams cost one API process.

    .venv/bin/python bench/sse.py [--streams N] [--sessions S] [--followers F] [--keepalive K] [--idle T]
                                  [--probes P] [--opening O] [--keys-per-read K] [--tracemalloc] [--keep]
    .venv/bin/python bench/sse.py --hub-only [--streams N] [--followers F] [--probes P] [--keys-per-read K]

Starts its own stack in a temp dir (embedded Postgres + Redis, non-durable), migrates, and runs one
`agentos api` (uvicorn) child process on 127.0.0.1 with `AGENTOS_EVENTS__KEEPALIVE_S=K`; no worker
(runs stay queued, which is all it needs). It raises its own RLIMIT_NOFILE (the API inherits it),
creates an org, an agent and S sessions (default: one per stream), then:

1. opens N `GET /v1/sessions/{id}/events` streams (default 2000; `--opening` (100) being opened
   at a time, each retried on a 503), with a small raw HTTP/1.1 client (one socket each, chunked
   decoding, no httpx per stream); what follows counts the streams that opened;
2. lets them idle for T seconds (default 20) and measures: the Redis connections the API holds
   (`CLIENT LIST`, by client name: the event hub's `agentos-events` and the rest), `INFO clients`,
   the API's RSS before and after opening (per idle stream), the API's CPU while idle, and the
   keep-alive comments each stream received while idle (gap between pings against K: p50 / p99 /
   max, and how many gaps exceeded K + 0.5 s);
3. starts P runs one after another, each in a session followed by a stream, while all N idle, and
   times POST sent -> `run.queued` at its follower, and the event's own `ts` -> received; with
   `--followers F`, F of the N streams follow one more session (the others: S sessions, default
   one each) and the P runs all start there, so each is timed at its F followers;
4. counts WARNING/ERROR lines and "Too many connections" in the API log.

`--hub-only` measures the event hub alone, in this process, without HTTP or an API: N followers
join one hub directly (N - F over N - F sessions, F on one more), and P probes each XADD one event
(`core.events.publish`) to a followed session, timed XADD sent -> each follower woken with it:
what the hub's reads add to every delivery, without the cost of 10,000 sockets on both sides.

`--tracemalloc` runs the API under `python -X tracemalloc=1 bench/sse_api.py` and, before the
streams open and after the idle, has it write a snapshot (SIGUSR2); it then prints the allocation
sites that grew most, per stream, and the live objects and asyncio tasks per stream by type. Its
RSS figure includes tracemalloc's own bookkeeping, and the snapshots stall the API (keep-alive gaps): take
those figures from a run without it.

Everything it starts is stopped at the end, also on Ctrl-C, SIGTERM or an error (`--keep` keeps the
temp dir with the API log). Figures for the record are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import math
import random
import re
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from agentos.stack.local import LocalStack, StackUrls  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from bench.runs import _child_env, _sigterm_as_interrupt, api_ready, create_org_and_agent, pct  # noqa: E402
from core import events  # noqa: E402
from core.db import open_pool  # noqa: E402
from core.event_hub import CLIENT_NAME, CONNECTIONS, EventHub, Follower  # noqa: E402
from core.migrations import migrate  # noqa: E402
from core.settings import DatabaseSettings  # noqa: E402

APP_ROLE = "agentos_app"
OPENING_AT_ONCE = 100
OPEN_ATTEMPTS = 5


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f}"


def raise_open_files(needed: int) -> int:
    """Lift the soft RLIMIT_NOFILE towards `needed` (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------------------------
# A minimal SSE client: one socket, HTTP/1.1, chunked transfer decoding.


@dataclass
class Stream:
    session_id: str
    pings: list[float] = field(default_factory=list)  # monotonic time of each comment line
    received: list[tuple[dict[str, Any], float, float]] = field(default_factory=list)  # (event, mono, wall)
    got_event: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


async def open_stream(host: str, port: int, key: str, stream: Stream) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"GET /v1/sessions/{stream.session_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n").encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"GET events: {status!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    if not chunked:
        raise RuntimeError("expected a chunked event stream")
    return reader, writer


async def consume(reader: asyncio.StreamReader, stream: Stream) -> None:
    """Read chunks, split lines, note pings and events, until the server closes or we cancel."""
    buffer = b""
    data: bytes | None = None
    try:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                stream.error = "ended by the server"
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            *lines, buffer = re.split(b"\r\n|\n", buffer)
            for line in lines:
                if line.startswith(b":"):
                    stream.pings.append(time.monotonic())
                elif line.startswith(b"data:"):
                    data = line[5:].strip()
                elif line == b"" and data is not None:
                    stream.received.append((orjson.loads(data), time.monotonic(), time.time()))
                    stream.got_event.set()
                    data = None
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        stream.error = repr(exc)


# ---------------------------------------------------------------------------------------------
# The stack


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="agentos-bench-sse-"))
        self.stack: LocalStack | None = None
        self.urls: StackUrls | None = None
        self.api: ServerProcess | None = None
        self.port = 0
        self.admin_token = "bench-admin-" + secrets.token_hex(8)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        t0 = time.perf_counter()
        self.stack = LocalStack(self.dir / "stack", database="agentos_bench", durable=False)
        self.urls = self.stack.start()
        migrate(self.urls.database_url, APP_ROLE)
        if self.args.hub_only:
            print(f"stack and migrations up in {time.perf_counter() - t0:.1f}s ({self.dir})")
            return
        self.port = free_port()
        env = _child_env(self.urls, self.admin_token, "INFO")
        env["AGENTOS_EVENTS__KEEPALIVE_S"] = str(self.args.keepalive)
        if self.args.keys_per_read:
            env["AGENTOS_EVENTS__KEYS_PER_READ"] = str(self.args.keys_per_read)
        argv = [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.args.tracemalloc:
            env["AGENTOS_BENCH_SNAPSHOT"] = str(self.dir / "snapshot")
            argv[1:3] = ["-X", "tracemalloc=1", str(REPO / "bench" / "sse_api.py")]
        self.api = ServerProcess("api", argv, self.dir / "api.log", stop_signal=signal.SIGTERM, env=env)
        self.api.start()
        self.api.wait_until(lambda: api_ready(self.api_url), timeout_s=60)
        print(f"stack, migrations and API up in {time.perf_counter() - t0:.1f}s ({self.dir})")

    def close(self) -> None:
        for stop in (self._stop_api, self._stop_stack):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                print(f"while stopping: {exc}")
        if self.args.keep:
            print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None

    def _stop_stack(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    def api_process(self) -> psutil.Process:
        assert self.api is not None and self.api.pid is not None
        return psutil.Process(self.api.pid)

    def api_log(self) -> str:
        return (self.dir / "api.log").read_text(errors="replace")

    async def snapshot(self, n: int) -> Path:
        """Has the API write snapshot `n` (bench/sse_api.py) and waits for it."""
        path = self.dir / f"snapshot.{n}.json"
        self.api_process().send_signal(signal.SIGUSR2)
        for _ in range(600):
            if path.exists():
                await asyncio.sleep(0.5)  # let the writes finish
                return self.dir / f"snapshot.{n}"
            await asyncio.sleep(0.1)
        raise RuntimeError("the API wrote no snapshot")


def _part(filename: str) -> str:
    """What an allocation site belongs to: a package, the standard library's asyncio, or ours."""
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0]
    if filename.startswith(str(REPO)):
        return filename[len(str(REPO)) + 1:].split("/")[0] + "/ (ours)"
    if "/asyncio/" in filename or filename.endswith("asyncio/runners.py"):
        return "asyncio (and C code called from the loop)"
    return "stdlib: " + Path(filename).name


def print_growth(before: Path, after: Path, streams: int) -> None:
    """Where the API's memory grew between two snapshots, per stream."""
    old, new = orjson.loads(Path(f"{before}.json").read_bytes()), orjson.loads(Path(f"{after}.json").read_bytes())
    print("  asyncio tasks per stream (by coroutine): " + ", ".join(
        f"{name} {(count - old['tasks'].get(name, 0)) / streams:.2f}"
        for name, count in sorted(new["tasks"].items(), key=lambda kv: -kv[1])
        if count - old["tasks"].get(name, 0) >= streams / 2))
    grown = sorted(((n - old["types"].get(t, 0), t) for t, n in new["types"].items()), reverse=True)
    print("  gc-tracked objects per stream (by type): " + ", ".join(
        f"{t} {n / streams:.2f}" for n, t in grown[:25] if n >= streams / 2))
    if not before.exists():
        return
    diff = tracemalloc.Snapshot.load(str(after)).compare_to(tracemalloc.Snapshot.load(str(before)), "lineno")
    total = sum(d.size_diff for d in diff)
    by_part: dict[str, int] = {}
    for d in diff:
        by_part[_part(d.traceback[0].filename)] = by_part.get(_part(d.traceback[0].filename), 0) + d.size_diff
    print("  traced Python allocations per stream by where they were made: " + ", ".join(
        f"{part} {size / streams / 1024:.1f} KiB" for part, size in sorted(by_part.items(), key=lambda kv: -kv[1])
        if abs(size) >= streams * 100))
    print(f"  traced Python allocations: {total / streams / 1024:.1f} KiB per stream; the sites that grew most:")
    for d in diff[:25]:
        frame = d.traceback[0]
        where = frame.filename.split("site-packages/")[-1].replace(str(REPO) + "/", "")
        print(f"    {d.size_diff / streams:8.0f} B/stream  {d.count_diff / streams:6.2f} blocks  "
              f"{where}:{frame.lineno}")


def redis_connections(url: str) -> tuple[int, int, int]:
    """(hub connections, other connections, INFO connected_clients), not counting this one."""
    client = redis.Redis.from_url(url)
    try:
        me = client.client_id()
        others = [c for c in client.client_list() if int(c["id"]) != me]
        hub = sum(1 for c in others if c.get("name") == CLIENT_NAME)
        connected = int(client.info("clients")["connected_clients"]) - 1
    finally:
        client.close()
    return hub, len(others) - hub, connected


# ---------------------------------------------------------------------------------------------
# The measurement


async def make_sessions(client: httpx.AsyncClient, headers: dict[str, str], agent_id: str, count: int) -> list[str]:
    sem = asyncio.Semaphore(8)

    async def one() -> str:
        async with sem:
            r = await client.post("/v1/sessions", json={"agent_id": agent_id}, headers=headers)
            r.raise_for_status()
            return str(r.json()["id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def amain(bench: Bench) -> None:
    args = bench.args
    assert bench.urls is not None
    _, key, agent_id = create_org_and_agent(bench.api_url, bench.admin_token, "sse bench",
                                            {"name": "idle", "model": "offline:default", "instructions": "-"})
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=bench.api_url, limits=limits, timeout=60) as http:
        t0 = time.perf_counter()
        own = args.streams - args.followers
        sessions = await make_sessions(http, headers, agent_id, (args.sessions or own) + (1 if args.followers else 0))
        print(f"{len(sessions)} sessions in {time.perf_counter() - t0:.1f}s")
        hot = sessions.pop() if args.followers else None
        proc = bench.api_process()
        before_snapshot = await bench.snapshot(0) if args.tracemalloc else None
        rss_before = proc.memory_info().rss
        streams = [Stream(sessions[i % len(sessions)]) for i in range(own)]
        streams += [Stream(hot) for _ in range(args.followers) if hot is not None]
        opening = asyncio.Semaphore(args.opening)
        writers: list[Any] = []
        tasks: list[asyncio.Task[None]] = []

        async def start(stream: Stream) -> None:
            async with opening:
                for attempt in range(OPEN_ATTEMPTS):  # a 503 (the API's pool busy opening the rest): again
                    try:
                        reader, writer = await open_stream("127.0.0.1", bench.port, key, stream)
                        break
                    except RuntimeError:
                        if attempt == OPEN_ATTEMPTS - 1:
                            raise
                        await asyncio.sleep(0.5 * (attempt + 1))
            writers.append(writer)
            tasks.append(asyncio.create_task(consume(reader, stream)))

        t0 = time.perf_counter()
        opened = await asyncio.gather(*(start(s) for s in streams), return_exceptions=True)
        failures = [o for o in opened if isinstance(o, BaseException)]
        open_s = time.perf_counter() - t0
        streams = [s for s, o in zip(streams, opened, strict=True) if not isinstance(o, BaseException)]
        print(f"{len(streams) - len(failures)} streams open in {open_s:.1f}s ({len(failures)} failed"
              + (f", first: {failures[0]!r}" if failures else "") + f"); idling {args.idle:g}s")
        try:
            cpu0, idle0 = sum(proc.cpu_times()[:2]), time.monotonic()
            await asyncio.sleep(args.idle)
            idle_cpu = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - idle0)
            rss_after = proc.memory_info().rss
            if before_snapshot is not None:
                print_growth(before_snapshot, await bench.snapshot(1), max(len(streams), 1))
            hub, other, connected = redis_connections(bench.urls.redis_url)
            # Gaps within the idle window only: while streams are being opened the API is busy.
            gaps = [b - a for s in streams for a, b in zip(s.pings, s.pings[1:], strict=False) if a >= idle0]
            late = sum(1 for g in gaps if g > args.keepalive + 0.5)
            first_ping_streams = sum(1 for s in streams if s.pings)
            alive = sum(1 for s in streams if s.error is None)
            print(f"idle: {alive} streams open; API RSS {(rss_after - rss_before) / max(alive, 1) / 1024:.1f} KiB "
                  "per open stream; "
                  f"keep-alive gaps p50 {pct(gaps, 50):.2f} p99 {pct(gaps, 99):.2f} "
                  f"max {max(gaps, default=math.nan):.2f} s, {late} of {len(gaps)} over setting + 0.5 s; "
                  f"CPU {idle_cpu * 100:.1f}%", flush=True)

            followed = sorted({s.session_id for s in streams})
            latencies: list[float] = []
            deliveries: list[float] = []
            by_session: dict[str, list[Stream]] = {}
            for s in streams:
                by_session.setdefault(s.session_id, []).append(s)
            probed = [hot] * args.probes if hot is not None else \
                random.Random(7).sample(followed, min(args.probes, len(followed)))
            missed = 0
            for session_id in probed:
                followers = by_session[session_id]
                for s in followers:
                    s.got_event.clear()
                sent = time.monotonic()
                r = await http.post(f"/v1/sessions/{session_id}/runs", json={"input": "hi"}, headers=headers)
                r.raise_for_status()
                try:
                    await asyncio.wait_for(asyncio.gather(*(s.got_event.wait() for s in followers)), 30)
                except TimeoutError:
                    missed += sum(1 for s in followers if not s.got_event.is_set())
                for s in followers:
                    if not s.got_event.is_set():
                        continue
                    event, mono, wall = s.received[-1]
                    latencies.append(mono - sent)
                    deliveries.append(wall - datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp())
            hub_after, other_after, _ = redis_connections(bench.urls.redis_url)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in writers:
                writer.close()
        broken = [s.error for s in streams if s.error]
    log = bench.api_log()
    warnings = len(re.findall(r"^(WARNING|ERROR|CRITICAL)\b", log, re.MULTILINE))
    too_many = log.count("Too many connections")

    n = args.streams
    print()
    print(f"idle SSE streams on one API process: {n} streams over {len(followed)} sessions"
          + (f" ({args.followers} of them following one session, where the probes run)" if args.followers else "")
          + f", keep-alive {args.keepalive:g}s, idle {args.idle:g}s")
    print(f"  open {n} streams ({args.opening} at a time): {open_s:.1f}s; failed: {len(failures)}; "
          f"broken while idle: {len(broken)}")
    print(f"  Redis connections of the API while idle: {hub + other} (event hub {hub}, bound {CONNECTIONS}; "
          f"other {other}); INFO connected_clients (all but this bench's): {connected}; "
          f"after the probes: hub {hub_after}, other {other_after}")
    print(f"  API RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB idle with {n} streams: "
          f"{(rss_after - rss_before) / max(alive, 1) / 1024:.1f} KiB per idle stream ({alive} "
          "open while idle)")
    print(f"  API CPU while idle: {idle_cpu * 100:.1f}% of one core")
    print(f"  keep-alives: {first_ping_streams}/{n} streams got at least one; gap between pings (s) "
          f"p50 {pct(gaps, 50):.2f} p99 {pct(gaps, 99):.2f} max {max(gaps, default=math.nan):.2f} "
          f"(setting {args.keepalive:g}; {late} of {len(gaps)} gaps over setting + 0.5 s)")
    print(f"  event published while {n} idle, {len(latencies)} deliveries: POST sent -> at follower ms "
          f"p50 {ms(pct(latencies, 50))} p99 {ms(pct(latencies, 99))} max {ms(max(latencies, default=math.nan))}; "
          f"event ts -> at follower ms p50 {ms(pct(deliveries, 50))} p99 {ms(pct(deliveries, 99))}; "
          f"not delivered within 30 s: {missed}")
    print(f"  API log: {warnings} WARNING/ERROR lines, {too_many} 'Too many connections'")


# ---------------------------------------------------------------------------------------------
# --hub-only: the event hub in this process, followers joined directly


async def hub_latency(bench: Bench) -> None:
    args = bench.args
    assert bench.urls is not None
    org_id = "org_bench"
    pool = await open_pool(DatabaseSettings(url=bench.urls.database_url, app_role=APP_ROLE, require_tls=False),
                           name="bench-hub")
    redis_pool = redis.asyncio.BlockingConnectionPool.from_url(
        bench.urls.redis_url, max_connections=CONNECTIONS, timeout=10, client_name=CLIENT_NAME)
    # keys_per_read where the hub has it (a hub from before the split reads every key at once).
    options = {"keys_per_read": args.keys_per_read} if args.keys_per_read and "keys_per_read" in \
        inspect.signature(EventHub.__init__).parameters else {}
    hub = EventHub(pool, redis.asyncio.Redis(connection_pool=redis_pool), block_s=4.0, check_s=4.0, **options)
    publisher = redis.asyncio.Redis.from_url(bench.urls.redis_url)
    own = [f"ses_bench{i:05d}" for i in range(args.streams - args.followers)]
    hot = "ses_benchhot"
    woken: list[float] = []
    expected = 0
    all_woken = asyncio.Event()

    async def follow(follower: Follower) -> None:
        while True:
            if not follower.pending:
                await follower.waiter()
                continue
            woken.append(time.perf_counter())
            follower.pending.clear()
            if len(woken) == expected:
                all_woken.set()

    async with hub:
        followers = [hub.join(org_id, s, 0) for s in own] + [hub.join(org_id, hot, 0) for _ in range(args.followers)]
        tasks = [asyncio.create_task(follow(f)) for f in followers]
        await asyncio.sleep(3)  # the reads restart with every key
        readers = getattr(hub, "readers", None)
        print(f"{len(followers)} followers of {len(own) + (1 if args.followers else 0)} sessions joined; reads: "
              + (f"{len(readers)} naming {min(readers)}-{max(readers)} keys" if readers else "one naming every key"))
        seqs: dict[str, int] = {}
        rng = random.Random(7)
        latencies: list[float] = []
        slowest: list[float] = []
        for _ in range(args.probes):
            session_id = hot if args.followers else rng.choice(own)
            seqs[session_id] = seq = seqs.get(session_id, 0) + 1
            event = events.Event(seq, events.RUN_WARNING, "run_bench", session_id, datetime.now(UTC),
                                 {"code": "BENCH", "message": "probe"})
            woken.clear()
            all_woken.clear()
            expected = args.followers or 1
            sent = time.perf_counter()
            await events.publish(publisher, org_id, [event], maxlen=100, ttl_s=600)
            await asyncio.wait_for(all_woken.wait(), 30)
            latencies += [t - sent for t in woken]
            slowest.append(max(woken) - sent)
            await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await publisher.aclose()
    await pool.close()
    where = f"{args.followers} followers of one session" if args.followers else "one follower each"
    print(f"event hub alone: {args.streams} followers over {len(own) + (1 if args.followers else 0)} sessions, "
          f"probes at {where}; {args.probes} probes, {len(latencies)} deliveries")
    print(f"  XADD sent -> follower woken ms p50 {ms(pct(latencies, 50))} p99 {ms(pct(latencies, 99))} "
          f"max {ms(max(latencies, default=math.nan))}; last follower of each probe p50 {ms(pct(slowest, 50))}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000, help="idle SSE streams to open (2000)")
    parser.add_argument("--sessions", type=int, default=0, help="sessions they follow (default: one per stream)")
    parser.add_argument("--opening", type=int, default=OPENING_AT_ONCE,
                        help=f"streams being opened at a time ({OPENING_AT_ONCE})")
    parser.add_argument("--followers", type=int, default=0,
                        help="streams (of --streams) that follow one more session, where the probes run (0)")
    parser.add_argument("--keepalive", type=float, default=2.0, help="AGENTOS_EVENTS__KEEPALIVE_S for the API (2)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds to idle before measuring (20)")
    parser.add_argument("--probes", type=int, default=20, help="runs started while idle, one at a time (20)")
    parser.add_argument("--keys-per-read", type=int, default=0,
                        help="AGENTOS_EVENTS__KEYS_PER_READ of the API (or the hub, with --hub-only)")
    parser.add_argument("--hub-only", action="store_true",
                        help="time XADD -> follower on an event hub in this process, without HTTP")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (API log)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace the API's allocations and print where an idle stream's memory goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 <= args.followers <= args.streams:
        print("--followers must be between 0 and --streams")
        return 2
    limit = raise_open_files(2 * args.streams + 2048)
    if limit < args.streams + 512:
        print(f"RLIMIT_NOFILE is {limit}: too low for {args.streams} streams; lower --streams")
        return 2
    bench = Bench(args)
    with _sigterm_as_interrupt():
        try:
            bench.start()
            asyncio.run(hub_latency(bench) if args.hub_only else amain(bench))
        except KeyboardInterrupt:
            print("interrupted; stopping everything")
            return 130
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
