"""Workers and the watchdog as child processes of `agentos dev` (and of the test suite)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from agentos.stack.process import ServerProcess


def _env(database_url: str, redis_url: str, extra_env: dict[str, str] | None) -> dict[str, str]:
    env = {
        **os.environ,
        "AGENTOS_DATABASE_URL": database_url,
        "AGENTOS_REDIS_URL": redis_url,
        **(extra_env or {}),
    }
    env.pop("AGENTOS_DATABASE__URL", None)
    env.pop("AGENTOS_REDIS__URL", None)
    return env


def worker_process(
    log_path: Path, *, database_url: str, redis_url: str, workspace_root: Path, concurrency: int = 2,
    extra_env: dict[str, str] | None = None, health_file: Path | None = None, queues: list[str] | None = None,
) -> ServerProcess:
    """`agentos worker` against the given services; stopped with SIGTERM (warm shutdown) sent to
    its process group, so the prefork children go with it. `health_file`: where it writes its
    liveness heartbeat (see `worker_health`); `queues`: what it consumes (default: the runs)."""
    own = {"AGENTOS_WORKER__WORKSPACE_ROOT": str(workspace_root)}
    if health_file is not None:
        own["AGENTOS_WORKER__HEALTH_FILE"] = str(health_file)
    env = _env(database_url, redis_url, {**own, **(extra_env or {})})
    argv = [sys.executable, "-m", "agentos", "worker", f"--concurrency={concurrency}"]
    if queues:
        argv.append(f"--queues={','.join(queues)}")
    return ServerProcess("worker", argv, log_path, stop_signal=signal.SIGTERM, env=env, group=True)


def watchdog_process(
    log_path: Path, *, database_url: str, redis_url: str, extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """`agentos watchdog` against the given services; it logs "watchdog ready." once it loops and
    stops at SIGTERM after its current pass."""
    argv = [sys.executable, "-m", "agentos", "watchdog"]
    return ServerProcess("watchdog", argv, log_path, stop_signal=signal.SIGTERM,
                         env=_env(database_url, redis_url, extra_env), group=True)


def api_process(
    log_path: Path, *, database_url: str, redis_url: str, port: int, extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """`agentos api` on 127.0.0.1:`port` (for tests and benches that need several API
    processes); it logs "AgentOS API ready" once it serves. Stopped with SIGTERM to the process
    alone, as an orchestrator stops it: it ends its SSE streams with a farewell and exits 0."""
    argv = [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", f"--port={port}"]
    return ServerProcess("api", argv, log_path, stop_signal=signal.SIGTERM,
                         env=_env(database_url, redis_url, extra_env))


def sandbox_process(log_path: Path, *, port: int, token: str) -> ServerProcess:
    """`agentos sandbox` on 127.0.0.1:`port`; it logs "Uvicorn running on" once it serves. It
    gets no database or Redis address: it has no use for them and must not hold them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    env |= {"AGENTOS_SANDBOX__TOKEN": token, "AGENTOS_SANDBOX__HOST": "127.0.0.1", "AGENTOS_SANDBOX__PORT": str(port)}
    argv = [sys.executable, "-m", "agentos", "sandbox"]
    return ServerProcess("sandbox", argv, log_path, stop_signal=signal.SIGTERM, env=env, group=True)


def worker_health(health_file: Path, redis_url: str) -> Callable[[int], str | None]:
    """A supervisor health check for the worker writing `health_file`: None while its consumer
    proves it consumes (or cannot be judged), else why it should be restarted."""

    def judge(pid: int) -> str | None:
        from runtime.liveness import check  # loads Celery only when a worker is supervised

        verdict = check(health_file, redis_url, pid=pid)
        return None if verdict.healthy else verdict.reason

    return judge
