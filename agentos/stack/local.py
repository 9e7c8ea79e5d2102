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
        self._recorded = False

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
        self._recorded = True
        return urls

    def stop(self) -> None:
        if self._recorded:  # never remove the record of a stack another process runs
            (self.data_dir / STATE_FILE).unlink(missing_ok=True)
            self._recorded = False
        self.redis.stop()
        self.postgres.stop()

    def __enter__(self) -> StackUrls:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class RunningStack(StackUrls):
    pid: int = 0  # the process that started it (`agentos dev`)


def running_stack(data_dir: Path) -> RunningStack | None:
    """The URLs of an `agentos dev` still running from `data_dir`, if there is one."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        pid = int(state.get("pid", -1))
        urls = (str(state["database_url"]), str(state["redis_url"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if pid <= 0 or not psutil.pid_exists(pid):
        return None
    return RunningStack(database_url=urls[0], redis_url=urls[1], pid=pid)
