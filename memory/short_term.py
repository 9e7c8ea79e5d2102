"""Short-term memory: a session's rolling window of recent turns and its running summary, and
per-run scratch state, in Redis.

Redis is a cache here, never the only copy. The window is made of the session's *finished* runs
(their user message, tool results and answer), read from Postgres; Redis keeps it between runs
with a TTL, and a miss rebuilds it from Postgres: the session's latest summary (a long-term
memory item of kind `summary`) plus the runs that ended after it. Runs of one session end one at
a time, so the window advances by each run's `finished_at`.

Sizes are counted in estimated tokens (`estimate_tokens`: about four characters per token, the
usual figure for English with BPE tokenizers; no tokenizer is downloaded). When the window and
summary exceed an agent's budget, `split_for_summary` says which oldest runs to fold into the
summary; the caller writes the summary (by the agent's model, or `extractive_summary`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from psycopg.rows import DictRow
from redis.exceptions import RedisError

from core.store.runs import TERMINAL
from core.tenancy import run_scratch_key, session_window_key

CHARS_PER_TOKEN = 4
TOOL_RESULT_CHARS = 600  # a tool result in the window is clipped to this
MAX_RUNS_REBUILT = 200  # a rebuild reads at most this many runs after the summary

# The runs of a session that ended after `after`, oldest first, with what each said and did.
_RUN_TURNS = """
WITH ended AS (
    SELECT id, finished_at FROM runs
    WHERE session_id = %(session_id)s AND status = ANY(%(terminal)s)
      AND ({after} IS NULL OR finished_at > {after})
    ORDER BY finished_at DESC LIMIT %(max_runs)s
)
SELECT e.id AS run_id, e.finished_at, t.role, t.content, t.at, t.item_id
FROM ended e
JOIN LATERAL (
    SELECT m.id AS item_id, m.role, m.content, m.created_at AS at FROM messages m
    WHERE m.run_id = e.id AND m.role IN ('user', 'assistant')
    UNION ALL
    SELECT c.id, 'tool', c.name || ': ' || coalesce(c.output::text, c.error::text, ''),
           coalesce(c.finished_at, c.created_at)
    FROM tool_calls c
    WHERE c.run_id = e.id AND c.kind = 'tool' AND c.status IN ('succeeded', 'failed')
) t ON true
ORDER BY e.finished_at, CASE t.role WHEN 'user' THEN 0 WHEN 'tool' THEN 1 ELSE 2 END, t.at, t.item_id
"""
_LATEST_SUMMARY = """
FROM memories
WHERE session_id = %(session_id)s AND kind = 'summary' AND (expires_at IS NULL OR expires_at > now())
ORDER BY created_at DESC, id DESC LIMIT 1
"""
LATEST_SUMMARY_SQL = f"SELECT content, metadata {_LATEST_SUMMARY}"
# After the cached window's `upto`; or, rebuilding, after the latest summary's (its metadata
# `upto`, as `window_from` reads it), in the same batch as the summary itself.
RUN_TURNS_SQL = _RUN_TURNS.format(after="%(after)s::timestamptz")
RUN_TURNS_AFTER_SUMMARY_SQL = _RUN_TURNS.format(after=f"(SELECT (metadata->>'upto')::timestamptz {_LATEST_SUMMARY})")


def estimate_tokens(text: str) -> int:
    """About four characters per token; at least one for any non-empty text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)] + "…"


@dataclass
class Turn:
    """One thing said or done in a finished run."""

    run_id: str
    role: str  # user | assistant | tool
    content: str
    ended: str = ""  # the run's finished_at (ISO): where a summary folding this run reaches

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.content)


@dataclass
class Window:
    """A session's recent turns (whole runs, oldest first) and the summary of what came before."""

    summary: str = ""
    summary_upto: str | None = None  # finished_at (ISO) of the last run folded into the summary
    upto: str | None = None  # finished_at (ISO) of the last run in the window or summary
    turns: list[Turn] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.summary) + sum(t.tokens for t in self.turns)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Window:
        data = json.loads(raw)
        return cls(summary=data.get("summary", ""), summary_upto=data.get("summary_upto"),
                   upto=data.get("upto"), turns=[Turn(**t) for t in data.get("turns", [])])

    def runs(self) -> list[list[Turn]]:
        """The turns grouped by run, oldest run first."""
        groups: list[list[Turn]] = []
        for turn in self.turns:
            if groups and groups[-1][0].run_id == turn.run_id:
                groups[-1].append(turn)
            else:
                groups.append([turn])
        return groups


