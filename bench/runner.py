"""Runner round-trip benchmark: platform -> runner -> platform for a trivial call, on loopback.

    .venv/bin/python bench/runner.py [--calls N] [--warmup W]      # latency
    .venv/bin/python bench/runner.py --count [--calls N]           # round trips and fsyncs per call

Starts its own stack in a temp dir (embedded Postgres + Redis, non-durable), migrates, starts
`agentos api` and `agentos runner` (unsandboxed, `file_manager` only) as child processes on
127.0.0.1, creates an org, a runner and one run to hang the calls on, and stops everything at the
end. Each timed call is exactly what a worker does for a routed call: the `skills.remote` skill's
own code (resolve the runner, store the call in `runner_calls`, wake the API process holding the
runner's connection through Redis, wait for the result). Two trivial calls are measured, the tool's
own time well under a millisecond in both: `file_manager` listing a directory (a read-only call)
and `file_manager` writing a one-line file (a call that changes files, whose start the runner's
journal forces to disk before it runs; docs/runners.md, "Exactly once").

`--count` measures what a call costs instead of how long it takes, so it means the same on a busy
machine: it puts a turn-counting forwarder (bench/wire_turns.py) in front of Postgres and Redis,
one for the worker side (this process) and one for the API process, runs the runner under
`strace` to count its fsyncs, and prints the averages per call; the API's background work (its
heartbeats and catch-up reads, measured over an idle stretch first) is subtracted and shown apart.

Figures measured on a shared or busy machine are not final: run it alone on the target hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402

from agentos.stack.local import LocalStack, StackUrls  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from bench.wire_turns import TurnCounter, via  # noqa: E402
from core.agent_config import RunnerRoute  # noqa: E402
from core.ids import new_id  # noqa: E402
from core.infra import Infra  # noqa: E402
from core.migrations import migrate  # noqa: E402
from core.settings import load_settings  # noqa: E402
from skills.builtin.file_manager import file_manager  # noqa: E402
from skills.remote import remote  # noqa: E402
from skills.skill import SkillContext  # noqa: E402

APP_ROLE = "agentos_app"
CALLS: dict[str, dict[str, Any]] = {
    "read-only (file_manager list)": {"action": "list", "path": "."},
    "writing (file_manager write)": {"action": "write", "path": "bench.txt", "content": "one line\n"},
}


@dataclass(frozen=True)
class Target:
    org_id: str
    runner: str
    run_id: str
    session_id: str


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


async def calls(infra: Infra, target: Target, args: dict[str, Any], n: int,
                window: list[float] | None = None) -> list[float]:
    """`n` routed calls, one after another, through the worker's own code; each one's seconds."""
    skill = remote(file_manager, RunnerRoute(name=target.runner), call_timeout_s=30)
    out: list[float] = []
    if window is not None:
        window.append(time.time())
    for _ in range(n):
        ctx = SkillContext(org_id=target.org_id, session_id=target.session_id, run_id=target.run_id,
                           agent_id="bench", tool_call_id=new_id("tool_call"), workspace=Path("."), infra=infra)
        t0 = time.perf_counter()
        await skill.invoke(ctx, args)
        out.append(time.perf_counter() - t0)
    if window is not None:
        window.append(time.time())
    return out


Running = tuple[str, dict[str, str], Callable[[str], None], list[ServerProcess]]


@contextmanager
def running(workdir: Path, database_url: str, redis_url: str, runner_prefix: list[str]) -> Iterator[Running]:
    """The API and, once a runner exists, the runner: yields (API URL, owner headers, start_runner)."""
    admin = "bench-admin-" + secrets.token_hex(8)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")},
           "AGENTOS_DATABASE_URL": database_url, "AGENTOS_REDIS_URL": redis_url,
           "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": admin, "AGENTOS_ENV": "development", "AGENTOS_LOG_LEVEL": "warning"}
    processes: list[ServerProcess] = []
    try:
        api = ServerProcess("api", [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", "--port", str(port)],
                            workdir / "api.log", stop_signal=signal.SIGTERM, env=env)
        processes.append(api)
        api.start()
        api.wait_until(lambda: _answers(api_url), timeout_s=60)

        def start_runner(token: str) -> None:
            proc = ServerProcess("runner", [*runner_prefix, sys.executable, "-m", "agentos", "runner", "--api-url",
                                            api_url, "--state-dir", str(workdir / "runner"), "--skills",
                                            "file_manager", "--sandbox", "none", "--allow-unsandboxed"],
                                 workdir / "runner.log", stop_signal=signal.SIGTERM,
                                 env={**env, "AGENTOS_RUNNER_TOKEN": token}, group=bool(runner_prefix))
            processes.append(proc)
            proc.start()

        with httpx.Client(base_url=api_url, timeout=30) as http:
            made = http.post("/v1/orgs", json={"name": "bench"}, headers={"Authorization": f"Bearer {admin}"}).json()
        yield (api_url, {"Authorization": f"Bearer {made['api_key']['key']}", "X-Org": made["org"]["id"]}, start_runner,
               processes)
    finally:
        for process in reversed(processes):
            process.stop()


def prepare(api_url: str, owner: dict[str, str], start_runner: Callable[[str], None]) -> Target:
    org_id = owner.pop("X-Org")
    with httpx.Client(base_url=api_url, timeout=30, headers=owner) as http:
        runner = http.post("/v1/runners", json={"name": "bench"}).json()
        agent = http.post("/v1/agents", json={"name": "bench"}).json()
        session = http.post("/v1/sessions", json={"agent_id": agent["id"]}).json()
        run = http.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hold the calls"}).json()  # no worker
        start_runner(runner["token"])
        deadline = time.monotonic() + 60
        while not http.get(f"/v1/runners/{runner['id']}").json()["online"]:
            if time.monotonic() > deadline:
                raise SystemExit("the runner did not connect within 60 s")
            time.sleep(0.1)
    return Target(org_id, "bench", run["id"], session["id"])


def latency(urls: StackUrls, workdir: Path, n: int, warmup: int) -> None:
    with running(workdir, urls.database_url, urls.redis_url, []) as (api_url, owner, start_runner, processes):
        target = prepare(api_url, owner, start_runner)
        servers = {p.name: psutil.Process(p.pid) for p in processes if p.pid is not None}

        def cpu() -> dict[str, float]:
            """CPU seconds used so far by this process (the worker side), the API and the runner."""
            used = {name: sum(proc.cpu_times()[:2]) for name, proc in servers.items()}
            return {"worker": time.process_time(), **used}

        async def measure() -> dict[str, tuple[list[float], dict[str, float]]]:
            infra = await Infra.open(load_settings(database={"url": urls.database_url},
                                                   redis={"url": urls.redis_url}), name="bench-runner")
            out = {}
            try:
                for kind, args in CALLS.items():
                    await calls(infra, target, args, warmup)
                    before = cpu()
                    samples = await calls(infra, target, args, n)
                    out[kind] = samples, {k: v - before[k] for k, v in cpu().items()}
                return out
            finally:
                await infra.close()

        for kind, (samples, used) in asyncio.run(measure()).items():
            ms = [s * 1000 for s in samples]
            print(f"runner round trip, {kind}, {len(ms)} calls on loopback:")
            print(f"  p50 {pct(ms, 50):.2f} ms   p95 {pct(ms, 95):.2f} ms   p99 {pct(ms, 99):.2f} ms   "
                  f"max {max(ms):.2f} ms   mean {statistics.fmean(ms):.2f} ms")
            # CPU time does not grow with the machine's load the way waiting does: what the call
            # costs the three processes, a floor for its latency on an idle machine (plus I/O).
            print("  CPU per call: " + ", ".join(f"{name} {v * 1000 / n:.2f} ms" for name, v in used.items()) +
                  f" (total {sum(used.values()) * 1000 / n:.2f} ms, background work included)")
    print("  target (issue #19): p50 <= 10 ms. Figures from a shared or busy machine are not final.")


def count(urls: StackUrls, workdir: Path, n: int) -> None:
    strace = shutil.which("strace")
    trace = workdir / "runner.strace"
    prefix = [strace, "-f", "-ttt", "-e", "trace=fsync,fdatasync", "-o", str(trace)] if strace else []
    with ExitStack() as stack:
        pg_api, redis_api, pg_worker, redis_worker = (
            stack.enter_context(TurnCounter(port_of(u))) for u in
            (urls.database_url, urls.redis_url, urls.database_url, urls.redis_url))
        api_url, owner, start_runner, _ = stack.enter_context(
            running(workdir, via(urls.database_url, pg_api.port), via(urls.redis_url, redis_api.port), prefix))
        target = prepare(api_url, owner, start_runner)
        # The API's background work while idle (heartbeats, the stream's catch-up reads), per second.
        idle_s = 5.0
        before = pg_api.snapshot()[0], redis_api.snapshot()[0]
        time.sleep(idle_s)
        idle = (pg_api.snapshot()[0] - before[0]) / idle_s, (redis_api.snapshot()[0] - before[1]) / idle_s

        async def measure() -> list[tuple[str, list[float], list[int]]]:
            settings = load_settings(database={"url": via(urls.database_url, pg_worker.port)},
                                     redis={"url": via(urls.redis_url, redis_worker.port)})
            infra = await Infra.open(settings, name="bench-runner")
            rows = []
            try:
                for kind, args in CALLS.items():
                    await calls(infra, target, args, 5)  # warm: pools filled, statements prepared
                    counters = (pg_worker, redis_worker, pg_api, redis_api)
                    start = [c.snapshot()[0] for c in counters]
                    window: list[float] = []
                    await calls(infra, target, args, n, window)
                    rows.append((kind, window, [c.snapshot()[0] - s for c, s in zip(counters, start, strict=True)]))
            finally:
                await infra.close()
            return rows

        rows = asyncio.run(measure())
    fsyncs = _fsync_times(trace) if strace else None
    print(f"runner call costs, averages over {n} calls (turns = round trips the side waited for):")
    print(f"  API background while idle: {idle[0]:.2f} Postgres and {idle[1]:.2f} Redis turns per second "
          "(subtracted below)")
    for kind, window, turns in rows:
        seconds = window[1] - window[0]
        api_pg = (turns[2] - idle[0] * seconds) / n
        api_redis = (turns[3] - idle[1] * seconds) / n
        synced = "n/a (no strace)" if fsyncs is None else \
            f"{sum(1 for t in fsyncs if window[0] <= t <= window[1]) / n:.2f}"
        print(f"  {kind}: worker {turns[0] / n:.2f} Postgres + {turns[1] / n:.2f} Redis turns; "
              f"API {api_pg:.2f} Postgres + {api_redis:.2f} Redis turns; runner fsyncs {synced}")
    print("  (timings under --count include the forwarders' extra hops: use the latency mode for figures)")


def _fsync_times(trace: Path) -> list[float]:
    """When the runner called fsync/fdatasync (strace -ttt lines: `<pid> <epoch> fdatasync(…) = 0`)."""
    if not trace.exists():
        return []
    found = re.findall(r"^\d+\s+(\d+\.\d+) f(?:data)?sync\(", trace.read_text(), re.MULTILINE)
    return [float(t) for t in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--count", action="store_true", help="count round trips and fsyncs per call instead")
    args = parser.parse_args(argv)
    busy = psutil.cpu_percent(interval=0.5)
    if busy > 20 and not args.count:
        print(f"the CPUs are {busy:.0f}% busy before the start: figures will be noisy, not final")
    workdir = Path(tempfile.mkdtemp(prefix="agentos-bench-runner-"))
    stack = LocalStack(workdir / "stack", database="agentos_bench", durable=False)
    try:
        urls = stack.start()
        migrate(urls.database_url, APP_ROLE)
        if args.count:
            count(urls, workdir, args.calls)
        else:
            latency(urls, workdir, args.calls, args.warmup)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
