"""Celery's own cost per task: the worker of `runtime.celery_app` executing a no-op task.

    .venv/bin/python bench/celery_overhead.py [--variants prefork:INFO,prefork:WARNING,threads:INFO]
        [--tasks N] [--burst M] [--concurrency W] [--repeats R] [--monitor]

Starts an embedded Redis (non-durable) in a temp dir and, per variant, a worker made exactly as
`agentos worker` makes it (`create_celery(settings)`, the same `worker_argv`, the same log
set-up: JSON lines to stderr, here a file) plus one task, `agentos.bench_noop`, whose body only
LPUSHes the task's number to a reply list that this script BRPOPs. The sender is a Celery app
with `core.jobs.celery_config` (what the API's `JobQueue` uses). Postgres is not involved: the
figures are Celery's (and kombu's, and the liveness probe's) share of a run, nothing else.

A variant is `pool:LOGLEVEL[:knob=value[;knob=value]]`, knobs being Celery settings given to the
worker's and the sender's `app.conf` (JSON values, e.g. `prefork:INFO:worker_disable_rate_limits=true`;
`broker_transport=null` is kombu's own Redis transport, as before `core/redis_transport.py`), or
`task_logs=true`: Celery's two INFO lines per task, as before `runtime.celery_app` quieted them.
Variants run in turns, `--repeats` times (the machine is shared: the report is the median of the
repeats). Per variant and repeat:

1. sequential: `--tasks` round trips (send, BRPOP the reply): latency p50/p99;
2. burst: `--burst` tasks sent at once, then all replies awaited: tasks/s at W slots;
3. CPU ms per task of the worker's process tree (parent + pool children, from /proc via psutil)
   over both phases, and of the sender (`send_task` only, thread CPU time);
4. Redis commands per task over the sequential phase (INFO commandstats delta, minus the idle
   rate measured just before over the same time, minus the bench's own LPUSH + BRPOP): exact up
   to the liveness probe's background traffic, which the idle baseline removes.

`--monitor` also prints the commands Redis saw for 3 sequential tasks (MONITOR), one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import redis  # noqa: E402

from agentos.stack.process import _die_with_parent  # noqa: E402
from agentos.stack.redis import EmbeddedRedis  # noqa: E402

NOOP = "agentos.bench_noop"
REPLIES = "bench:celery:replies"
BENCH_COMMANDS = Counter({"lpush": 1, "brpop": 1})  # the noop's reply and our wait for it


# ---------------------------------------------------------------------------------------------
# The worker side (`--serve-worker`): run in a child process.


def serve_worker(redis_url: str, pool: str, loglevel: str, concurrency: int, knobs: dict[str, Any],
                 health_file: str) -> None:
    from celery import Celery
    from celery.signals import worker_init

    from core.settings import load_settings
    from core.telemetry.logs import configure as configure_logs
    from runtime.celery_app import TASK_LOGGERS, AgentTask, create_celery, worker_argv

    settings = load_settings(redis={"url": redis_url}, worker={"health_file": health_file})
    configure_logs("worker", loglevel, "json")  # what `agentos worker` does (`_logs`)
    app: Celery = create_celery(settings)
    if knobs.pop("task_logs", False):  # Celery's two INFO lines per task, as before they were quieted

        def loud(**_: Any) -> None:
            for name in TASK_LOGGERS:
                logging.getLogger(name).setLevel(logging.NOTSET)

        worker_init.connect(loud, weak=False)  # after create_celery's own handler
    app.conf.update(knobs)
    replies: list[redis.Redis] = []  # one client per process, made on its first task (after the fork)

    @app.task(name=NOOP, base=AgentTask, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def noop(task: AgentTask, n: int) -> None:
        if not replies:
            replies.append(redis.Redis.from_url(redis_url))
        replies[0].lpush(REPLIES, n)

    app.worker_main(worker_argv(settings, concurrency=concurrency, pool=pool, loglevel=loglevel))


# ---------------------------------------------------------------------------------------------
# The bench side.


@dataclass
class Variant:
    pool: str
    loglevel: str
    knobs: dict[str, Any]
    spec: str

    @classmethod
    def parse(cls, spec: str) -> Variant:
        parts = spec.split(":", 2)
        pool, loglevel = parts[0], parts[1] if len(parts) > 1 else "INFO"
        knobs: dict[str, Any] = {}
        for item in (parts[2].split(";") if len(parts) > 2 else []):
            if item:
                key, _, value = item.partition("=")
                knobs[key] = json.loads(value)
        return cls(pool, loglevel.upper(), knobs, spec)


@dataclass
class Result:
    p50_ms: float
    p99_ms: float
    tasks_per_s: float
    worker_cpu_ms: float
    sender_cpu_ms: float
    commands: float
    by_command: Counter[str]


def tree_cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def commandstats(r: redis.Redis) -> Counter[str]:
    stats = r.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


class Bench:
    def __init__(self, redis_url: str, workdir: Path, concurrency: int) -> None:
        from core import jobs

        self.redis_url = redis_url
        self.workdir = workdir
        self.concurrency = concurrency
        self.r = redis.Redis.from_url(redis_url, socket_timeout=None)
        self.sender: Any = None
        self.queue = jobs.RUNS_QUEUE

    def use_sender(self, variant: Variant) -> None:
        """The API's sender (`core.jobs.celery_config`) with the variant's Celery knobs."""
        from celery import Celery

        from core import jobs
        from core.settings import load_settings

        if self.sender is not None:
            self.sender.close()
        self.sender = Celery("agentos-sender", set_as_current=False)
        self.sender.conf.update(jobs.celery_config(load_settings(redis={"url": self.redis_url})))
        self.sender.conf.update({k: v for k, v in variant.knobs.items() if k != "task_logs"})

    def send(self, n: int) -> float:
        """Send one task; its CPU time in this thread."""
        before = time.thread_time()
        self.sender.send_task(NOOP, kwargs={"n": n}, queue=self.queue)
        return time.thread_time() - before

    def start_worker(self, variant: Variant, tag: str) -> subprocess.Popen[bytes]:
        self.use_sender(variant)
        log = open(self.workdir / f"worker-{tag}.log", "wb")  # noqa: SIM115 - closed with the process
        argv = [sys.executable, __file__, "--serve-worker", self.redis_url, variant.pool, variant.loglevel,
                str(self.concurrency), json.dumps(variant.knobs), str(self.workdir / f"health-{tag}.json")]
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True,
                                preexec_fn=_die_with_parent(signal.SIGTERM))
        log.close()
        # Ready when tasks go through (every prefork child too: warm them all up).
        for i in range(self.concurrency * 4):
            self.send(-1 - i)
        if self.wait(self.concurrency * 4, 120):
            return proc
        self.stop_worker(proc)
        tail = (self.workdir / f"worker-{tag}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"worker {tag} did not answer:\n{tail}")

    def wait(self, count: int, timeout_s: float = 60) -> bool:
        """Take `count` replies; False when they did not all come within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        for _ in range(count):
            while not self.r.brpop([REPLIES], timeout=1):
                if time.monotonic() > deadline:
                    return False
        return True

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def measure(self, variant: Variant, tag: str, tasks: int, burst: int) -> Result:
        proc = self.start_worker(variant, tag)
        try:
            ps = psutil.Process(proc.pid)
            time.sleep(0.5)
            # The idle rate: the consumer's BRPOP timeouts and the liveness probe.
            idle0, t0 = commandstats(self.r), time.monotonic()
            time.sleep(2.0)
            idle = commandstats(self.r) - idle0
            idle_s = time.monotonic() - t0

            cpu0, stats0, t0 = tree_cpu_s(ps), commandstats(self.r), time.monotonic()
            latencies, sender = [], 0.0
            for i in range(tasks):
                start = time.perf_counter()
                sender += self.send(i)
                self.wait(1)
                latencies.append(time.perf_counter() - start)
            seq_s = time.monotonic() - t0
            delta = commandstats(self.r) - stats0
            scale = seq_s / idle_s
            by_command = Counter({k: round((delta[k] - idle[k] * scale) / tasks - BENCH_COMMANDS[k], 2)
                                  for k in delta})
            by_command = Counter({k: v for k, v in by_command.items() if abs(v) >= 0.05})

            t1 = time.monotonic()
            for i in range(burst):
                sender += self.send(tasks + i)
            self.wait(burst, 120)
            burst_s = time.monotonic() - t1
            cpu = tree_cpu_s(ps) - cpu0
            return Result(pct(latencies, 50) * 1e3, pct(latencies, 99) * 1e3, burst / burst_s,
                          cpu / (tasks + burst) * 1e3, sender / (tasks + burst) * 1e3,
                          sum(by_command.values()), by_command)
        finally:
            self.stop_worker(proc)

    def monitor(self, variant: Variant) -> list[str]:
        proc = self.start_worker(variant, "monitor")
        lines: list[str] = []
        try:
            time.sleep(0.5)
            pool = redis.Redis.from_url(self.redis_url).connection_pool
            stop = threading.Event()

            def watch() -> None:
                with redis.client.Monitor(pool) as m:  # type: ignore[no-untyped-call]
                    for cmd in m.listen():
                        if stop.is_set():
                            return
                        lines.append(f"{cmd['time']:.4f} {cmd['client_address']}:{cmd['client_port']} "
                                     f"{cmd['command'][:160]}")

            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            time.sleep(0.3)
            lines.append("---- 3 tasks, one after the other ----")
            for i in range(3):
                self.send(i)
                self.wait(1)
                lines.append(f"---- task {i} done ----")
                time.sleep(0.2)
            stop.set()
            self.r.ping()
            thread.join(2)
        finally:
            self.stop_worker(proc)
        return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-worker":
        url, pool, level, conc, knobs, health = sys.argv[2:8]
        serve_worker(url, pool, level, int(conc), json.loads(knobs), health)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="prefork:INFO,prefork:WARNING,threads:INFO")
    parser.add_argument("--tasks", type=int, default=300, help="sequential round trips per repeat")
    parser.add_argument("--burst", type=int, default=600, help="tasks sent at once per repeat")
    parser.add_argument("--concurrency", type=int, default=2, help="worker slots")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--monitor", action="store_true", help="print Redis's commands for 3 tasks")
    parser.add_argument("--keep", type=Path, help="copy the workers' logs to this directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the worker and Redis on the way out
    variants = [Variant.parse(v) for v in args.variants.split(",")]

    with tempfile.TemporaryDirectory(prefix="agentos-celery-bench-") as tmp:
        work = Path(tmp)
        server = EmbeddedRedis(work, durable=False)
        server.start()
        try:
            bench = Bench(server.url, work, args.concurrency)
            if args.monitor:
                for line in bench.monitor(variants[0]):
                    print(line)
            results: dict[str, list[Result]] = {v.spec: [] for v in variants}
            for rep in range(args.repeats):
                for index, v in enumerate(variants):
                    res = bench.measure(v, f"{rep}-{index}", args.tasks, args.burst)
                    results[v.spec].append(res)
                    print(f"repeat {rep + 1} {v.spec}: p50 {res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms, "
                          f"{res.tasks_per_s:.0f} tasks/s, worker {res.worker_cpu_ms:.2f} ms CPU/task, "
                          f"sender {res.sender_cpu_ms:.2f}, redis {res.commands:.1f} cmds/task", flush=True)
            load = os.getloadavg()[0]
            print(f"\nmedians of {args.repeats} repeats ({args.tasks} sequential + {args.burst} burst tasks, "
                  f"W={args.concurrency}, load average {load:.1f}, {psutil.cpu_count()} CPUs):")
            print("| variant | p50 ms | p99 ms | tasks/s | worker CPU ms/task | sender CPU ms/task | Redis cmds/task |")
            print("|---|---|---|---|---|---|---|")
            for spec, rs in results.items():
                def med(f: str, rs: list[Result] = rs) -> float:
                    return float(statistics.median(getattr(r, f) for r in rs))
                print(f"| `{spec}` | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('tasks_per_s'):.0f} | "
                      f"{med('worker_cpu_ms'):.2f} | {med('sender_cpu_ms'):.2f} | {med('commands'):.1f} |")
            for spec, rs in results.items():
                cmds = sorted(rs[-1].by_command.items(), key=lambda kv: -kv[1])
                print(f"{spec}: " + ", ".join(f"{k} {v:g}" for k, v in cmds))
        finally:
            server.stop()
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for log in work.glob("worker-*.log"):
                    shutil.copy(log, args.keep / log.name)


if __name__ == "__main__":
    main()