def split_for_summary(window: Window, budget: int) -> tuple[list[Turn], list[Turn]]:
    """(turns to fold into the summary, turns to keep) so that the kept turns fit in half the
    budget, the summary in the other half. Whole runs are folded, oldest first; nothing is
    folded while everything fits."""
    if window.tokens <= budget:
        return [], list(window.turns)
    groups = window.runs()
    folded: list[Turn] = []
    kept_tokens = sum(t.tokens for t in window.turns)
    while groups and kept_tokens > budget // 2:
        run = groups.pop(0)
        folded.extend(run)
        kept_tokens -= sum(t.tokens for t in run)
    return folded, [t for g in groups for t in g]


def extractive_summary(previous: str, turns: Sequence[Turn], max_tokens: int) -> str:
    """A deterministic summary (the offline model's, and the fallback when a model fails): the
    previous summary, then one clipped line per turn; the oldest lines go first when it is too
    long."""
    lines = [line for line in previous.splitlines() if line.strip()]
    label = {"user": "User", "assistant": "Assistant", "tool": "Tool"}
    width = {"user": 200, "assistant": 120, "tool": 80}  # what the user asked matters most
    for turn in turns:
        lines.append(f"{label.get(turn.role, turn.role)}: {clip(turn.content, width.get(turn.role, 120))}")
    limit = max(max_tokens, 1) * CHARS_PER_TOKEN
    while lines and len("\n".join(lines)) > limit:
        lines.pop(0)
    text = "\n".join(lines)
    return text if len(text) <= limit else clip(text, limit)


class ShortTermMemory:
    """Session windows and run scratch state of every org, in one Redis."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    @staticmethod
    def window_statements(session_id: str, cached: Window | None) -> list[tuple[str, dict[str, Any]]]:
        """What brings the session's window up to date with the runs ended since it was cached
        (`cached`; None: a miss, rebuilt from the latest stored summary): statements for one
        batch in a tenant transaction, whose rows `window_from` reads."""
        params = {"session_id": session_id, "terminal": [str(s) for s in TERMINAL],
                  "after": cached.upto if cached is not None else None, "max_runs": MAX_RUNS_REBUILT}
        if cached is not None:
            return [(RUN_TURNS_SQL, params)]
        return [(LATEST_SUMMARY_SQL, params), (RUN_TURNS_AFTER_SUMMARY_SQL, params)]

    @staticmethod
    def window_from(cached: Window | None, rows: list[list[DictRow]]) -> tuple[Window, bool]:
        """The window from `cached` and the rows of `window_statements`: (window, changed since
        cached)."""
        window, changed = cached, cached is None
        if window is None:
            window = Window()
            if rows[0]:
                summary = rows[0][0]
                window.summary = summary["content"]
                window.summary_upto = window.upto = (summary["metadata"] or {}).get("upto")
        fresh = rows[-1]
        if fresh:
            window.turns.extend(Turn(run_id=r["run_id"], role=r["role"],
                                     content=clip(r["content"], TOOL_RESULT_CHARS) if r["role"] == "tool" else
                                     r["content"], ended=r["finished_at"].isoformat()) for r in fresh)
            last: datetime = fresh[-1]["finished_at"]
            window.upto = last.isoformat()
            changed = True
        return window, changed

    @staticmethod
    def parse_window(raw: str | bytes | None) -> Window | None:
        """A cached window as GET answered it (None: a miss, or not a window)."""
        try:
            return Window.from_json(raw) if raw else None
        except (ValueError, TypeError, KeyError):
            return None

    async def forget(self, org_id: str, session_id: str) -> None:
        try:
            await self.redis.delete(session_window_key(org_id, session_id))
        except (RedisError, OSError):
            pass

    # Per-run scratch state: a hash per run, gone when the run ends (or after the TTL).

    async def scratch_clear(self, org_id: str, run_id: str) -> None:
        try:
            await self.redis.delete(run_scratch_key(org_id, run_id))
        except (RedisError, OSError):
            pass
