"""Opaque, time-ordered ids: `<prefix>_<12 hex ms timestamp><16 hex random>`.

Ordering by id is ordering by creation time, which makes cursor pagination a plain
`WHERE id < $cursor ORDER BY id DESC`.
"""

from __future__ import annotations

import re
import secrets
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
}

_ID_RE = re.compile(r"^[a-z]{2,3}_[0-9a-f]{28}$")


def new_id(kind: str) -> str:
    ms = int(time.time() * 1000)
    return f"{PREFIXES[kind]}_{ms:012x}{secrets.token_hex(8)}"


def looks_like(kind: str, value: str) -> bool:
    """True when `value` has the shape of an id of `kind` (a cheap check before any query)."""
    return is_id(value) and value.startswith(PREFIXES[kind] + "_")


def is_id(value: str) -> bool:
    """True when `value` has the shape of any AgentOS id."""
    return bool(_ID_RE.match(value))
