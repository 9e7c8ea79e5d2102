"""`agentos run`: start a run over the HTTP API and stream it to the terminal, as any
integration would. The answer goes to stdout; steps, tool calls, sub-agents and any text that
was not the answer go to stderr, so `agentos run assistant "hi" > answer.txt` keeps just the
answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape

from agentos.client import Event
from agentos.client.models import TERMINAL_EVENTS as TERMINAL

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

    def feed(self, event: Event) -> bool:
        """Print one event; True once the terminal one was printed."""
        kind, data = event.type, event.data
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
                err.print(f"[dim]▶ run {event.run_id} started[/dim]")
            elif self.decided_since_start:
                err.print(f"[dim]▶ run {event.run_id} resumed[/dim]")
            else:  # its worker stopped (or the stream began after a takeover): another one took over
                err.print(f"[dim]▶ run {event.run_id} resumed on another worker (attempt {data.get('attempt')})"
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
    events: Iterator[Event], out: Console, err: Console, root_agent: str,
    on_confirm: Callable[[dict[str, Any]], None] | None = None, *, stream: bool = True,
) -> Event:
    """Print a run's events (see `Renderer`); return its terminal event. `on_confirm` is called
    with the data of each `confirmation.required` (a call waiting for a human)."""
    renderer = Renderer(out, err, root_agent, stream=stream)
    for event in events:
        if renderer.feed(event):
            return event
        if event.type == "confirmation.required" and on_confirm is not None:
            on_confirm(event.data)
    ended = {"code": "STREAM_ENDED", "message": "the stream ended early"}
    return Event(seq=0, type="run.failed", data={"error": ended})
