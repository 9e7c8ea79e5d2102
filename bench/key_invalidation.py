"""How long an API key revocation takes to reach other API processes' key caches.

    .venv/bin/python bench/key_invalidation.py [--processes 4] [--rounds 300]

Starts its own embedded Redis in a temp dir, and `--processes` child processes that each run a
`core.auth_cache.KeyCache` listener, as an API process does. The parent then calls
`KeyCache.invalidate(key_id=...)` (what `DELETE /v1/api-keys/{id}` does after its commit)
`--rounds` times, one at a time, and each child records the moment (CLOCK_MONOTONIC, shared
by processes on Linux) at which it dropped that key. It prints the delay from the call to the
drop in every other process: p50, p99 and max, in ms. The bound documented in docs/benchmarks.md
("Key cache") is the max over all rounds and processes. Stops everything it started, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentos.stack.redis import EmbeddedRedis  # noqa: E402
from core.auth_cache import KeyCache  # noqa: E402


class _Timed(KeyCache):
    """A KeyCache that records when each key's invalidation was applied."""

    def __init__(self, redis: aioredis.Redis, out: Connection) -> None:
        super().__init__(redis, ttl_s=5.0)
        self._out = out

    def drop(self, *, key_id: str | None = None, org_id: str | None = None, user_id: str | None = None) -> None:
        super().drop(key_id=key_id, org_id=org_id, user_id=user_id)
        if key_id is not None:
            self._out.send((key_id, time.monotonic()))


def _child(url: str, out: Connection) -> None:
    async def main() -> None:
        redis = aioredis.from_url(url)
        ready = asyncio.Event()
        cache = _Timed(redis, out)
        task = asyncio.create_task(cache.listen(ready))
        await ready.wait()
        out.send(("ready", time.monotonic()))
        await task

    asyncio.run(main())


async def _publish_rounds(url: str, rounds: int) -> dict[str, float]:
    redis = aioredis.from_url(url)
    sender = KeyCache(redis, ttl_s=5.0)
    sent: dict[str, float] = {}
    try:
        for i in range(rounds):
            key_id = f"api_key_bench{i:06d}"
            sent[key_id] = time.monotonic()
            await sender.invalidate(key_id=key_id)
            await asyncio.sleep(0.005)
    finally:
        await redis.aclose()
    return sent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=4, help="listening API processes (default 4)")
    p.add_argument("--rounds", type=int, default=300, help="revocations, one at a time (default 300)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentos-keybench-") as tmp:
        server = EmbeddedRedis(Path(tmp), durable=False)
        server.start()
        children: list[tuple[BaseProcess, Connection]] = []
        try:
            ctx = mp.get_context("spawn")
            for _ in range(args.processes):
                receive, send = ctx.Pipe(duplex=False)
                child = ctx.Process(target=_child, args=(server.url, send), daemon=True)
                child.start()
                children.append((child, receive))
            for _, receive in children:
                assert receive.recv()[0] == "ready"
            sent = asyncio.run(_publish_rounds(server.url, args.rounds))
            delays: list[float] = []
            for _, receive in children:
                got = 0
                while got < args.rounds and receive.poll(10):
                    key_id, at = receive.recv()
                    delays.append((at - sent[key_id]) * 1000)
                    got += 1
                if got < args.rounds:
                    print(f"a listener heard only {got} of {args.rounds} invalidations", file=sys.stderr)
                    return 1
        finally:
            for proc, _ in children:
                proc.kill()
                proc.join(5)
            server.stop()
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(f"{args.rounds} revocations x {args.processes} listening processes: delay from invalidate() to the "
          f"drop in another process, ms: p50 {statistics.median(delays):.2f}, p99 {p99:.2f}, max {delays[-1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
