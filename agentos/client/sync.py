"""`Client`: the API over blocking HTTP (httpx). What each call sends and means is in `calls`,
when to retry in `retry`, how a stream resumes in `sse`; this module only carries them."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, TypeVar

import httpx

from agentos.client import calls
from agentos.client.calls import Call, Reply, Request
from agentos.client.config import ClientConfig
from agentos.client.models import Agent, ApiKey, Event, Message, Page, Principal, Run, Session, ToolCall
from agentos.client.retry import Attempts
from agentos.client.sse import RunFollower

T = TypeVar("T")


class Client:
    """The AgentOS API for Python code that blocks. `Client()` reads `AGENTOS_API_URL` and
    `AGENTOS_API_KEY`; or pass `base_url` and an `api_key` or a `jwt` (both sent as Bearer).
    Use it as a context manager, or `close()` it."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, jwt: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 4, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = ClientConfig.make(base_url, api_key, jwt, timeout_s, max_retries)
        self._http = http or httpx.Client(timeout=self.config.timeout())
        self._sleep = sleep
        self.agents = Agents(self)
        self.sessions = Sessions(self)
        self.runs = Runs(self)
        self.tool_calls = ToolCalls(self)
        self.api_keys = ApiKeys(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: Request, stream: bool = False) -> httpx.Response:
        built = self._http.build_request(**self.config.httpx_args(request))
        return self._http.send(built, stream=stream)

    def call(self, call: Call[T]) -> T:
        """Send `call`, again while the retry policy says so; its result, or the error raised."""
        attempts = Attempts(call, self.config.policy, self.config.base_url)
        while (delay := attempts.after(self._attempt(call.request))) is not None:
            self._sleep(delay)
        return attempts.result

    def _attempt(self, request: Request) -> Reply | httpx.TransportError:
        try:
            response = self._send(request)
        except httpx.TransportError as exc:
            return exc
        return Reply(response.status_code, response.headers, response.content)

    def pages(self, first: Callable[[str | None], Call[Page[T]]]) -> Iterator[T]:
        """Every item of a list, page after page (`first(cursor)` makes each page's call)."""
        cursor: str | None = None
        while True:
            page = self.call(first(cursor))
            yield from page.data
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def me(self) -> Principal:
        return self.call(calls.me())

    def skills(self) -> list[dict[str, Any]]:
        """The org's skill catalogue, schemas included."""
        return self.call(calls.skills())

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                params: dict[str, str] | None = None) -> Any:
        """Any other route: its JSON answer (errors raised as for every call)."""
        return self.call(calls.raw(method, path, body, params))


class Agents:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, **fields: Any) -> Agent:
        """`POST /v1/agents`: fields as docs/api.md lists them (instructions, model, skills, ...)."""
        return self._c.call(calls.create_agent(name, fields))

    def get(self, agent_id: str) -> Agent:
        return self._c.call(calls.get_agent(agent_id))

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Agent]:
        return self._c.call(calls.list_agents(limit, cursor))

    def iter(self, *, limit: int | None = None) -> Iterator[Agent]:
        return self._c.pages(lambda cursor: calls.list_agents(limit, cursor))

    def update(self, agent_id: str, **fields: Any) -> Agent:
        return self._c.call(calls.update_agent(agent_id, fields))

    def delete(self, agent_id: str) -> None:
        self._c.call(calls.delete_agent(agent_id))


