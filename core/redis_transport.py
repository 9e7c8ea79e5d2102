"""kombu's Redis transport, with one Redis client object per channel instead of one per command.

kombu (5.7) makes a new `redis.Redis` for every publish, every delivery's bookkeeping and every
ack (`Channel.conn_or_acquire` -> `_create_client`), and redis-py 8 builds ~170 response
callbacks in each one's constructor: about 0.1 ms of CPU each time, three or more times per task
(measured in `bench/celery_overhead.py`; see docs/benchmarks.md, "Issue 18, direction 3"). The
client holds no connection of its own (commands take one from the channel's pool), so sharing it
is what kombu already does for the consumer's own client. A new pool (after a reconnect) gets a
new client. Selected by `core.jobs.celery_config` for `redis://` and `rediss://` brokers.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared: tuple[Any, Any] | None = None  # (pool, client made on it)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        shared = self._shared
        if shared is None or shared[0] is not pool:
            shared = self._shared = (pool, super()._create_client())  # type: ignore[no-untyped-call]
        return shared[1]


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
