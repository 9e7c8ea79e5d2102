"""The Celery hop: from the API's `JobQueue.enqueue_run` call to the worker's task body, by stage.

    .venv/bin/python bench/hop.py [--variants current,executor] [--tasks N] [--repeats R]
        [--gap-ms G] [--xadd] [--busy-ms B] [--concurrency W]

Starts an embedded Redis (non-durable) in a temp dir and, per variant, a worker made exactly as
`agentos worker` makes it (`create_celery(settings)`, `worker_argv`, JSON logs to a file), whose
`agentos.execute_run` task is replaced by one that only stamps the time and LPUSHes its stamps to
a reply list. The sender is the API's: a `core.jobs.JobQueue` on this process's event loop, sending
`RunJob`s by `enqueue_run` one after the other (`--gap-ms` apart, after the reply came back).
With `--xadd` the loop also runs the API's concurrent `run.queued` publish (a pipelined XADD +
EXPIRE) while the send is in flight, as the POST does.

Stages, all on CLOCK_MONOTONIC (`time.monotonic`, one clock for every process of the machine):

- `thread`: `enqueue_run` called -> `send_run` starts (in its thread, unless `inline`);
- `celery`: -> kombu's `_put` starts (Celery's message, router, producer, declare);
- `redis`: -> the worker's main process starts handling the BRPOP's reply (kombu's delivery
  record begins: the LPUSH, Redis waking the BRPOP, the consumer's event loop, the parsing);
- `record`: the delivery record (`MULTI ZADD HSET EXEC`, ack emulation: what redelivers a dead
  worker's message) -> done;
- `strategy`: -> Celery's `task_received` (the message decoded, the `Request` made);
- `dispatch`: -> the prefork pool's `apply_async` returned (the job pickled and queued for a
  child's pipe);
- `child`: -> the child calls Celery's tracer (the pool's write on the next turn of the main
  process's event loop, the child's wake-up and read);
- `trace`: -> `task_prerun` (Celery's tracer set-up in the child);
- `body`: -> the task body's first line;
- `loop`: -> a coroutine started on the child's `runtime.services.LoopThread` (`runtime.run`'s
  hop into the persistent loop; the real task's `call_infra` does this);
- `total`: `enqueue_run` called -> the coroutine started; `returned`: `enqueue_run` called -> it
  returned (what the POST waits for); `lpush`: kombu's `_put`, the LPUSH's own round trip as the
  sending thread sees it (it overlaps `redis` and what follows: on 2 busy cores the sender waits
  for a core).

A variant is `SENDER[:knob=value[;knob=value]]`: SENDER is `current` (`JobQueue.enqueue_run` as
the tree has it), `to_thread` (`asyncio.to_thread(send_run)`, spelled out), `executor`
(`run_in_executor` on a dedicated warm single-thread executor) or `inline` (`send_run` called on
the loop, blocking it: a floor, not a candidate); knobs are Celery settings for the worker (JSON
values), plus `optimization` (`celery worker -O`: `default` or `fair`) and `api_switch_ms` (this
sending process's `sys.setswitchinterval`, in ms; Python's default is 5). Variants run in turns,
`--repeats` times; the report is the median over repeats of each stage's p50 (and p99), with the
load average before and after: the machine is shared, so compare within a repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from agentos.stack.process import _die_with_parent  # noqa: E402
from agentos.stack.redis import EmbeddedRedis  # noqa: E402

REPLIES = "bench:hop:replies"
STAGES = ("thread", "celery", "redis", "record", "strategy", "dispatch", "child", "trace", "body", "loop")
WARMUP = "warmup"
SWITCH_S = sys.getswitchinterval()


# ---------------------------------------------------------------------------------------------
# The worker side (`--serve-worker`): run in a child process.


def serve_worker(redis_url: str, concurrency: int, knobs: dict[str, Any], health_file: str, stamps_file: str) -> None:
    import billiard.pool
    from celery import Celery
    from celery.app import trace as celery_trace
    from celery.signals import task_prerun, task_received, worker_shutdown
    from celery.worker import request as celery_request
    from kombu.transport import redis as kombu_redis

    from core import jobs
    from core.settings import load_settings
    from core.telemetry.logs import configure as configure_logs
    from runtime.celery_app import AgentTask, create_celery, worker_argv
    from runtime.services import LoopThread

    settings = load_settings(redis={"url": redis_url}, worker={"health_file": health_file})
    configure_logs("worker", "INFO", "json")  # what `agentos worker` does
    optimization = knobs.pop("optimization", None)
    app: Celery = create_celery(settings)
    app.conf.update(knobs)
    app.finalize()
    app.tasks.pop(jobs.EXECUTE_RUN)  # the real run task: replaced by the stamping one below

    # The main process's stamps, by task id; written to `stamps_file` when the worker stops.
    main: dict[str, list[float]] = {}
    child: dict[str, Any] = {}  # the prefork child's (per process, after the fork)
    append: Any = kombu_redis.QoS.append

    def timed_append(qos: Any, message: Any, delivery_tag: str) -> None:
        start = time.monotonic()
        append(qos, message, delivery_tag)
        main[str(message.headers.get("id"))] = [start, time.monotonic()]

    setattr(kombu_redis.QoS, "append", timed_append)  # noqa: B010 - the bench's stamp, this process only

    def received(request: Any, **_: Any) -> None:
        main.setdefault(request.id, [0.0, 0.0]).append(time.monotonic())

    apply_async = billiard.pool.Pool.apply_async

    def timed_apply_async(pool: Any, *args: Any, **kwargs: Any) -> Any:
        result = apply_async(pool, *args, **kwargs)
        main.setdefault(str(kwargs.get("correlation_id")), [0.0, 0.0, 0.0]).append(time.monotonic())
        return result

    billiard.pool.Pool.apply_async = timed_apply_async
    for name in ("fast_trace_task", "trace_task_ret"):  # what the pool's child calls first, by name
        original = getattr(celery_trace, name)

        def entry(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            child["entry"] = time.monotonic()
            return _original(*args, **kwargs)

        entry.__module__, entry.__qualname__, entry.__name__ = celery_trace.__name__, name, name
        setattr(celery_trace, name, entry)
        setattr(celery_request, name, entry)

    def dump(**_: Any) -> None:
        Path(stamps_file).write_text(json.dumps(main))

    task_received.connect(received, weak=False)
    worker_shutdown.connect(dump, weak=False)

    def prerun(task_id: str, **_: Any) -> None:
        child["prerun"] = time.monotonic()

    task_prerun.connect(prerun, weak=False)

    async def stamp() -> float:
        return time.monotonic()

    @app.task(name=jobs.EXECUTE_RUN, base=AgentTask, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def hop(task: AgentTask, run_id: str, org_id: str) -> None:
        body = time.monotonic()
        if "loop" not in child:
            child["loop"] = LoopThread()
            child["redis"] = redis.Redis.from_url(redis_url)
        loop_at = child["loop"].run(stamp())
        stamps = {"id": task.request.id, "run": run_id, "entry": child["entry"], "prerun": child["prerun"],
                  "body": body, "loop": loop_at}
        child["redis"].lpush(REPLIES, json.dumps(stamps))

    argv = worker_argv(settings, concurrency=concurrency)
    if optimization:
        argv.append(f"--optimization={optimization}")
    app.worker_main(argv)


# ---------------------------------------------------------------------------------------------
# The bench side.


@dataclass
class Variant:
    sender: str
    knobs: dict[str, Any]
    spec: str
    switch_s: float  # this (the API's) process's GIL switch interval

    @classmethod
    def parse(cls, spec: str) -> Variant:
        sender, _, rest = spec.partition(":")
        knobs: dict[str, Any] = {}
        for item in rest.split(";") if rest else []:
            key, _, value = item.partition("=")
            knobs[key] = json.loads(value)
        if sender not in ("current", "to_thread", "executor", "inline"):
            raise SystemExit(f"unknown sender {sender!r}")
        switch_s = float(knobs.pop("api_switch_ms", SWITCH_S * 1e3)) / 1e3
        return cls(sender, knobs, spec, switch_s)


def _run_of(message: dict[str, Any]) -> str:
    """The run id of a Celery message as kombu's transport puts it (protocol 2: the body is
    base64 JSON `[args, kwargs, embed]`)."""
    import base64

    body = json.loads(base64.b64decode(message["body"]))
    return str(body[1]["run_id"])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


class Bench:
    def __init__(self, redis_url: str, workdir: Path, concurrency: int, gap_s: float, xadd: bool,
                 busy_s: float) -> None:
        from core import jobs
        from core.settings import load_settings

        self.redis_url = redis_url
        self.workdir = workdir
        self.concurrency = concurrency
        self.gap_s = gap_s
        self.xadd = xadd
        self.busy_s = busy_s
        self.r = redis.Redis.from_url(redis_url)
        settings = load_settings(redis={"url": redis_url})
        self.queue = jobs.JobQueue(settings)
        self.started: dict[str, float] = {}  # send_run began, in its thread
        self.put: dict[str, float] = {}  # kombu's `_put` (the LPUSH) began
        self.pushed: dict[str, float] = {}  # the LPUSH returned
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hop-sender")
        send_run = self.queue.send_run

        def timed(job: jobs.RunJob, producer: Any = None) -> None:
            self.started[job.run_id] = time.monotonic()
            send_run(job, producer)

        from core import redis_transport

        put: Any = redis_transport.Channel._put

        def timed_put(channel: Any, queue: str, message: Any, **kwargs: Any) -> None:
            start = time.monotonic()
            put(channel, queue, message, **kwargs)
            end = time.monotonic()
            run_id = _run_of(message)
            self.put[run_id], self.pushed[run_id] = start, end

        setattr(redis_transport.Channel, "_put", timed_put)  # noqa: B010 - the bench's stamp, this process only

        self.queue.send_run = timed  # type: ignore[method-assign]  # enqueue_run calls it

    async def enqueue(self, sender: str, run_id: str) -> None:
        from core import jobs

        if sender == "current":
            await self.queue.enqueue_run(run_id, "org-hop")
        elif sender == "executor":
            job = jobs.RunJob(run_id=run_id, org_id="org-hop")
            await asyncio.get_running_loop().run_in_executor(self.executor, self.queue.send_run, job)
        elif sender == "to_thread":
            await asyncio.to_thread(self.queue.send_run, jobs.RunJob(run_id=run_id, org_id="org-hop"))
        else:
            self.queue.send_run(jobs.RunJob(run_id=run_id, org_id="org-hop"))

    async def send(self, sender: str, run_id: str, ar: aioredis.Redis) -> float:
        """Enqueue one run; the time its `enqueue_run` took."""
        start = time.monotonic()
        if self.busy_s:
            async def busy() -> None:
                await asyncio.sleep(0)  # the send starts first, then the loop computes without yielding
                until = time.monotonic() + self.busy_s
                while time.monotonic() < until:
                    sum(range(100))
            await asyncio.gather(self.enqueue(sender, run_id), busy())
            return time.monotonic() - start
        if self.xadd:
            async def publish() -> None:
                async with ar.pipeline(transaction=False) as pipe:
                    pipe.xadd(f"bench:hop:{run_id}", {"e": b"x" * 200})
                    pipe.expire(f"bench:hop:{run_id}", 60)
                    await pipe.execute()
            await asyncio.gather(self.enqueue(sender, run_id), publish())
        else:
            await self.enqueue(sender, run_id)
        return time.monotonic() - start

    def start_worker(self, variant: Variant, tag: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = open(self.workdir / f"worker-{tag}.log", "wb")  # noqa: SIM115 - closed with the process
        stamps = self.workdir / f"stamps-{tag}.json"
        argv = [sys.executable, __file__, "--serve-worker", self.redis_url, str(self.concurrency),
                json.dumps(variant.knobs), str(self.workdir / f"health-{tag}.json"), str(stamps)]
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True,
                                preexec_fn=_die_with_parent(signal.SIGTERM))
        log.close()
        return proc, stamps

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    async def measure(self, variant: Variant, tag: str, tasks: int) -> dict[str, list[float]]:
        sys.setswitchinterval(variant.switch_s)
        proc, stamps_file = self.start_worker(variant, tag)
        ar = aioredis.Redis.from_url(self.redis_url, socket_timeout=None)
        replies: list[dict[str, Any]] = []
        called: dict[str, float] = {}
        returned: dict[str, float] = {}
        try:
            # Ready when tasks go through, every prefork child warmed up (its loop thread made).
            for i in range(self.concurrency * 4):
                await self.send(variant.sender, f"{WARMUP}-{i}", ar)
            for _ in range(self.concurrency * 4):
                if not await ar.brpop([REPLIES], timeout=120):
                    tail = (self.workdir / f"worker-{tag}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"worker {tag} did not answer:\n{tail}")
            await asyncio.sleep(0.3)
            for i in range(tasks):
                run_id = f"run-{i}"
                called[run_id] = time.monotonic()
                returned[run_id] = called[run_id] + await self.send(variant.sender, run_id, ar)
                got = await ar.brpop([REPLIES], timeout=30)
                if not got:
                    raise RuntimeError(f"run {run_id} got no reply")
                replies.append(json.loads(got[1]))
                await asyncio.sleep(self.gap_s)
        finally:
            await ar.aclose()
            self.stop_worker(proc)
        main = json.loads(stamps_file.read_text())
        out: dict[str, list[float]] = {k: [] for k in (*STAGES, "total", "returned", "lpush")}
        for reply in replies:
            run, task_id = reply["run"], reply["id"]
            wake, recorded, received, dispatched = main[task_id]
            points = [called[run], self.started[run], self.put[run], wake, recorded, received, dispatched,
                      reply["entry"], reply["prerun"], reply["body"], reply["loop"]]
            for stage, (a, b) in zip(STAGES, zip(points, points[1:], strict=False), strict=True):
                out[stage].append((b - a) * 1e3)
            out["total"].append((reply["loop"] - called[run]) * 1e3)
            out["lpush"].append((self.pushed[run] - self.put[run]) * 1e3)
            out["returned"].append((returned[run] - called[run]) * 1e3)
        return out


async def run(args: argparse.Namespace, variants: list[Variant], bench: Bench) -> None:
    keys = (*STAGES, "total", "returned", "lpush")
    results: dict[str, list[dict[str, list[float]]]] = {v.spec: [] for v in variants}
    load0 = os.getloadavg()
    for rep in range(args.repeats):
        for index, v in enumerate(variants):
            res = await bench.measure(v, f"{rep}-{index}", args.tasks)
            results[v.spec].append(res)
            print(f"repeat {rep + 1} {v.spec} (load {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{k} {pct(res[k], 50):.2f}" for k in keys), flush=True)
    load1 = os.getloadavg()
    print(f"\nmedians over {args.repeats} repeats of each stage's p50 (p99), ms; {args.tasks} sequential sends "
          f"{args.gap_ms} ms apart, W={args.concurrency}{', with the concurrent XADD' if args.xadd else ''}"
          f"{f', the loop busy {args.busy_ms} ms' if args.busy_ms else ''}; "
          f"load average {load0[0]:.1f} / {load0[1]:.1f} before, {load1[0]:.1f} / {load1[1]:.1f} after:")
    print("| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for spec, rs in results.items():
        cells = []
        for k in keys:
            p50 = statistics.median(pct(r[k], 50) for r in rs)
            p99 = statistics.median(pct(r[k], 99) for r in rs)
            cells.append(f"{p50:.2f} ({p99:.1f})")
        print(f"| `{spec}` | " + " | ".join(cells) + " |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-worker":
        url, conc, knobs, health, stamps = sys.argv[2:7]
        logging.getLogger().setLevel(logging.INFO)
        serve_worker(url, int(conc), json.loads(knobs), health, stamps)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="current,executor")
    parser.add_argument("--tasks", type=int, default=200, help="sequential sends per variant and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause after each reply")
    parser.add_argument("--concurrency", type=int, default=2, help="worker slots")
    parser.add_argument("--xadd", action="store_true", help="the POST's concurrent XADD + EXPIRE on the loop")
    parser.add_argument("--busy-ms", type=float, default=0.0,
                        help="the loop computes this long without yielding while the send is in flight "
                             "(another request's work on a busy API)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the worker and Redis on the way out
    variants = [Variant.parse(v) for v in args.variants.split(",")]
    with tempfile.TemporaryDirectory(prefix="agentos-hop-bench-") as tmp:
        work = Path(tmp)
        server = EmbeddedRedis(work, durable=False)
        server.start()
        try:
            bench = Bench(server.url, work, args.concurrency, args.gap_ms / 1e3, args.xadd, args.busy_ms / 1e3)
            asyncio.run(run(args, variants, bench))
            bench.queue.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
