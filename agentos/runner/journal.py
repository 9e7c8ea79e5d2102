"""The runner's local journal (sqlite, from the standard library): which calls it started and
what each returned, so a call is never executed twice, whatever happens to the link or to the
runner itself.

A call is written `started` (and committed) before it runs and `done` with its result after.
A call the platform sends again is looked up first: `done` → its stored result is posted
again; `started` without `done` means the runner stopped (was killed) while it ran, so its
outcome is unknown: it is answered with a failure saying so, never run a second time.

What survives what (docs/runners.md, "Exactly once"). Every commit reaches the operating system
before the runner goes on (WAL, `synchronous=NORMAL`), so a runner killed in any way (SIGKILL,
the OOM killer, a crash) loses nothing: the kernel still writes what a dead process wrote. Only a
machine crash (power cut, kernel panic) can lose commits not yet forced to disk, so the journal
forces (fsync) exactly what that must not lose:
- the `started` mark of a call that can change something (`durable=True`), before it runs: even
  after a power cut such a call is never run twice. A read-only call's mark is not forced: run
  again, it changes nothing.
- the results the platform has not acknowledged, when posting one fails (`sync`): they wait for
  the link on disk, not only in memory.
A writing call's result lost to a power cut in the moment between its end and the platform's
acknowledgement is answered like a call interrupted mid-run (outcome unknown, not run again).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('started', 'done')),
    result TEXT,
    posted INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL DEFAULT (julianday('now')),
    done_at REAL
)
"""
INTERRUPTED = ("The runner stopped while this call was running, so its outcome is unknown; it was not run "
               "again. Check the workspace before retrying.")


@dataclass(frozen=True)
class Entry:
    id: str
    run_id: str
    state: Literal["started", "done"]
    result: dict[str, Any] | None
    posted: bool


class Journal:
    """One sqlite file; safe to use from several threads (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # commits reach the OS; `durable` ones the disk
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, call_id: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT id, run_id, state, result, posted FROM calls WHERE id = ?",
                                   (call_id,)).fetchone()
        if row is None:
            return None
        return Entry(row[0], row[1], row[2], json.loads(row[3]) if row[3] is not None else None, bool(row[4]))

    def start(self, call_id: str, run_id: str, name: str, *, durable: bool) -> bool:
        """Mark the call started; False when the journal already has it (never run it again).
        `durable`: the call can change something, so the mark is on disk before it returns."""
        with self._lock:
            if durable:  # this one commit waits for the disk (and with it every earlier one)
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                cur = self._db.execute("INSERT OR IGNORE INTO calls (id, run_id, name, state) "
                                       "VALUES (?, ?, ?, 'started')", (call_id, run_id, name))
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
            return cur.rowcount == 1

    def sync(self) -> None:
        """Force every commit so far to disk (a checkpoint syncs the WAL first)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def finish(self, call_id: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE calls SET state = 'done', result = ?, done_at = julianday('now') WHERE id = ?",
                             (json.dumps(result, ensure_ascii=False, default=str), call_id))

    def interrupted(self, call_id: str) -> dict[str, Any]:
        """Close a call that was started but never finished (the runner died): a failure."""
        result = {"error": INTERRUPTED}
        self.finish(call_id, result)
        return result

    def posted(self, call_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE calls SET posted = 1 WHERE id = ?", (call_id,))

    def unposted(self) -> list[Entry]:
        """Finished calls whose result the platform has not acknowledged yet."""
        with self._lock:
            rows = self._db.execute("SELECT id, run_id, state, result, posted FROM calls "
                                    "WHERE state = 'done' AND posted = 0 ORDER BY done_at").fetchall()
        return [Entry(r[0], r[1], r[2], json.loads(r[3]), False) for r in rows]

    def recover(self) -> int:
        """At start-up: every call left `started` by a previous process ended with it (the journal
        has one process at a time: `agentos.runner.link` holds a lock on it). Close them as failures."""
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM calls WHERE state = 'started'").fetchall()]
        for call_id in ids:
            self.interrupted(call_id)
        return len(ids)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM calls").fetchone()[0])
