"""`TcpProxy`: a loopback TCP forwarder that a test can take down and bring back, to give one
process a Postgres (or Redis) outage without touching the server the rest of the suite uses.
`down()` closes the listener and every open connection (clients see resets, then refusals);
`up()` listens on the same port again. `cut_before(marker, nth)` breaks a connection at an exact point of
what the server sends, while the server goes on (a dropped connection, not an outage). `delay_s` holds
back every piece the server sends for that long (a slow link)."""

from __future__ import annotations

import asyncio
import socket
import threading
from contextlib import suppress
from types import TracebackType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._cut: _Cut | None = None
        self.delay_s = 0.0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.up()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=5)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)

    def cut_before(self, marker: bytes, nth: int = 1) -> None:
        """Once: abort the connection whose server side sends the `nth` `marker` (counted from now,
        over all connections), passing on only what came before it. `cut_before(b"HTTP/")` lets the
        server handle the next request but loses its answer."""
        self._cut = _Cut(marker, nth)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, answers=True))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                if answers and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                if answers and (cut := self._cut) is not None:
                    data, now = cut.split(data)
                    if now:
                        self._cut = None
                        writer.write(data)
                        await writer.drain()
                        break  # `finally` aborts the client's connection
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with suppress(Exception):
                writer.transport.abort()


class _Cut:
    """Finds the `nth` `marker` in a byte stream read in pieces."""

    def __init__(self, marker: bytes, nth: int) -> None:
        self.marker, self.left, self.tail = marker, nth, b""

    def split(self, data: bytes) -> tuple[bytes, bool]:
        """(what of `data` to pass on, whether the cut comes right after it)."""
        seen, start = self.tail + data, 0
        while (at := seen.find(self.marker, start)) >= 0:
            self.left -= 1
            if self.left == 0:
                return data[:max(0, at - len(self.tail))], True
            start = at + len(self.marker)
        # Keep what could begin a marker completed by the next piece (too short to hold a whole one).
        self.tail = seen[-(len(self.marker) - 1):] if len(self.marker) > 1 else b""
        return data, False
