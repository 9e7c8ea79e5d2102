"""`TurnCounter`: a loopback TCP forwarder that counts request/response turns, to measure what a
code path costs in round trips to Postgres or Redis without patching any client library.

A turn is the client sending (one or more segments) and the server then answering: on each
connection, every change of direction from client-to-server to server-to-client counts one.
That is exactly a round trip the client waits for (a pipelined batch is one turn; a BLPOP is one
turn however long it blocks), whatever the protocol. Data the server pushes unasked (pub/sub
messages) after it already answered counts nothing. Benches only: it adds a hop to every byte.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentos.stack.process import free_port


class TurnCounter:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="turn-counter", daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self.turns = 0
        self.sent_bytes = 0
        self.received_bytes = 0

    def snapshot(self) -> tuple[int, int, int]:
        """(turns, bytes sent to the server, bytes received from it) so far."""
        with self._lock:
            return self.turns, self.sent_bytes, self.received_bytes

    def __enter__(self) -> TurnCounter:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=5)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _close(self) -> None:
        """Stop listening and end the forwarding of connections still open (a pooled client's),
        rather than leave their tasks to be destroyed pending with the loop."""
        if self._server is not None:
            self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        asked = [False]  # the client spoke since the server last answered
        await asyncio.gather(self._pipe(reader, up_writer, asked, to_server=True),
                             self._pipe(up_reader, writer, asked, to_server=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, asked: list[bool], *,
                    to_server: bool) -> None:
        try:
            while data := await reader.read(65536):
                with self._lock:
                    if to_server:
                        self.sent_bytes += len(data)
                        asked[0] = True
                    else:
                        self.received_bytes += len(data)
                        if asked[0]:
                            self.turns += 1
                            asked[0] = False
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with suppress(Exception):
                writer.close()


def via(url: str, port: int) -> str:
    """`url` (a Postgres or Redis URL) pointed at `port` on the same host: a counter's."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}"))


def around(original: Callable[..., Any], before: Callable[[], None],
           after: Callable[[], None] | None = None) -> Callable[..., Any]:
    """The coroutine function `original` calling `before()` as it starts and `after()` as it
    ends: where to take a counter's snapshot on the way through a code path."""

    @functools.wraps(original)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        before()
        try:
            return await original(*args, **kwargs)
        finally:
            if after is not None:
                after()

    return wrapped
