"""The runner's one connection to the platform (docs/runners.md).

It connects outward (no inbound port): `GET /v1/runner/calls` is an SSE stream of the calls
routed to this runner, with a heartbeat every few seconds; each result goes back as
`POST /v1/runner/calls/{id}/result`. The link is assumed to break at any moment:

- no byte for `heartbeat_timeout_s` (three missed heartbeats) means a dead link: reconnect;
- reconnects back off exponentially with full jitter, and start over after a success;
- the platform sends every unanswered call again on each connect, and the journal
  (`agentos.runner.journal`) turns a call seen before into its stored result, so none runs twice;
- a result is posted until the platform acknowledges it (posting twice is harmless), and results
  not yet acknowledged are posted again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from agentos.runner.journal import Journal
from agentos.runner.tools import Executor, changes_files
from agentos.runner.workspace import WorkspaceError

log = logging.getLogger("agentos.runner")


class RunnerRefused(Exception):
    """The platform refused this runner's token (revoked, or wrong): reconnecting cannot help."""


@dataclass(frozen=True)
class LinkConfig:
    api_url: str
    token: str
    heartbeat_timeout_s: float = 20.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    concurrency: int = 4
    # An ended run's worktree is removed this long after the runner learned the run ended
    # (its branch stays); negative: never.
    worktree_grace_s: float = 3600.0


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2^attempt)]."""
    return random.uniform(0, min(max_s, base_s * (2 ** min(attempt, 30))))


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event type, data) of each event of an SSE stream; comments (pings) are skipped."""
    kind, data = "message", list[str]()
    async for line in lines:
        if line == "":
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the state directory for the process's life: one runner per
    journal, so a call left `started` in it really belongs to a process that is gone."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = (state_dir / "runner.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"Another runner uses {state_dir}; give each runner its own --state-dir.") from None
    return handle


