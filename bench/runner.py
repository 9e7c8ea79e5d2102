"""Runner round-trip benchmark: platform -> runner -> platform for a trivial call, on loopback.

    .venv/bin/python bench/runner.py [--calls N] [--warmup W]

Starts its own stack in a temp dir (embedded Postgres + Redis, non-durable), migrates, starts
`agentos api` and `agentos runner` (unsandboxed, `file_manager` only) as child processes on
127.0.0.1, creates an org, a runner and one run to hang the calls on, and stops everything at the
end. Each timed call is what a worker does for a routed call (`skills.remote`): store it in
`runner_calls`, wake the API process holding the runner's connection through Redis, and wait for
the stored result. The tool is `file_manager` listing an empty directory (well under a
millisecond), so the figure is the link's own cost: Postgres write, Redis wake-up, SSE delivery,
the runner's journal writes (two fsyncs), the result POST, and the worker's wake-up and read.

Figures measured on a shared or busy machine are not final: run it alone on the target hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402

from agentos.stack.local import LocalStack  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from core import runner_link  # noqa: E402
from core.ids import new_id  # noqa: E402
from core.infra import Infra  # noqa: E402
from core.migrations import migrate  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.store import runners  # noqa: E402
from core.tenancy import tenant_tx  # noqa: E402

APP_ROLE = "agentos_app"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def round_trips(database_url: str, redis_url: str, org_id: str, runner_id: str, run_id: str,
                      session_id: str, calls: int) -> list[float]:
    settings = load_settings(database={"url": database_url}, redis={"url": redis_url})
    infra = await Infra.open(settings, name="bench-runner")
    out: list[float] = []
    try:
        for _ in range(calls):
            call_id = new_id("tool_call")
            t0 = time.perf_counter()
            async with tenant_tx(infra.pool, org_id) as conn:
                row = await runners.put_call(conn, call_id, runner_id=runner_id, run_id=run_id, session_id=session_id,
                                             name="file_manager", args={"action": "list", "path": "."},
                                             status="queued")
            await runner_link.announce_call(infra.redis, org_id, runner_id, call_id)
            while row["status"] != "done":
                await runner_link.wait_for_result(infra.redis, org_id, call_id, runner_link.BLOCK_S)
                async with tenant_tx(infra.pool, org_id) as conn:
                    found = await runners.get_call(conn, call_id)
                assert found is not None
                row = found
            out.append(time.perf_counter() - t0)
            if row["error"] is not None:
                raise SystemExit(f"the call failed on the runner: {row['error']}")
    finally:
        await infra.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    busy = psutil.cpu_percent(interval=0.5)
    if busy > 20:
        print(f"the CPUs are {busy:.0f}% busy before the start: figures will be noisy, not final")
    workdir = Path(tempfile.mkdtemp(prefix="agentos-bench-runner-"))
    admin = "bench-admin-" + secrets.token_hex(8)
    stack = LocalStack(workdir / "stack", database="agentos_bench", durable=False)
    processes: list[ServerProcess] = []
    try:
        urls = stack.start()
        migrate(urls.database_url, APP_ROLE)
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")},
               "AGENTOS_DATABASE_URL": urls.database_url, "AGENTOS_REDIS_URL": urls.redis_url,
               "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": admin, "AGENTOS_ENV": "development",
               "AGENTOS_LOG_LEVEL": "warning"}
        api = ServerProcess("api", [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", "--port", str(port)],
                            workdir / "api.log", stop_signal=signal.SIGTERM, env=env)
        processes.append(api)
        api.start()
        api.wait_until(lambda: _answers(api_url), timeout_s=60)
        with httpx.Client(base_url=api_url, timeout=30) as http:
            made = http.post("/v1/orgs", json={"name": "bench"}, headers={"Authorization": f"Bearer {admin}"}).json()
            org_id, key = made["org"]["id"], made["api_key"]["key"]
            owner = {"Authorization": f"Bearer {key}"}
            runner = http.post("/v1/runners", json={"name": "bench"}, headers=owner).json()
            agent = http.post("/v1/agents", json={"name": "bench"}, headers=owner).json()
            session = http.post("/v1/sessions", json={"agent_id": agent["id"]}, headers=owner).json()
            run = http.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hold the calls"},
                            headers=owner).json()  # no worker: it stays queued
        runner_env = {**env, "AGENTOS_RUNNER_TOKEN": runner["token"]}
        proc = ServerProcess("runner", [sys.executable, "-m", "agentos", "runner", "--api-url", api_url,
                                        "--state-dir", str(workdir / "runner"), "--skills", "file_manager",
                                        "--sandbox", "none", "--allow-unsandboxed"],
                             workdir / "runner.log", stop_signal=signal.SIGTERM, env=runner_env)
        processes.append(proc)
        proc.start()
        with httpx.Client(base_url=api_url, timeout=30) as http:
            proc.wait_until(lambda: bool(http.get(f"/v1/runners/{runner['id']}", headers=owner).json()["online"]),
                            timeout_s=60)
        samples = asyncio.run(round_trips(urls.database_url, urls.redis_url, org_id, runner["id"], run["id"],
                                          session["id"], args.warmup + args.calls))[args.warmup:]
        ms = [s * 1000 for s in samples]
        print(f"runner round trip, {len(ms)} calls on loopback (file_manager list; excludes nothing else):")
        print(f"  p50 {pct(ms, 50):.2f} ms   p95 {pct(ms, 95):.2f} ms   p99 {pct(ms, 99):.2f} ms   "
              f"max {max(ms):.2f} ms   mean {statistics.fmean(ms):.2f} ms")
        print("  target (issue #19): p50 <= 10 ms. Figures from a shared or busy machine are not final.")
    finally:
        for process in reversed(processes):
            process.stop()
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
