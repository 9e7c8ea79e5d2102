"""Opaque, time-ordered ids: `<prefix>_<12 hex ms timestamp><16 hex random>`.

Ordering by id is ordering by creation time, which makes cursor pagination a plain
`WHERE id < $cursor ORDER BY id DESC`.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

PREFIXES = {
    "org": "org",
    "user": "usr",
    "api_key": "key",
    "agent": "agt",
    "session": "ses",
    "message": "msg",
    "run": "run",
    "tool_call": "tc",
    "audit": "aud",
    "memory": "mem",
    "document": "doc",
    "skill": "skl",
    "data_source": "dsr",
    "mcp_server": "mcp",
    "webhook": "whk",
    "file": "fil",
    "runner": "rnr",
    "org_export": "exp",
    "provider": "prv",
    "invitation": "inv",
    "login_session": "lgs",
    # Delivery ids are derived from (webhook, event) in SQL (core.store.webhooks), never drawn.
    "webhook_delivery": "whd",
}

_ID_RE = re.compile(r"^[a-z]{2,3}_[0-9a-f]{28}$")


class _Monotonic:
    """(ms, random) pairs that strictly increase within a process: ids made in the same
    millisecond (say, three messages in one transaction) still sort in creation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = 0
        self._rand = 0

    def next(self) -> tuple[int, int]:
        with self._lock:
            ms = int(time.time() * 1000)
            if ms > self._ms:
                self._ms, self._rand = ms, secrets.randbits(63)  # top bit clear: room to count up
            elif self._rand + 1 < 2**64:
                self._rand += 1
            else:
                self._ms, self._rand = self._ms + 1, secrets.randbits(63)
            return self._ms, self._rand


_CLOCK = _Monotonic()


def new_id(kind: str) -> str:
    ms, rand = _CLOCK.next()
    return f"{PREFIXES[kind]}_{ms:012x}{rand:016x}"


def looks_like(kind: str, value: str) -> bool:
    """True when `value` has the shape of an id of `kind` (a cheap check before any query)."""
    return is_id(value) and value.startswith(PREFIXES[kind] + "_")


def is_id(value: str) -> bool:
    """True when `value` has the shape of any AgentOS id."""
    return bool(_ID_RE.match(value))


def created_ms(value: str) -> int | None:
    """The Unix time in ms at which `new_id` drew `value` (its host's clock), or None when
    `value` is not an id of ours (a row written by other means carries no such time)."""
    return int(value.split("_", 1)[1][:12], 16) if is_id(value) else None