class Link:
    def __init__(self, config: LinkConfig, executor: Executor, journal: Journal) -> None:
        self.config = config
        self.executor = executor
        self.journal = journal
        self._inflight: set[str] = set()  # calls executing or being posted now
        self._finishing: set[str] = set()  # runs whose workspace is being committed and reported
        self._removing: set[str] = set()  # ended runs whose worktree removal is scheduled
        self._slots = asyncio.Semaphore(config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.connections = 0
        # Set (and replaced) at each new connection: wakes results waiting to be posted again.
        self._reconnected = asyncio.Event()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token}"}

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set; raises RunnerRefused on a refused token."""
        recovered = self.journal.recover()
        if recovered:
            log.warning("%d call(s) were running when the runner stopped; they are answered as failed", recovered)
        # Runs that ended before a restart: their worktrees go when their grace is over.
        ended = await asyncio.to_thread(self.executor.workspaces.ended_worktrees)
        for run_id, ended_at in ended.items():
            self._schedule_removal(run_id, ended_at)
        timeout = httpx.Timeout(10.0, read=self.config.heartbeat_timeout_s)
        async with httpx.AsyncClient(base_url=self.config.api_url, headers=self._headers(), timeout=timeout) as http:
            attempt = 0
            try:
                while not stop.is_set():
                    stream = asyncio.ensure_future(self._stream(http))
                    stopping = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({stream, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    if not stream.done():
                        stream.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await stream
                        break
                    self.connected.clear()
                    try:
                        got_calls = stream.result()
                        attempt = 0 if got_calls else attempt
                    except RunnerRefused:
                        raise
                    except (httpx.HTTPError, OSError, ValueError) as exc:
                        log.warning("link to %s lost: %s", self.config.api_url, exc or type(exc).__name__)
                    delay = backoff_delay(attempt, self.config.backoff_base_s, self.config.backoff_max_s)
                    attempt += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stream(self, http: httpx.AsyncClient) -> bool:
        """One connection, until it ends; True when it was established (resets the backoff)."""
        async with http.stream("GET", "/v1/runner/calls", headers={"Accept": "text/event-stream"}) as response:
            if response.status_code == 401:
                raise RunnerRefused("the platform refused this runner's token (revoked or wrong)")
            response.raise_for_status()
            self.connections += 1
            self.connected.set()
            self._reconnected.set()
            self._reconnected = asyncio.Event()
            log.info("connected to %s", self.config.api_url)
            for entry in self.journal.unposted():  # answers the platform may not have yet
                if entry.id not in self._inflight and entry.result is not None:
                    self._spawn(self._post(http, entry.id, entry.result))
            async for kind, data in sse_events(response.aiter_lines()):
                if kind == "call":
                    self._receive(http, json.loads(data))
                elif kind == "run_ended":
                    ended = json.loads(data)
                    if ended["run_id"] not in self._finishing:
                        self._finishing.add(ended["run_id"])
                        self._spawn(self._finish_run(http, str(ended["run_id"]), str(ended["status"])))
        return True

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _receive(self, http: httpx.AsyncClient, call: dict[str, Any]) -> None:
        call_id = str(call["id"])
        if call_id in self._inflight:  # sent again while it runs: its result is on its way
            return
        # A call seen before is found by `_execute` (its `start` fails): one journal write for a
        # new call, no read first.
        self._inflight.add(call_id)
        self._spawn(self._execute(http, call_id, str(call["run_id"]), str(call["name"]), dict(call["args"])))

    async def _execute(self, http: httpx.AsyncClient, call_id: str, run_id: str, name: str,
                       args: dict[str, Any]) -> None:
        async with self._slots:
            if not self.journal.start(call_id, run_id, name, durable=changes_files(name, args)):
                # Seen before (sent again after a reconnect, a restart or a resumed run): never a
                # second run. Done: its journaled result; only started: the runner stopped mid-call.
                entry = self.journal.get(call_id)
                if entry is not None and entry.state == "done" and entry.result is not None:
                    result = entry.result
                else:
                    result = self.journal.interrupted(call_id)
                log.info("call %s was seen before: answering with its journaled result", call_id)
            else:
                result = await self.executor.execute(run_id, name, args)
                self.journal.finish(call_id, result)
        await self._post(http, call_id, result)

    async def _finish_run(self, http: httpx.AsyncClient, run_id: str, status: str) -> None:
        """Commit an ended run's workspace and report it (the platform asks again until it has it)."""
        try:
            report = await asyncio.to_thread(self.executor.workspaces.finish, run_id, status)
            if report["branch"] is not None:
                self._schedule_removal(run_id, time.time())
            response = await http.post(f"/v1/runner/runs/{run_id}/workspace", json=report)
            if response.status_code != 200:
                log.warning("workspace of %s: HTTP %s", run_id, response.status_code)
        except (httpx.HTTPError, WorkspaceError, OSError) as exc:
            log.warning("workspace of %s not reported (%s); the platform will ask again", run_id, exc)
        finally:
            self._finishing.discard(run_id)

    def _schedule_removal(self, run_id: str, ended_at: float) -> None:
        grace = self.config.worktree_grace_s
        if grace < 0 or run_id in self._removing:
            return
        self._removing.add(run_id)
        self._spawn(self._remove_later(run_id, max(0.0, ended_at + grace - time.time())))

    async def _remove_later(self, run_id: str, delay_s: float) -> None:
        """Remove an ended run's worktree once its grace is over (the branch stays)."""
        try:
            await asyncio.sleep(delay_s)
            if await asyncio.to_thread(self.executor.workspaces.remove, run_id):
                log.info("removed the worktree of ended run %s (its branch stays)", run_id)
        except (WorkspaceError, OSError) as exc:
            log.warning("worktree of %s not removed: %s", run_id, exc)
        finally:
            self._removing.discard(run_id)

    async def _post(self, http: httpx.AsyncClient, call_id: str, result: dict[str, Any]) -> None:
        """Post until acknowledged (a lost answer is posted again: the platform keeps the first)."""
        self._inflight.add(call_id)
        attempt = 0
        try:
            while True:
                reconnected = self._reconnected
                try:
                    response = await http.post(f"/v1/runner/calls/{call_id}/result", json=result)
                    if response.status_code in (200, 404):  # 404: the platform no longer has the call
                        self.journal.posted(call_id)
                        return
                    if response.status_code == 401:
                        log.error("result of %s refused: the runner's token is no longer valid", call_id)
                        return
                    log.warning("result of %s: HTTP %s; retrying", call_id, response.status_code)
                except httpx.HTTPError as exc:
                    log.info("result of %s not acknowledged (%s); retrying", call_id, type(exc).__name__)
                if attempt == 0:  # it waits for the link: on disk, not only in the page cache
                    await asyncio.to_thread(self.journal.sync)
                # Until the next attempt's time, or the link's return (after a drop mid-call, the
                # platform accepts the result once the runner is connected again).
                delay = backoff_delay(attempt, self.config.backoff_base_s, self.config.backoff_max_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reconnected.wait(), delay)
                attempt += 1
        finally:
            self._inflight.discard(call_id)