class Sessions:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, agent_id: str, **fields: Any) -> Session:
        """`POST /v1/sessions`: optional title, user_id, metadata."""
        return self._c.call(calls.create_session(agent_id, fields))

    def get(self, session_id: str) -> Session:
        return self._c.call(calls.get_session(session_id))

    def list(self, *, agent_id: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> Page[Session]:
        return self._c.call(calls.list_sessions(agent_id, limit, cursor))

    def iter(self, *, agent_id: str | None = None, limit: int | None = None) -> Iterator[Session]:
        return self._c.pages(lambda cursor: calls.list_sessions(agent_id, limit, cursor))

    def delete(self, session_id: str) -> None:
        self._c.call(calls.delete_session(session_id))

    def messages(self, session_id: str, *, order: str | None = None, limit: int | None = None) -> Iterator[Message]:
        return self._c.pages(lambda cursor: calls.list_messages(session_id, order, limit, cursor))


class Runs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, session_id: str, input: str, *, idempotency_key: str | None = None, **fields: Any) -> Run:
        """Start a run (`202`, the run `queued`); optional multitask, metadata. Retried with one
        Idempotency-Key (`idempotency_key`, or one made for this call), so it never starts twice."""
        return self._c.call(calls.create_run(session_id, input, fields, idempotency_key))

    def get(self, run_id: str) -> Run:
        return self._c.call(calls.get_run(run_id))

    def list(self, session_id: str, *, limit: int | None = None, cursor: str | None = None) -> Page[Run]:
        return self._c.call(calls.list_runs(session_id, limit, cursor))

    def iter(self, session_id: str, *, limit: int | None = None) -> Iterator[Run]:
        return self._c.pages(lambda cursor: calls.list_runs(session_id, limit, cursor))

    def cancel(self, run_id: str) -> Run:
        return self._c.call(calls.cancel_run(run_id))

    def wait(self, run_id: str, timeout_s: float | None = None) -> Run:
        """The run once it ended; with `timeout_s`, the run as it is then if it has not (check
        `run.terminal`). Waits on the server (`GET /wait`), not by polling `GET /runs`."""
        clock = calls.WaitClock(timeout_s, time.monotonic)
        while True:
            run = self._c.call(calls.wait_poll(run_id, clock.next_poll_s()))
            if clock.done(run):
                return run

    def tool_calls(self, run_id: str) -> builtins.list[ToolCall]:
        return self._c.call(calls.run_tool_calls(run_id))

    def events(self, run_id: str, *, after: int | None = None) -> Iterator[Event]:
        """The run's events from its first (or after seq `after`) to its terminal one, each once
        and in order, reconnecting with `Last-Event-ID` whenever the connection drops."""
        return self._follow(RunFollower(self._c.config.base_url, run_id, self._c.config.policy, after))

    def stream(self, session_id: str, input: str, *, idempotency_key: str | None = None,
               **fields: Any) -> Iterator[Event]:
        """Start a run and follow it in one request (`Accept: text/event-stream`): its events from
        `run.queued` (whose `run_id` names it) to the terminal one, as `events` gives them. A retry
        before the first event sends the POST again with the same Idempotency-Key, so the run
        never starts twice; later drops resume with `GET .../events` and `Last-Event-ID`."""
        config = self._c.config
        return self._follow(RunFollower.creating(config.base_url, config.policy, session_id, input, fields,
                                                 idempotency_key))

    def _follow(self, follower: RunFollower) -> Iterator[Event]:
        while not follower.done:
            try:
                with closing(self._c._send(follower.request(), stream=True)) as response:
                    if response.status_code >= 400:
                        delay = follower.refused(Reply(response.status_code, response.headers, response.read()))
                    else:
                        for line in response.iter_lines():
                            if (event := follower.line(line)) is not None:
                                yield event
                                if follower.done:
                                    return
                        delay = follower.dropped(None)
            except httpx.TransportError as exc:
                delay = follower.dropped(exc)
            self._c._sleep(delay)


class ToolCalls:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self, *, status: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> Page[ToolCall]:
        return self._c.call(calls.list_tool_calls(status, limit, cursor))

    def pending(self) -> Iterator[ToolCall]:
        """The approval inbox: every call of the org waiting for a human, newest first."""
        return self._c.pages(lambda cursor: calls.list_tool_calls("pending", None, cursor))

    def approve(self, tool_call_id: str, args: dict[str, Any] | None = None) -> ToolCall:
        """Approve a pending call, optionally with edited `args`."""
        return self._c.call(calls.approve(tool_call_id, args))

    def reject(self, tool_call_id: str, reason: str | None = None) -> ToolCall:
        return self._c.call(calls.reject(tool_call_id, reason))


class ApiKeys:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, **fields: Any) -> ApiKey:
        """`POST /v1/api-keys` (role, expires_at); `.key` holds the secret, in this answer only."""
        return self._c.call(calls.create_api_key(name, fields))

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[ApiKey]:
        return self._c.call(calls.list_api_keys(limit, cursor))

    def iter(self, *, limit: int | None = None) -> Iterator[ApiKey]:
        return self._c.pages(lambda cursor: calls.list_api_keys(limit, cursor))

    def revoke(self, key_id: str) -> ApiKey:
        return self._c.call(calls.revoke_api_key(key_id))
