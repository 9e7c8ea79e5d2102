"""Horizontal scale on one machine: two API processes and several workers on one Postgres and
Redis, clients moved between the APIs mid-stream, and a rolling restart of every worker and
both APIs under load.

    .venv/bin/python bench/scale.py [--workers 3] [--runs-per-step 24] [--clients 6] [--rolling-runs 36]

Starts its own stack in a temp dir (embedded Postgres + Redis, non-durable), two `agentos api`
processes, a watchdog and up to W `agentos worker --concurrency 1`. Two parts:

1. **Throughput per added worker.** With 1, 2, … W workers, N runs (`wait: 0.5`, so a run holds
   its worker about half a second) are sent alternately to both APIs at once; runs/s from the
   first POST to the last terminal event.
2. **Rolling restart under load.** C clients keep starting runs (a script with two tool calls and
   short waits) on alternate APIs and follow each run's SSE stream; halfway through every stream
   a client disconnects and resumes on the *other* API with `Last-Event-ID`. Meanwhile every
   worker is stopped with SIGTERM (to its main process, as an orchestrator does; grace 2 s, so
   runs still going are released to other workers) and replaced, one after the other, then each
   API likewise; a client whose API goes away resumes on the other one. The clients keep going
   until the last restart is done (and at least R runs were made). At the end every run
   must be terminal (`succeeded`), and each run's events, gathered over all its connections,
   must be consecutive with exactly one terminal event (no gap, no repeat).

Prints the figures and exits 1 if a run was lost or a stream had a gap. The machine is shared:
figures vary between runs; the zeros are what matters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402

from agentos.stack.local import LocalStack, StackUrls  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from agentos.stack.worker import api_process, watchdog_process, worker_process  # noqa: E402
from bench.runs import APP_ROLE, TERMINAL, _child_env, create_org_and_agent, machine  # noqa: E402
from core.migrations import migrate  # noqa: E402

ENV = {
    "AGENTOS_LOG_LEVEL": "INFO",  # Celery logs " ready." at INFO
    "AGENTOS_WORKER__LEASE_S": "3",
    "AGENTOS_WORKER__HEARTBEAT_S": "0.5",
    "AGENTOS_WORKER__WATCHDOG_INTERVAL_S": "1",
    "AGENTOS_WORKER__REQUEUE_AFTER_S": "5",
    "AGENTOS_WORKER__SHUTDOWN_GRACE_S": "2",
}
ROLLING_SCRIPT = ('call: file_manager {"action": "write", "path": "f.txt", "content": "x"}\nwait: 1\n'
                  'call: file_manager {"action": "list"}\nwait: 1')


def spawn(proc: ServerProcess) -> ServerProcess:
    """Start without a preexec_fn (safe while other threads run; see bench/chaos.py), dying with us."""
    setpriv = shutil.which("setpriv")
    argv = [setpriv, "--pdeathsig", "TERM", *proc.argv] if setpriv else proc.argv
    with open(proc.log_path, "ab") as log:
        proc.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=proc.env)
    return proc


def sigterm_and_wait(proc: ServerProcess, timeout_s: float = 60) -> int:
    """SIGTERM to the process alone (its children are not signalled), as tini or ECS do."""
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    try:
        return proc.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.stop()
        return -1


def wait_api_ready(api: ServerProcess) -> None:
    def ready() -> bool:
        return "AgentOS API ready" in api.log_tail(50)

    api.wait_until(ready, timeout_s=90)


class Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentos-scale-"))
        self.stack = LocalStack(self.dir / "stack", database="agentos_scale", durable=False)
        self.urls: StackUrls | None = None
        self.admin = "scale-admin-" + secrets.token_hex(8)
        self.apis: list[ServerProcess] = []
        self.ports: list[int] = []
        self.workers: list[ServerProcess] = []
        self.watchdog: ServerProcess | None = None
        self.counter = itertools.count(1)
        self.key = ""
        self.agent_id = ""

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> None:
        self.urls = self.stack.start()
        migrate(self.urls.database_url, APP_ROLE)
        self.ports = [free_port(), free_port()]
        self.apis = [self.new_api(i) for i in range(2)]
        self.watchdog = spawn(watchdog_process(self.dir / "watchdog.log", database_url=self.urls.database_url,
                                               redis_url=self.urls.redis_url, extra_env=ENV))
        for api in self.apis:
            wait_api_ready(api)
        _, self.key, self.agent_id = create_org_and_agent(self.api_urls[0], self.admin, "scale", {
            "name": "scale", "model": "offline:default", "instructions": "Benchmark.", "skills": ["file_manager"],
            "confirm": "none"})

    def new_api(self, i: int) -> ServerProcess:
        assert self.urls is not None
        env = _child_env(self.urls, self.admin, "INFO")
        proc = api_process(self.dir / f"api-{i}.log", database_url=self.urls.database_url,
                           redis_url=self.urls.redis_url, port=self.ports[i], extra_env={
                               k: v for k, v in env.items() if k.startswith("AGENTOS_") and "URL" not in k})
        return spawn(proc)

    def new_worker(self) -> ServerProcess:
        assert self.urls is not None
        n = next(self.counter)
        proc = worker_process(self.dir / f"worker-{n}.log", database_url=self.urls.database_url,
                              redis_url=self.urls.redis_url, workspace_root=self.dir / "workspaces", concurrency=1,
                              extra_env=ENV, health_file=self.dir / f"worker-{n}.health.json")
        spawn(proc)
        proc.wait_until(lambda: " ready." in proc.log_tail(300), timeout_s=120)
        return proc

    def scale_to(self, count: int) -> None:
        while len(self.workers) < count:
            self.workers.append(self.new_worker())

    def released(self) -> int:
        return sum(p.read_text(errors="replace").count("released at shutdown") for p in self.dir.glob("worker-*.log"))

    def close(self) -> None:
        for proc in [*self.workers, *self.apis, self.watchdog]:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        with contextlib.suppress(Exception):
            self.stack.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Followed:
    run_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    moved: int = 0


async def follow(client: httpx.AsyncClient, urls: list[str], start: int, headers: dict[str, str], run_id: str,
                 move_after: int | None) -> Followed:
    """Read a run's stream to its terminal event; after `move_after` events leave and resume on
    the other API with Last-Event-ID; resume there too whenever an API goes away."""
    got = Followed(run_id)
    which = start
    while True:
        base = urls[which % len(urls)]
        extra = {"Last-Event-ID": str(got.events[-1]["seq"])} if got.events else {}
        got.connections += 1
        moved = False
        try:
            async with client.stream("GET", f"{base}/v1/runs/{run_id}/events", headers=headers | extra) as resp:
                if resp.status_code != 200:
                    raise httpx.TransportError(f"{resp.status_code}")
                fields: dict[str, str] = {}
                async for line in resp.aiter_lines():
                    if line == "":
                        if "data" in fields:
                            event = orjson.loads(fields["data"])
                            got.events.append(event)
                            if event["type"] in TERMINAL:
                                return got
                            if move_after is not None and len(got.events) == move_after:
                                moved = True
                                break
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
        except (httpx.TransportError, httpx.RemoteProtocolError):
            await asyncio.sleep(0.2)
        if moved:
            got.moved += 1
            move_after = None
        which += 1  # the other API: moved on purpose, or this one went away


async def start_run(client: httpx.AsyncClient, cluster: Cluster, api: int, text: str) -> tuple[str, int]:
    headers = {"Authorization": f"Bearer {cluster.key}"}
    for attempt in range(60):
        base = cluster.api_urls[(api + attempt) % 2]
        try:
            r = await client.post(f"{base}/v1/sessions", json={"agent_id": cluster.agent_id}, headers=headers)
            r.raise_for_status()
            r = await client.post(f"{base}/v1/sessions/{r.json()['id']}/runs", json={"input": text}, headers=headers)
            r.raise_for_status()
            return str(r.json()["id"]), (api + attempt) % 2
        except (httpx.TransportError, httpx.HTTPStatusError):
            await asyncio.sleep(0.25)
    raise RuntimeError("no API accepted the run")


async def throughput(cluster: Cluster, runs: int) -> float:
    headers = {"Authorization": f"Bearer {cluster.key}"}
    async with httpx.AsyncClient(timeout=120) as client:
        t0 = time.perf_counter()
        started = await asyncio.gather(*(start_run(client, cluster, i % 2, "wait: 0.5") for i in range(runs)))
        await asyncio.gather(*(follow(client, cluster.api_urls, api, headers, run_id, None)
                               for run_id, api in started))
        return runs / (time.perf_counter() - t0)


@dataclass
class Rolling:
    runs: list[Followed] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def rolling_restart(cluster: Cluster, clients: int, total: int) -> Rolling:
    headers = {"Authorization": f"Bearer {cluster.key}"}
    out = Rolling()
    finished = asyncio.Event()  # the restarts are done

    async def client_loop(client: httpx.AsyncClient, n: int) -> None:
        # Load throughout the restarts, and at least `total` runs.
        while not finished.is_set() or len(out.runs) < total:
            run_id, api = await start_run(client, cluster, n, ROLLING_SCRIPT)
            out.runs.append(await follow(client, cluster.api_urls, api, headers, run_id, move_after=4))
            n += 1

    async def restarter() -> None:
        await asyncio.sleep(3)
        for i in range(len(cluster.workers)):
            old = cluster.workers[i]
            code = await asyncio.to_thread(sigterm_and_wait, old)
            cluster.workers[i] = await asyncio.to_thread(cluster.new_worker)
            out.restarts.append(f"worker {i + 1}: exit {code}")
        for i in range(2):
            code = await asyncio.to_thread(sigterm_and_wait, cluster.apis[i])
            cluster.apis[i] = cluster.new_api(i)
            await asyncio.to_thread(wait_api_ready, cluster.apis[i])
            out.restarts.append(f"api {i + 1}: exit {code}")
        finished.set()

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=180, limits=httpx.Limits(max_connections=clients * 4)) as client:
        await asyncio.gather(restarter(), *(client_loop(client, n) for n in range(clients)))
        out.seconds = time.perf_counter() - t0
        for run in out.runs:
            r = await client.get(f"{cluster.api_urls[0]}/v1/runs/{run.run_id}", headers=headers)
            out.statuses[run.run_id] = str(r.json()["status"])
    return out


def gaps(run: Followed) -> list[str]:
    seqs = [e["seq"] for e in run.events]
    problems = []
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        problems.append(f"run {run.run_id}: seqs {seqs}")
    terminals = [e for e in run.events if e["type"] in TERMINAL]
    if len(terminals) != 1 or run.events[-1] not in terminals:
        problems.append(f"run {run.run_id}: {len(terminals)} terminal events")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--runs-per-step", type=int, default=24)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--rolling-runs", type=int, default=36)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    cluster = Cluster()
    try:
        cluster.start()
        rates = []
        for count in range(1, args.workers + 1):
            cluster.scale_to(count)
            rates.append(asyncio.run(throughput(cluster, args.runs_per_step)))
            gain = f" (+{rates[-1] - rates[-2]:.2f} for the added worker)" if len(rates) > 1 else ""
            print(f"{count} worker(s), 2 APIs: {rates[-1]:.2f} runs/s{gain}")
        rolling = asyncio.run(rolling_restart(cluster, args.clients, args.rolling_runs))
    finally:
        released = cluster.released()
        cluster.close()
    lost = [r for r, s in rolling.statuses.items() if s != "succeeded"]
    problems = [p for run in rolling.runs for p in gaps(run)]
    moves = sum(r.moved for r in rolling.runs)
    reconnects = sum(r.connections - 1 for r in rolling.runs)
    print(f"rolling restart under load: {len(rolling.runs)} runs in {rolling.seconds:.1f} s; "
          f"restarts: {', '.join(rolling.restarts)}")
    print(f"  streams moved between APIs mid-run: {moves}; resumed after their API stopped: {reconnects - moves}; "
          f"runs released by a stopping worker: {released}")
    print(f"  lost or not succeeded: {len(lost)}; streams with a gap or repeat: {len(problems)}")
    for problem in problems[:10]:
        print(f"    {problem}")
    return 1 if lost or problems else 0


if __name__ == "__main__":
    sys.exit(main())
