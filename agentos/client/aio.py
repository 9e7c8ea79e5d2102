"""`AsyncClient`: the API over asyncio HTTP (httpx), call for call the same as `Client`
(agentos/client/sync.py); what each call sends and means is in `calls`, when to retry in
`retry`, how a stream resumes in `sse`; this module only carries them."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx

from agentos.client import calls
from agentos.client.calls import Call, Reply, Request
from agentos.client.config import ClientConfig
from agentos.client.models import Agent, ApiKey, Event, Message, Page, Principal, Run, Session, ToolCall
from agentos.client.retry import Attempts
from agentos.client.sse import RunFollower

T = TypeVar("T")


class AsyncClient:
    """The AgentOS API for asyncio code. `AsyncClient()` reads `AGENTOS_API_URL` and
    `AGENTOS_API_KEY`; or pass `base_url` and an `api_key` or a `jwt` (both sent as Bearer).
    Use it as an async context manager, or `await close()` it."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, jwt: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 4, http: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = ClientConfig.make(base_url, api_key, jwt, timeout_s, max_retries)
        self._http = http or httpx.AsyncClient(timeout=self.config.timeout())
        self._sleep = sleep
        self.agents = Agents(self)
        self.sessions = Sessions(self)
        self.runs = Runs(self)
        self.tool_calls = ToolCalls(self)
        self.api_keys = ApiKeys(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, request: Request, stream: bool = False) -> httpx.Response:
        built = self._http.build_request(**self.config.httpx_args(request))
        return await self._http.send(built, stream=stream)

    async def call(self, call: Call[T]) -> T:
        """Send `call`, again while the retry policy says so; its result, or the error raised."""
        attempts = Attempts(call, self.config.policy, self.config.base_url)
        while (delay := attempts.after(await self._attempt(call.request))) is not None:
            await self._sleep(delay)
        return attempts.result

    async def _attempt(self, request: Request) -> Reply | httpx.TransportError:
        try:
            response = await self._send(request)
        except httpx.TransportError as exc:
            return exc
        return Reply(response.status_code, response.headers, response.content)

    async def pages(self, first: Callable[[str | None], Call[Page[T]]]) -> AsyncIterator[T]:
        """Every item of a list, page after page (`first(cursor)` makes each page's call)."""
        cursor: str | None = None
        while True:
            page = await self.call(first(cursor))
            for item in page.data:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def me(self) -> Principal:
        return await self.call(calls.me())

    async def skills(self) -> list[dict[str, Any]]:
        """The org's skill catalogue, schemas included."""
        return await self.call(calls.skills())

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      params: dict[str, str] | None = None) -> Any:
        """Any other route: its JSON answer (errors raised as for every call)."""
        return await self.call(calls.raw(method, path, body, params))


class Agents:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, name: str, **fields: Any) -> Agent:
        """`POST /v1/agents`: fields as docs/api.md lists them (instructions, model, skills, ...)."""
        return await self._c.call(calls.create_agent(name, fields))

    async def get(self, agent_id: str) -> Agent:
        return await self._c.call(calls.get_agent(agent_id))

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Agent]:
        return await self._c.call(calls.list_agents(limit, cursor))

    def iter(self, *, limit: int | None = None) -> AsyncIterator[Agent]:
        return self._c.pages(lambda cursor: calls.list_agents(limit, cursor))

    async def update(self, agent_id: str, **fields: Any) -> Agent:
        return await self._c.call(calls.update_agent(agent_id, fields))

    async def delete(self, agent_id: str) -> None:
        await self._c.call(calls.delete_agent(agent_id))


class Sessions:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, agent_id: str, **fields: Any) -> Session:
        """`POST /v1/sessions`: optional title, user_id, metadata."""
        return await self._c.call(calls.create_session(agent_id, fields))

    async def get(self, session_id: str) -> Session:
        return await self._c.call(calls.get_session(session_id))

    async def list(self, *, agent_id: str | None = None, limit: int | None = None,
                   cursor: str | None = None) -> Page[Session]:
        return await self._c.call(calls.list_sessions(agent_id, limit, cursor))

    def iter(self, *, agent_id: str | None = None, limit: int | None = None) -> AsyncIterator[Session]:
        return self._c.pages(lambda cursor: calls.list_sessions(agent_id, limit, cursor))

    async def delete(self, session_id: str) -> None:
        await self._c.call(calls.delete_session(session_id))

    def messages(self, session_id: str, *, order: str | None = None,
                 limit: int | None = None) -> AsyncIterator[Message]:
        return self._c.pages(lambda cursor: calls.list_messages(session_id, order, limit, cursor))


