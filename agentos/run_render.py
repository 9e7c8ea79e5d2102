"""`agentos run`: start a run over the HTTP API and stream it to the terminal, as any
integration would. The answer goes to stdout; steps, tool calls, sub-agents and any text that
was not the answer go to stderr, so `agentos run assistant "hi" > answer.txt` keeps just the
answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from core.events import TERMINAL_TYPES as TERMINAL


class ClientError(Exception):
    """A request the API refused; the message is the API's error, ready to print."""


@dataclass
class RunClient:
    api_url: str
    api_key: str
    timeout_s: float = 30.0

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {self.api_key}"},
                            timeout=httpx.Timeout(self.timeout_s, read=None))

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._client() as client:
            try:
                response = client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise ClientError(f"cannot reach the API at {self.api_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ClientError(f"{err['code']}: {err['message']}")
            except (ValueError, KeyError, TypeError):
                raise ClientError(f"HTTP {response.status_code}: {response.text[:200]}") from None
        return response.json() if response.content else None

    def skills(self) -> list[dict[str, Any]]:
        """The org's skill catalogue (`GET /v1/skills`)."""
        return list(self._call("GET", "/v1/skills")["data"])

    def find_agent(self, ref: str) -> dict[str, Any]:
        """An agent by id, or by name."""
        if ref.startswith("agt_"):
            agent: dict[str, Any] = self._call("GET", f"/v1/agents/{ref}")
            return agent
        cursor: str | None = None
        while True:
            params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
            page = self._call("GET", "/v1/agents", params=params)
            for agent in page["data"]:
                if agent["name"] == ref:
                    return dict(agent)
            cursor = page["next_cursor"]
            if not cursor:
                raise ClientError(f"no agent named {ref!r} in this organisation")

    def start(self, agent_ref: str, message: str, session_id: str | None, user_id: str | None = None) -> dict[str, Any]:
        """Start a run: in `session_id`, or in a new session of the agent for end user `user_id`."""
        if session_id is None:
            agent = self.find_agent(agent_ref)
            body = {"agent_id": agent["id"], "title": message[:80], **({"user_id": user_id} if user_id else {})}
            session_id = self._call("POST", "/v1/sessions", json=body)["id"]
        run: dict[str, Any] = self._call("POST", f"/v1/sessions/{session_id}/runs", json={"input": message})
        return run

    def decide(self, tool_call_id: str, approve: bool, reason: str | None = None) -> None:
        if approve:
            self._call("POST", f"/v1/tool-calls/{tool_call_id}/approve", json={})
        else:
            self._call("POST", f"/v1/tool-calls/{tool_call_id}/reject", json={"reason": reason})

    def cancel(self, run_id: str) -> None:
        self._call("POST", f"/v1/runs/{run_id}/cancel")

    def events(self, run_id: str) -> Iterator[dict[str, Any]]:
        """The run's events, resuming after a dropped connection, until the terminal one."""
        last: int | None = None
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self._client() as client, client.stream("GET", f"/v1/runs/{run_id}/events",
                                                             headers=headers) as response:
                    if response.status_code >= 400:
                        raise ClientError(f"HTTP {response.status_code} streaming the run")
                    for line in response.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        event = json.loads(line[5:].strip())
                        last = event["seq"]
                        yield event
                        if event["type"] in TERMINAL:
                            return
            except httpx.TransportError:
                continue  # reconnect and resume after the last event seen
            return


# Events of the root agent after which the text it wrote so far was not its answer.
_NOT_THE_END = ("step.started", "tool.call", "subagent.started", "confirmation.required")


class Renderer:
    """Prints a run's events: the root agent's answer to `out`, everything else to `err`.

    With `stream` (stdout is a terminal) the root agent's tokens are printed as they come. Without
    it (stdout is a pipe or a file) each step's text is held until it is known whether it was the
    answer: text followed by a tool call or a delegation of the root agent is narration and goes
    to `err`, so `out` receives only the final answer.
    """

    def __init__(self, out: Console, err: Console, root_agent: str, *, stream: bool = True) -> None:
        self.out, self.err, self.root_agent, self.stream = out, err, root_agent, stream
        self.held = ""  # the root agent's text of the current step (when not streaming)
        self.at_line_start = {"out": True, "err": True}
        self.starts = 0
        self.decided_since_start = False

    def _text(self, where: str, text: str) -> None:
        console = self.out if where == "out" else self.err
        console.print(text, end="", style=None if where == "out" else "dim", highlight=False, markup=False)
        self.at_line_start[where] = text.endswith("\n")

    def _end_lines(self) -> None:
        for where, console in (("out", self.out), ("err", self.err)):
            if not self.at_line_start[where]:
                console.print()
                self.at_line_start[where] = True

    def _release(self, where: str) -> None:
        if self.held:
            self._text(where, self.held)
            self.held = ""

    def feed(self, event: dict[str, Any]) -> bool:
        """Print one event; True once the terminal one was printed."""
        kind, data = event["type"], event["data"]
        root = data.get("agent_id", self.root_agent) == self.root_agent
        if kind == "message.delta":
            if not root:
                self._text("err", data["text"])
            elif self.stream:
                self._text("out", data["text"])
            else:
                self.held += data["text"]
            return False
        if kind in TERMINAL:
            self._release("out" if kind == "run.succeeded" else "err")
        elif root and kind in _NOT_THE_END and not (kind == "step.started" and data.get("node") == "respond"):
            self._release("err")  # the text was followed by more work: it was not the answer
        self._end_lines()
        err = self.err
        if kind == "run.started":
            self.starts += 1
            if self.starts == 1 and data.get("attempt", 1) == 1:
                err.print(f"[dim]▶ run {event['run_id']} started[/dim]")
            elif self.decided_since_start:
                err.print(f"[dim]▶ run {event['run_id']} resumed[/dim]")
            else:  # its worker stopped (or the stream began after a takeover): another one took over
                err.print(f"[dim]▶ run {event['run_id']} resumed on another worker (attempt {data.get('attempt')})"
                          "[/dim]")
            self.decided_since_start = False
        elif kind == "step.started":
            err.print(f"[dim]· {data['node']}[/dim]")
        elif kind == "tool.call":
            err.print(f"[cyan]→ {escape(data['name'])}[/cyan] {escape(json.dumps(data['args'])[:200])}",
                      highlight=False)
        elif kind == "tool.result":
            text = f"error: {data['error']}" if data.get("error") else json.dumps(data.get("output"))[:200]
            err.print(f"[cyan]←[/cyan] {escape(text)}", highlight=False)
        elif kind == "subagent.started":
            err.print(f"[magenta]⇢ delegating to {data.get('name', data['agent_id'])}[/magenta]")
        elif kind == "subagent.completed":
            err.print(f"[magenta]⇠ {data.get('name', data['agent_id'])} done[/magenta]")
        elif kind == "confirmation.required":
            err.print(f"[yellow]⏸ {escape(data['name'])} {escape(json.dumps(data['args'])[:300])} needs your "
                      "approval[/yellow]", highlight=False)
        elif kind == "confirmation.resolved":
            self.decided_since_start = True
            err.print(f"[yellow]  {data['decision']}[/yellow]")
        return kind in TERMINAL


def render(
    events: Iterator[dict[str, Any]], out: Console, err: Console, root_agent: str,
    on_confirm: Callable[[dict[str, Any]], None] | None = None, *, stream: bool = True,
) -> dict[str, Any]:
    """Print a run's events (see `Renderer`); return its terminal event. `on_confirm` is called
    with the data of each `confirmation.required` (a call waiting for a human)."""
    renderer = Renderer(out, err, root_agent, stream=stream)
    for event in events:
        if renderer.feed(event):
            return event
        if event["type"] == "confirmation.required" and on_confirm is not None:
            on_confirm(event["data"])
    return {"type": "run.failed", "data": {"error": {"code": "STREAM_ENDED", "message": "the stream ended early"}}}
