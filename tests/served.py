"""`serving(app)`: an ASGI app under a real uvicorn server on a free loopback port, in a thread,
for tests whose client must speak real HTTP (many sockets, another process such as node)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette


@dataclass(frozen=True)
class Served:
    url: str
    server: uvicorn.Server

    @property
    def state(self) -> dict[str, Any]:
        """What the app's lifespan yielded (the typed `ApiState` under "api")."""
        return dict(self.server.lifespan.state)


def until(check: Callable[[], bool], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def serving(app: Starlette) -> Iterator[Served]:
    """`app` under uvicorn on a free loopback port, in a thread; stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, lifespan="on", loop="asyncio", http="h11", ws="none",
                            backlog=2048, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        until(lambda: server.started or not thread.is_alive())
        assert server.started, "uvicorn did not start"
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