class Runs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, session_id: str, input: str, *, idempotency_key: str | None = None,
                     **fields: Any) -> Run:
        """Start a run (`202`, the run `queued`); optional multitask, metadata. Retried with one
        Idempotency-Key (`idempotency_key`, or one made for this call), so it never starts twice."""
        return await self._c.call(calls.create_run(session_id, input, fields, idempotency_key))

    async def get(self, run_id: str) -> Run:
        return await self._c.call(calls.get_run(run_id))

    async def list(self, session_id: str, *, limit: int | None = None, cursor: str | None = None) -> Page[Run]:
        return await self._c.call(calls.list_runs(session_id, limit, cursor))

    def iter(self, session_id: str, *, limit: int | None = None) -> AsyncIterator[Run]:
        return self._c.pages(lambda cursor: calls.list_runs(session_id, limit, cursor))

    async def cancel(self, run_id: str) -> Run:
        return await self._c.call(calls.cancel_run(run_id))

    async def wait(self, run_id: str, timeout_s: float | None = None) -> Run:
        """The run once it ended; with `timeout_s`, the run as it is then if it has not (check
        `run.terminal`). Waits on the server (`GET /wait`), not by polling `GET /runs`."""
        clock = calls.WaitClock(timeout_s, time.monotonic)
        while True:
            run = await self._c.call(calls.wait_poll(run_id, clock.next_poll_s()))
            if clock.done(run):
                return run

    async def tool_calls(self, run_id: str) -> builtins.list[ToolCall]:
        return await self._c.call(calls.run_tool_calls(run_id))

    def events(self, run_id: str, *, after: int | None = None) -> AsyncIterator[Event]:
        """The run's events from its first (or after seq `after`) to its terminal one, each once
        and in order, reconnecting with `Last-Event-ID` whenever the connection drops."""
        return self._follow(RunFollower(self._c.config.base_url, run_id, self._c.config.policy, after))

    def stream(self, session_id: str, input: str, *, idempotency_key: str | None = None,
               **fields: Any) -> AsyncIterator[Event]:
        """`Client.runs.stream`: a run started and followed in one request."""
        config = self._c.config
        return self._follow(RunFollower.creating(config.base_url, config.policy, session_id, input, fields,
                                                 idempotency_key))

    async def _follow(self, follower: RunFollower) -> AsyncIterator[Event]:
        while not follower.done:
            try:
                response = await self._c._send(follower.request(), stream=True)
                try:
                    if response.status_code >= 400:
                        delay = follower.refused(Reply(response.status_code, response.headers, await response.aread()))
                    else:
                        async for line in response.aiter_lines():
                            if (event := follower.line(line)) is not None:
                                yield event
                                if follower.done:
                                    return
                        delay = follower.dropped(None)
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                delay = follower.dropped(exc)
            await self._c._sleep(delay)


class ToolCalls:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self, *, status: str | None = None, limit: int | None = None,
                   cursor: str | None = None) -> Page[ToolCall]:
        return await self._c.call(calls.list_tool_calls(status, limit, cursor))

    def pending(self) -> AsyncIterator[ToolCall]:
        """The approval inbox: every call of the org waiting for a human, newest first."""
        return self._c.pages(lambda cursor: calls.list_tool_calls("pending", None, cursor))

    async def approve(self, tool_call_id: str, args: dict[str, Any] | None = None) -> ToolCall:
        """Approve a pending call, optionally with edited `args`."""
        return await self._c.call(calls.approve(tool_call_id, args))

    async def reject(self, tool_call_id: str, reason: str | None = None) -> ToolCall:
        return await self._c.call(calls.reject(tool_call_id, reason))


class ApiKeys:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, name: str, **fields: Any) -> ApiKey:
        """`POST /v1/api-keys` (role, expires_at); `.key` holds the secret, in this answer only."""
        return await self._c.call(calls.create_api_key(name, fields))

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[ApiKey]:
        return await self._c.call(calls.list_api_keys(limit, cursor))

    def iter(self, *, limit: int | None = None) -> AsyncIterator[ApiKey]:
        return self._c.pages(lambda cursor: calls.list_api_keys(limit, cursor))

    async def revoke(self, key_id: str) -> ApiKey:
        return await self._c.call(calls.revoke_api_key(key_id))
