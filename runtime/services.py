"""What a worker process holds open while it executes runs: its `Infra` (settings, Postgres
pool, Redis, the job queue to start a session's next run), the checkpoint pool, the skill
registry and the compiled graph.

Celery tasks are synchronous, the run code is async: `WorkerRuntime` keeps one event loop in
a background thread per process and runs each task's coroutine there, so pools and clients
live across tasks. It is created lazily in the process that runs tasks (after a prefork fork).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from core.db import open_pool
from core.file_storage import FileStorage, open_storage
from core.infra import Infra
from core.settings import Settings
from core.tenancy import AsyncPool
from memory.service import MemoryService
from orchestrator.checkpointer import StepSaver
from orchestrator.graph import Graph, build_graph
from runtime.drain import Drain
from skills import SkillRegistry, default_registry
from skills.catalogue import SkillBuilder
from skills.http_skill import build_http_skill
from skills.sandbox.client import SandboxClient

log = logging.getLogger("agentos.worker")
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    """The process's `Infra` plus what only workers need."""

    infra: Infra
    checkpoint_pool: AsyncPool
    skills: SkillRegistry  # the built-ins
    graph: Graph
    checkpointer: StepSaver  # the graph's (orchestrator.checkpointer): the executor flushes what it holds back
    memory: MemoryService
    # How each kind of an org's own skill becomes a Skill (see skills.catalogue.RunSkills).
    skill_builders: Mapping[str, SkillBuilder]
    storage: FileStorage  # uploaded files, copied into a session's workspace at each run's start
    sandbox: SandboxClient | None = None  # None: no sandbox service configured
    # Set in Celery workers: tells a run when its worker's shutdown grace period is over.
    drain: Drain | None = None

    @property
    def settings(self) -> Settings:
        return self.infra.settings

    @property
    def pool(self) -> AsyncPool:
        return self.infra.pool

    @property
    def redis(self) -> aioredis.Redis:
        return self.infra.redis

    @classmethod
    async def open(cls, settings: Settings, drain: Drain | None = None) -> Services:
        infra = await Infra.open(settings, name="agentos-worker", pool_max=settings.worker.pool_max)
        checkpoint_pool = await open_pool(settings.database, name="agentos-checkpoints", autocommit=True, max_size=2)
        saver = StepSaver(checkpoint_pool, skip_start=True, hold_final="answer")  # RESPOND's, stored with the run's end
        sandbox = (SandboxClient(settings.sandbox, infra.redis, pool=infra.pool, limits_cache_s=settings.limits.cache_s)
                   if settings.sandbox.url else None)
        return cls(infra, checkpoint_pool, default_registry(), build_graph(saver), saver,
                   MemoryService(settings, infra.pool, infra.redis), {"http": build_http_skill},
                   open_storage(settings.files), sandbox, drain)

    async def close(self) -> None:
        if self.sandbox is not None:
            await self.sandbox.aclose()
        await self.checkpoint_pool.close()
        await self.infra.close()


def new_event_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    """The worker's event loop (`AGENTOS_WORKER__EVENT_LOOP`): uvloop's unless `asyncio` is
    chosen or uvloop cannot be imported (`auto`). A run's work is many short awaits on Postgres
    and Redis sockets, where uvloop's loop costs less CPU than asyncio's."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class LoopThread:
    """An event loop in a daemon thread; `run` executes a coroutine there from a synchronous
    caller (a Celery task) and waits for its result."""

    def __init__(self, event_loop: str = "auto") -> None:
        self.pid = os.getpid()
        self._loop = new_event_loop(event_loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentos-runtime", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


class WorkerRuntime(LoopThread):
    """A `LoopThread` with the process's `Services` opened on its loop."""

    def __init__(self, settings: Settings, drain: Drain | None = None) -> None:
        super().__init__(settings.worker.event_loop)
        self.services = self.run(Services.open(settings, drain))

    def close(self) -> None:
        try:
            self.run(self.services.close())
        finally:
            self.stop()


class RuntimeHolder:
    """One `WorkerRuntime` per process, made on first use (so never before a fork)."""

    def __init__(self, settings: Settings, drain: Drain | None = None) -> None:
        self._settings = settings
        self._drain = drain
        self._runtime: WorkerRuntime | None = None
        self._lock = threading.Lock()

    def get(self) -> WorkerRuntime:
        with self._lock:
            if self._runtime is None or self._runtime.pid != os.getpid():
                self._runtime = WorkerRuntime(self._settings, self._drain)
            return self._runtime

    def close(self) -> None:
        with self._lock:
            if self._runtime is not None and self._runtime.pid == os.getpid():
                self._runtime.close()
            self._runtime = None
