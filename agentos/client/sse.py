"""Following a run's event stream across dropped connections, without the transport: the SSE
wire format (docs/api.md, "Wire format") read line by line, and the cursor that makes each
reconnect resume exactly after the last event delivered (`Last-Event-ID`), so a caller sees every
event once, in order, up to the terminal one."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx

from agentos.client.calls import Reply, Request, create_run
from agentos.client.errors import AgentOSError, ConnectionFailed, error_from_response
from agentos.client.models import Event
from agentos.client.retry import RetryPolicy


class SseParser:
    """Lines in, events out: fields gather until a blank line; comments (`: ping`) are skipped."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, line: str) -> Event | None:
        if line == "":
            data, self._data = self._data, []
            return Event.model_validate(json.loads("\n".join(data))) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        # `id` and `event` repeat what the data holds (`seq`, `type`); the data is read instead.
        return None


class RunFollower:
    """The state of one `runs.events(run_id)` (or `runs.stream(...)`): which request opens (or
    reopens) the stream, which events to pass on, and whether and when to reconnect.

    A reconnect sends `Last-Event-ID` with the last seq passed on, so the server resumes right
    after it; an event at or below that seq (none should come) is dropped rather than repeated.
    Failures in a row without a new event are bounded by the retry policy; any new event resets
    the count, so a long run survives any number of drops.

    Given `create` (a run's POST, with its Idempotency-Key) instead of a run id, the stream opens
    with that POST asking for `text/event-stream`: the run is made and streamed in one request.
    Until its first event arrives the POST is what is sent again (the key replays the run it
    made, streamed from its start); after that, the run's `GET .../events`."""

    def __init__(self, base_url: str, run_id: str | None, policy: RetryPolicy, after: int | None = None,
                 create: Request | None = None) -> None:
        if (run_id is None) == (create is None):
            raise ValueError("follow either a run_id or the run a create request makes")
        self.base_url, self.run_id, self.policy = base_url, run_id, policy
        self.last_seq = after
        self.done = False
        self.reconnects = 0
        self._failures = 0
        self._parser = SseParser()
        self._create = create

    def request(self) -> Request:
        headers = {"Accept": "text/event-stream"}
        self._parser = SseParser()  # a half-received event of a broken connection is sent again
        if self.run_id is None:
            assert self._create is not None
            return replace(self._create, headers={**self._create.headers, **headers})
        if self.last_seq is not None:
            headers["Last-Event-ID"] = str(self.last_seq)
        return Request("GET", f"/v1/runs/{self.run_id}/events", headers=headers)

    def refused(self, reply: Reply) -> float:
        """The stream was not opened (`reply` is an error): the delay before trying again, or raise."""
        delay = self.policy.delay_after_reply(reply, self._failures)
        if delay is None:
            raise error_from_response(reply.status, reply.headers, reply.body)
        self._failures += 1
        return delay

    def line(self, line: str) -> Event | None:
        """The event a line completes, if it is one to pass on."""
        event = self._parser.line(line)
        if event is None or (self.last_seq is not None and event.seq <= self.last_seq):
            return None
        self.last_seq, self._failures = event.seq, 0
        self.run_id = self.run_id or event.run_id  # a created run's first event names it
        self.done = event.terminal
        return event

    def dropped(self, exc: httpx.TransportError | None) -> float:
        """The connection broke (`exc`), or the stream ended before the terminal event (None): the
        delay before reconnecting, or raise once the failures in a row are used up."""
        if self._failures >= self.policy.max_retries:
            if exc is None:
                raise AgentOSError(f"the event stream of run {self._name} kept ending before the run did",
                                   code="STREAM_ENDED")
            raise ConnectionFailed(f"lost the event stream of run {self._name} at {self.base_url}: {exc}",
                                   maybe_handled=True)
        if exc is not None and not isinstance(exc, (httpx.NetworkError, httpx.TimeoutException,
                                                    httpx.RemoteProtocolError)):
            raise ConnectionFailed(f"cannot stream run {self._name} from {self.base_url}: {exc}", maybe_handled=True)
        delay = self.policy.backoff_s(self._failures)
        self._failures += 1
        self.reconnects += 1
        return delay

    @classmethod
    def creating(cls, base_url: str, policy: RetryPolicy, session_id: str, input: str, fields: dict[str, Any],
                 idempotency_key: str | None) -> RunFollower:
        """The follower of a run made by its own POST (`runs.stream`), with one Idempotency-Key
        for every time the POST is sent."""
        return cls(base_url, None, policy, create=create_run(session_id, input, fields, idempotency_key).request)

    @property
    def _name(self) -> str:
        return self.run_id or "(being created)"
