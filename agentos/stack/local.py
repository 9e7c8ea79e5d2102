"""`LocalStack`: Postgres + Redis under one data directory, started and stopped together."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import psutil

from agentos.stack.postgres import EmbeddedPostgres
from agentos.stack.redis import EmbeddedRedis

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class StackUrls:
    database_url: str
    redis_url: str


class LocalStack:
    def __init__(self, data_dir: Path, *, database: str = "agentos", durable: bool = True) -> None:
        self.data_dir = data_dir
        self.database = database
        self.postgres = EmbeddedPostgres(data_dir, durable=durable)
        self.redis = EmbeddedRedis(data_dir, durable=durable)

    def start(self) -> StackUrls:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        try:
            db_url = self.postgres.ensure_database(self.database)
            self.redis.start()
        except BaseException:
            self.stop()
            raise
        urls = StackUrls(database_url=db_url, redis_url=self.redis.url)
        state = {**asdict(urls), "pid": os.getpid()}
        (self.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        return urls

    def stop(self) -> None:
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        self.redis.stop()
        self.postgres.stop()

    def __enter__(self) -> StackUrls:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def running_stack(data_dir: Path) -> StackUrls | None:
    """The URLs of an `agentos dev` still running from `data_dir`, if there is one."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not psutil.pid_exists(int(state.get("pid", -1))):
        return None
    return StackUrls(database_url=state["database_url"], redis_url=state["redis_url"])
