"""When to send a call again and how long to wait first: exponential backoff with jitter on
`429`, `503` and broken connections, never sooner than the server's `Retry-After`.

A broken connection is retried only when that cannot do a thing twice: when the request never
left (the connection could not be made), or when the call is `replayable` (a read, or a write
the API deduplicates by its `Idempotency-Key`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import httpx

from agentos.client.calls import Call, Reply, Request
from agentos.client.errors import ConnectionFailed, retry_after_s

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 503})
# Failures that happen before any byte of the request reached the server.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after the request went out: the server may have acted on it.
MAYBE_HANDLED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout,
                 httpx.WriteTimeout, httpx.CloseError)


@dataclass
class RetryPolicy:
    """`max_retries` more attempts after the first; the n-th retry waits about
    `base_delay_s * 2**n` (half of it random), at most `max_delay_s`. A `Retry-After` longer than
    `max_retry_after_s` is not waited for: the error is raised with its `retry_after`."""

    max_retries: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def backoff_s(self, retry: int) -> float:
        """Equal jitter: half the exponential delay fixed, half random, so clients spread out."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** retry)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def delay_after_reply(self, reply: Reply, retry: int) -> float | None:
        """Seconds to wait before sending the call again after `reply`; None: do not."""
        if reply.status not in RETRY_STATUSES or retry >= self.max_retries:
            return None
        backoff = self.backoff_s(retry)
        told = retry_after_s(reply.headers)
        if told is None:
            return backoff
        if told > self.max_retry_after_s:
            return None
        # Never sooner than the server said; a little later at random, so told clients spread out.
        return max(backoff, told + self.rng.uniform(0, self.base_delay_s))

    def delay_after_error(self, request: Request, exc: httpx.TransportError, retry: int) -> float | None:
        """Seconds to wait before sending the call again after a transport failure; None: do not."""
        if retry >= self.max_retries:
            return None
        if isinstance(exc, NOT_SENT) or (request.replayable and isinstance(exc, MAYBE_HANDLED)):
            return self.backoff_s(retry)
        return None


def connection_failed(base_url: str, exc: httpx.TransportError) -> ConnectionFailed:
    """The error a caller gets for a transport failure that will not be retried."""
    maybe_handled = not isinstance(exc, NOT_SENT)
    detail = str(exc) or type(exc).__name__
    note = " (the request was sent: the server may have acted on it)" if maybe_handled else ""
    return ConnectionFailed(f"cannot reach the API at {base_url}: {detail}{note}", maybe_handled=maybe_handled)


class Attempts(Generic[T]):
    """The attempts of one call, for a client to drive: after each outcome (an answer, or the
    transport's failure) `after` says how long to wait before the next attempt, or None once
    `result` holds the call's result; a failure not to retry is raised."""

    def __init__(self, call: Call[T], policy: RetryPolicy, base_url: str) -> None:
        self.call, self.policy, self.base_url = call, policy, base_url
        self.retries = 0
        self._result: tuple[T] | None = None

    def after(self, outcome: Reply | httpx.TransportError) -> float | None:
        if isinstance(outcome, httpx.TransportError):
            delay = self.policy.delay_after_error(self.call.request, outcome, self.retries)
            if delay is None:
                raise connection_failed(self.base_url, outcome) from outcome
        else:
            delay = self.policy.delay_after_reply(outcome, self.retries)
            if delay is None:
                self._result = (self.call.result(outcome),)
                return None
        self.retries += 1
        return delay

    @property
    def result(self) -> T:
        assert self._result is not None, "the call has not ended"
        return self._result[0]
