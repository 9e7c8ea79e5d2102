"""kombu's Redis transport, with one Redis client object per channel instead of one per command,
and a way to take a message's Redis commands instead of sending them (`capturing`).

kombu (5.7) makes a new `redis.Redis` for every publish, every delivery's bookkeeping and every
ack (`Channel.conn_or_acquire` -> `_create_client`), and redis-py 8 builds ~170 response
callbacks in each one's constructor: about 0.1 ms of CPU each time, three or more times per task
(measured in `bench/celery_overhead.py`; see docs/benchmarks.md, "Issue 18, direction 3"). The
client holds no connection of its own (commands take one from the channel's pool), so sharing it
is what kombu already does for the consumer's own client. A new pool (after a reconnect) gets a
new client. Selected by `core.jobs.celery_config` for `redis://` brokers.

Under `capturing()`, a publish through a channel of this transport does no IO: kombu's own
`_put` hands its commands (`LPUSH queue message`) to the capture, as it does to its publish
batches, and anything that would talk to Redis (connecting, declaring a queue) raises
`NeedsBroker`, so the caller sends the usual way instead. `core.jobs.JobQueue.run_commands` uses
it to let the API queue a run in a Redis pipeline of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from kombu.transport import redis as kombu_redis

# A Redis command as a pipeline takes it: the method's name and its arguments.
Command = tuple[str, tuple[Any, ...]]


class NeedsBroker(RuntimeError):
    """A captured publish would have talked to Redis (a connection or a declaration first)."""


class _Taken:
    """Stands in for kombu's publish batch: keeps the commands `_put` would have sent."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


_capture: ContextVar[_Taken | None] = ContextVar("agentos_publish_capture", default=None)


@contextmanager
def capturing() -> Iterator[list[Command]]:
    """Within the block, publishes on this transport are taken into the list it yields instead
    of being sent; anything else that would do IO raises `NeedsBroker`. Keep the block free of
    awaits: the capture is in the current context, which tasks started inside it would share."""
    taken = _Taken()
    token = _capture.set(taken)
    try:
        yield taken.commands
    finally:
        _capture.reset(token)


class Channel(kombu_redis.Channel):
    _shared: tuple[Any, Any] | None = None  # (pool, client made on it)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if _capture.get() is not None:
            raise NeedsBroker("a captured publish needs the broker (connecting or declaring first)")
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        shared = self._shared
        if shared is None or shared[0] is not pool:
            shared = self._shared = (pool, super()._create_client())  # type: ignore[no-untyped-call]
        return shared[1]

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        taken = _capture.get()
        if taken is not None:
            kwargs["_publish_batch"] = taken  # kombu's own _put hands its commands to `taken.add`
        super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
