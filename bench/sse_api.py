"""`agentos api` for `bench/sse.py --tracemalloc`: the same server, plus a SIGUSR2 handler that
writes what the process holds, so the bench can say where the memory of an idle stream goes.

    python -X tracemalloc=1 bench/sse_api.py api --host 127.0.0.1 --port P

Each SIGUSR2 writes `<AGENTOS_BENCH_SNAPSHOT>.<n>` (a `tracemalloc` snapshot, when tracing) and
`<AGENTOS_BENCH_SNAPSHOT>.<n>.json` (live objects by type, asyncio tasks by coroutine name), n
counting from 0. It lives in bench/ and not in the API: a debugging aid for the bench only.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_taken = 0


def _task_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", type(coro).__qualname__)


def _type_name(obj: object) -> str:
    kind = type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"


def snapshot(_signum: int, _frame: FrameType | None) -> None:
    global _taken
    path = f"{os.environ['AGENTOS_BENCH_SNAPSHOT']}.{_taken}"
    _taken += 1
    gc.collect()
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(path)
    types = Counter(_type_name(o) for o in gc.get_objects())
    try:
        tasks = Counter(_task_name(t) for t in asyncio.all_tasks(asyncio.get_running_loop()))
    except RuntimeError:  # the signal arrived outside the loop
        tasks = Counter()
    Path(path + ".json").write_bytes(orjson.dumps({"types": dict(types.most_common(200)),
                                                   "tasks": dict(tasks.most_common(50))}))


def main() -> None:
    signal.signal(signal.SIGUSR2, snapshot)
    from agentos.cli import main as agentos_main

    sys.argv = ["agentos", *sys.argv[1:]]
    agentos_main()


if __name__ == "__main__":
    main()
