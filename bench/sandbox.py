"""Sandbox benchmark: start-to-result latency of a trivial snippet per backend, and executions/s.

    .venv/bin/python bench/sandbox.py [--runs N] [--clients C] [--concurrent-runs M] [--backends bwrap,gvisor]

Needs root and bubblewrap (runsc for gvisor; a missing backend is reported and skipped). Per
backend it starts `agentos sandbox` on a free 127.0.0.1 port as a child process (stopped at the
end), warms up, then measures, client-side over HTTP (POST /execute -> result):

- `print(1)` in Python, N times in a row: p50/p99;
- `:` in bash, N times: the sandbox's own cost without a Python interpreter starting;
- host Python start-up (`/usr/bin/python3 -c 'print(1)'` outside any sandbox), N times, so the
  sandbox's share of the Python figure can be read off (reported separately);
- C clients (threads) running `print(1)` until M executions are done: executions/s.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from agentos.stack.process import ServerProcess, free_port  # noqa: E402


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def start_service(backend: str, workdir: Path) -> tuple[ServerProcess, str, str]:
    port, token = free_port(), secrets.token_urlsafe(24)
    # A hosted backend's own settings (AGENTOS_SANDBOX__E2B__*, __MODAL__*) pass through.
    keep = ("AGENTOS_SANDBOX__E2B__", "AGENTOS_SANDBOX__MODAL__")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_") or k.startswith(keep)},
           "AGENTOS_SANDBOX__TOKEN": token, "AGENTOS_SANDBOX__BACKEND": backend,
           "AGENTOS_SANDBOX__PORT": str(port)}
    proc = ServerProcess(f"sandbox-{backend}", [sys.executable, "-m", "agentos", "sandbox"],
                         workdir / f"sandbox-{backend}.log", stop_signal=signal.SIGTERM, env=env, group=True)
    proc.start()
    proc.wait_until(lambda: "Uvicorn running on" in proc.log_tail(50), timeout_s=60)
    return proc, f"http://127.0.0.1:{port}", token


def timed(client: httpx.Client, language: str, code: str) -> float:
    started = time.perf_counter()
    response = client.post("/execute", json={"language": language, "code": code})
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    body = response.json()
    if body["exit_code"] != 0:
        raise RuntimeError(f"benchmark snippet failed: {body}")
    return elapsed


def host_python_ms(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-c", "print(1)"], check=True, capture_output=True, env={})
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> None:
    try:
        proc, url, token = start_service(backend, workdir)
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1]
        print(f"{backend:7} skipped: {last}")
        return
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for _ in range(5):
                timed(client, "python", "print(1)")
            python = [timed(client, "python", "print(1)") for _ in range(args.runs)]
            bash = [timed(client, "bash", ":") for _ in range(args.runs)]
        done = 0
        lock = threading.Lock()
        concurrent: list[float] = []

        def client_loop() -> None:
            nonlocal done
            with httpx.Client(base_url=url, headers=headers, timeout=60) as own:
                while True:
                    with lock:
                        if done >= args.concurrent_runs:
                            return
                        done += 1
                    sample = timed(own, "python", "print(1)")
                    with lock:
                        concurrent.append(sample)

        threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = len(concurrent) / (time.perf_counter() - started)
    finally:
        proc.stop()
    print(f"{backend:7} python print(1)  p50 {pct(python, 50):6.1f} ms  p99 {pct(python, 99):6.1f} ms  (n={args.runs})")
    print(f"{backend:7} bash :            p50 {pct(bash, 50):6.1f} ms  p99 {pct(bash, 99):6.1f} ms")
    print(f"{backend:7} {args.clients} clients print(1): {rate:6.1f} executions/s, p50 {pct(concurrent, 50):.1f} ms, "
          f"p99 {pct(concurrent, 99):.1f} ms (n={len(concurrent)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--concurrent-runs", type=int, default=200)
    parser.add_argument("--backends", default="bwrap,gvisor")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        sys.exit("needs root and bubblewrap (apt-get install -y bubblewrap)")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {when}")
    host = host_python_ms(args.runs)
    print(f"host    python start-up (no sandbox)  p50 {pct(host, 50):6.1f} ms  p99 {pct(host, 99):6.1f} ms")
    with tempfile.TemporaryDirectory(prefix="agentos-bench-sandbox-") as tmp:
        for backend in args.backends.split(","):
            if backend == "gvisor" and shutil.which("runsc") is None:
                print("gvisor  skipped: runsc is not installed")
                continue
            bench_backend(backend, args, Path(tmp))
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
