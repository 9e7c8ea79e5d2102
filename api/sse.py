"""Server-sent event streams as a small ASGI response of our own: an idle stream is one waiting
coroutine and one small task, so one API process holds ten thousand of them.

sse-starlette's `EventSourceResponse` (still used by the runner link, a handful of streams) runs
four tasks per response in an anyio task group (the body, a ping timer, a shutdown listener, a
disconnect listener); our shutdown farewell added two more. Measured with `bench/sse.py
--tracemalloc`, those tasks were most of an idle stream's memory. Here:

- the body runs in the request's own task, reading `core.event_reader`'s stream, which waits on
  its `Follower` for events, for keep-alives (the event hub's one timer marks them due) and for
  the end (`EventHub.drain()` at shutdown);
- uvicorn's `receive()`, in a task of its own, waits for the client to disconnect (uvicorn tells
  only `receive()`; a send to a closed connection is silently dropped) and then cancels the body,
  which leaves the hub;
- `watch_for_exit` (one task per process) drains the hub as soon as uvicorn begins to shut down,
  so every stream ends with its farewell and clients reconnect elsewhere with `Last-Event-ID`.

The wire format is sse-starlette's: `\\r\\n` line ends, `: ping - <time>` keep-alives.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import UTC, datetime

import uvicorn
from prometheus_client import Gauge
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from core.event_hub import EventHub
from core.events import Event

EXIT_POLL_S = 0.25


# How soon a client's departure cancels the stream's body again, if a cancellation was lost.
RECANCEL_S = 0.05


def event_bytes(event: Event) -> bytes:
    """One event as SSE: its seq as the id (the client's `Last-Event-ID`), its type, its JSON
    (orjson escapes newlines, so one `data:` line)."""
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (event.seq, event.type.encode(), event.to_json())


def comment_bytes(text: str, *, retry_ms: int | None = None) -> bytes:
    retry = b"" if retry_ms is None else b"retry: %d\r\n" % retry_ms
    return b": %s\r\n%s\r\n" % (text.encode(), retry)


def keepalive_bytes() -> bytes:
    return comment_bytes(f"ping - {datetime.now(UTC)}")


class EventStream(Response):
    """`text/event-stream` of `events` (`core.event_reader`'s batches, each sent in one write; None
    marking a keep-alive due), only those of `run_id` when given, up to its terminal event; after
    they end, `farewell()`'s bytes (if any) close it. Counted in `gauge` while open. HEAD answers
    the headers only: the stream never starts (it might never end). `body_read`: the handler
    already read the request's body (a POST that answers with its run's stream).

    Everything an idle stream holds lives in this one call's frame and the reader's generator:
    no wrapping generators, and the disconnect listener is uvicorn's own `receive()` in a task."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[list[Event] | None, None], *, gauge: Gauge, run_id: str | None = None,
                 farewell: Callable[[], bytes | None] = lambda: None, headers: Mapping[str, str] | None = None,
                 status: int = 200, body_read: bool = False) -> None:
        self.events = events
        self.gauge = gauge
        self.run_id = run_id
        self.farewell = farewell
        self.status_code = status
        self.body_read = body_read
        self.background = None
        # Shared with every stream that has the same headers, never changed: any change (the
        # endpoint's `RateLimit-*`, a cookie) goes to this stream's own copy (`raw_headers`).
        self._shared_headers = _raw_headers(tuple((headers or {}).items()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # A GET's request message (no body) is read first; a client already gone gets the
            # headers only. A body the handler read is not there to read again.
            if scope.get("method") == "HEAD" or (not self.body_read and (await receive())["type"] == "http.disconnect"):
                await send(self._start())
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._stream(receive, send)
        finally:
            await self.events.aclose()

    _own_headers: list[tuple[bytes, bytes]] | None = None

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """This stream's headers, to change (Starlette's `headers`, `set_cookie` and middleware
        change this list): a copy of the shared pairs, made on first use, so an idle stream whose
        headers nobody touches holds none of its own."""
        if self._own_headers is None:
            self._own_headers = list(self._shared_headers)
        return self._own_headers

    @raw_headers.setter
    def raw_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._own_headers = value

    @property
    def headers(self) -> MutableHeaders:
        """The response's headers, to change (the endpoint adds `RateLimit-*`)."""
        if "_headers" not in self.__dict__:
            self._headers = MutableHeaders(raw=self.raw_headers)
        return self._headers

    def _start(self) -> Message:
        # A copy: middleware adds headers to the message's list (X-Request-Id).
        own = self._own_headers
        return {"type": "http.response.start", "status": self.status_code,
                "headers": list(self._shared_headers if own is None else own)}

    def _batch_bytes(self, batch: list[Event]) -> tuple[bytes, bool]:
        """A batch of events at hand (only `run_id`'s, when given) as one chunk, one write; True
        when it holds the run's terminal event, which ends it."""
        if self.run_id is None:
            return b"".join(event_bytes(event) for event in batch), False
        chunks = []
        for event in batch:
            if event.run_id == self.run_id:
                chunks.append(event_bytes(event))
                if event.terminal:
                    return b"".join(chunks), True
        return b"".join(chunks), False

    async def _stream(self, receive: Receive, send: Send) -> None:
        # The request (and its body) was received: the next message can only be the disconnect,
        # which uvicorn tells `receive()` alone (a send to a closed connection is dropped without
        # an error). It cancels the body.
        body = asyncio.current_task()
        assert body is not None
        streaming, left, taken = True, False, False
        listener: asyncio.Future[Message] = asyncio.ensure_future(receive())

        def on_message(done: asyncio.Future[Message]) -> None:
            nonlocal left, listener
            if not streaming or done.cancelled():
                return
            if done.exception() is None and done.result()["type"] != "http.disconnect":
                listener = asyncio.ensure_future(receive())  # more request body: not for us
                listener.add_done_callback(on_message)
                return
            left = True
            loop = asyncio.get_running_loop()

            def cancel_body() -> None:
                # A cancellation can be lost in a library call the body is in (Python 3.11's
                # `asyncio.wait_for` drops one that lands as its inner call completes, and
                # redis-py sends commands through it): repeated until the body has taken one.
                if streaming and not taken:
                    body.cancel()
                    loop.call_later(RECANCEL_S, cancel_body)

            cancel_body()

        listener.add_done_callback(on_message)
        self.gauge.inc()
        try:
            await send(self._start())
            last = b""
            async for batch in self.events:
                chunk, ended = (keepalive_bytes(), False) if batch is None else self._batch_bytes(batch)
                if ended:
                    last = chunk  # sent with the stream's end: one write, one wake-up of the client
                    break
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            last += self.farewell() or b""
            streaming = False
            await send({"type": "http.response.body", "body": last, "more_body": False})
        except asyncio.CancelledError:
            if not left:
                raise
            taken = True
            while body.uncancel():  # the client is gone: this response is over, the server is not
                pass
        finally:
            streaming = False
            self.gauge.dec()
            listener.remove_done_callback(on_message)
            listener.cancel()


@functools.lru_cache(maxsize=16)
def _raw_headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    """The response headers as ASGI wants them, built once per set of headers and shared by
    every stream (about 700 bytes each otherwise, held as long as the stream is open). Streams
    differ only in their route's fixed headers."""
    merged = MutableHeaders(headers=dict(headers))
    merged.setdefault("Cache-Control", "no-store")
    merged["Connection"] = "keep-alive"
    merged["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    merged.setdefault("Content-Type", "text/event-stream; charset=utf-8")
    return merged.raw


def _uvicorn_exiting() -> bool:
    """True once the uvicorn server of this process began to shut down (SIGTERM, SIGINT). The
    server is found as the owner of the SIGTERM handler, which uvicorn installs when it runs in
    the main thread (`agentos api`); elsewhere (tests' servers in threads) this stays False and
    streams end when uvicorn cancels them."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return isinstance(server, uvicorn.Server) and bool(server.should_exit)


async def watch_for_exit(hub: EventHub, exiting: Callable[[], bool] = _uvicorn_exiting) -> None:
    """Drain `hub` once the server begins to shut down: every open stream sends its farewell and
    ends, before uvicorn's graceful timeout would cut it."""
    while not exiting():
        await asyncio.sleep(EXIT_POLL_S)
    hub.drain()
