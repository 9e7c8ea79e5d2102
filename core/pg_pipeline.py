"""Postgres pipeline mode that sends a batch in one write.

psycopg's pipeline mode sends each statement as it is queued: every `execute` waits for the
socket to be writable (two turns of the event loop) and writes that statement alone, so a
batch of BEGIN, the org, six statements and COMMIT was ten `send()` calls. On loopback each
one wakes the Postgres backend, which reads and runs that piece, and sleeps again: the batch
cost one round trip but ten wake-ups on each side (`strace -c`: 3,011 `sendto` for 300 batches).

`one_write_pipeline` keeps the statements in libpq's output buffer (libpq writes it only past
64 KiB) until their results are wanted: at the batch's end (its Sync), or when a result is read
mid-batch (`fetchone()` in `core.tenancy.tenant_pipeline_tx`). Then the whole buffer goes out in
as few writes as the socket takes: one, for the batches a run makes. Round trips, results,
errors and their order are psycopg's own; only when the bytes leave changes.

It overrides three of psycopg's pipeline internals (`_communicate_gen`, `_fetch_gen`,
`_exit_gen`) and calls a fourth (`_enqueue_sync`), all present from psycopg 3.1 to 3.3. If a
psycopg release drops them, `SUPPORTED` is
False and the batch uses psycopg's own pipeline as before (`tests/test_pg_pipeline.py` fails on
that, so the fallback does not go unnoticed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection, AsyncPipeline
from psycopg.abc import PQGen
from psycopg.generators import send

SUPPORTED = all(hasattr(AsyncPipeline, name) for name in (
    "_communicate_gen", "_fetch_gen", "_exit_gen", "_enqueue_sync"))


class OneWritePipeline(AsyncPipeline):
    """psycopg's `AsyncPipeline`, holding its commands until a result is wanted."""

    def _communicate_gen(self) -> PQGen[None]:
        """Called by every `execute` (and `executemany`): the command stays queued."""
        return
        yield

    def _fetch_gen(self, *, flush: bool) -> PQGen[None]:
        """Results are wanted (a read, a sync, the end): the queued commands go into libpq's
        buffer (no IO), the buffer out in full, then psycopg reads the results as it does."""
        while self.command_queue:
            self.command_queue.popleft()()
        yield from send(self.pgconn)
        yield from super()._fetch_gen(flush=flush)

    def _exit_gen(self) -> PQGen[None]:
        """The end: the Sync goes out with everything else. No flush request is added after it
        (psycopg's exit adds one, a second write, for a Sync it may have failed to send)."""
        self._enqueue_sync()
        yield from self._fetch_gen(flush=False)


@asynccontextmanager
async def one_write_pipeline(conn: AsyncConnection[Any]) -> AsyncIterator[None]:
    """`conn.pipeline()` (not nested), sending each batch in one write (above)."""
    if not SUPPORTED:
        async with conn.pipeline():
            yield
        return
    async with conn.lock:
        conn._check_connection_ok()
        if conn._pipeline is not None:
            raise RuntimeError("one_write_pipeline cannot be nested in another pipeline")
        pipeline = conn._pipeline = OneWritePipeline(conn)
    try:
        async with pipeline:
            yield
    finally:
        async with conn.lock:
            conn._pipeline = None
