"""`agentos run`: start a run over the HTTP API and stream it to the terminal, as any
integration would. The answer's tokens go to stdout; steps, tool calls and sub-agents go to
stderr, so `agentos run assistant "hi" > answer.txt` keeps just the answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console

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

    def start(self, agent_ref: str, message: str, session_id: str | None) -> dict[str, Any]:
        if session_id is None:
            agent = self.find_agent(agent_ref)
            session_id = self._call("POST", "/v1/sessions", json={"agent_id": agent["id"], "title": message[:80]})["id"]
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


def render(
    events: Iterator[dict[str, Any]], out: Console, err: Console, root_agent: str,
    on_confirm: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Print a run's events; return its terminal event. `on_confirm` is called with the data of
    each `confirmation.required` (a call waiting for a human)."""
    at_line_start = True
    for event in events:
        kind, data = event["type"], event["data"]
        if kind == "message.delta":
            sub = data.get("agent_id") != root_agent
            out.print(data["text"], end="", style="dim" if sub else None, highlight=False, markup=False)
            at_line_start = data["text"].endswith("\n")
            continue
        if not at_line_start:
            out.print()
            at_line_start = True
        if kind == "run.started":
            err.print(f"[dim]▶ run {event['run_id']} started (attempt {data.get('attempt')})[/dim]")
        elif kind == "step.started":
            err.print(f"[dim]· {data['node']}[/dim]")
        elif kind == "tool.call":
            err.print(f"[cyan]→ {data['name']}[/cyan] {json.dumps(data['args'])[:200]}", markup=True)
        elif kind == "tool.result":
            text = f"error: {data['error']}" if data.get("error") else json.dumps(data.get("output"))[:200]
            err.print(f"[cyan]←[/cyan] {text}", highlight=False)
        elif kind == "subagent.started":
            err.print(f"[magenta]⇢ delegating to {data.get('name', data['agent_id'])}[/magenta]")
        elif kind == "subagent.completed":
            err.print(f"[magenta]⇠ {data.get('name', data['agent_id'])} done[/magenta]")
        elif kind == "confirmation.required":
            err.print(f"[yellow]⏸ {data['name']} {json.dumps(data['args'])[:300]} needs your approval[/yellow]",
                      highlight=False)
            if on_confirm is not None:
                on_confirm(data)
        elif kind == "confirmation.resolved":
            err.print(f"[yellow]  {data['decision']}[/yellow]")
        elif kind in TERMINAL:
            return event
    return {"type": "run.failed", "data": {"error": {"code": "STREAM_ENDED", "message": "the stream ended early"}}}
