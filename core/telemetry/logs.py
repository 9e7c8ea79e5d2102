"""Logs: the one logging set-up of every process (API, worker, watchdog, sandbox).

`json` (the default): one JSON object per line with `timestamp` (UTC, ISO 8601), `level`,
`logger`, `message`, `process`, and where known `trace_id`, `span_id`, `org_id`, `run_id`
(from the current span and `scope`), plus `exception` with the traceback. `text`: the
human-readable form `agentos dev` uses, with the run id when there is one.

What goes in a message is the caller's choice; AgentOS's own code never logs a secret or a
message's content at INFO (ids, counts, statuses and error kinds only).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from opentelemetry import trace

from core.telemetry import scope

LogFormat = Literal["json", "text"]


def _ids(record: logging.LogRecord) -> dict[str, str]:
    out: dict[str, str] = {}
    span = trace.get_current_span().get_span_context()
    now = scope.current()
    if span.is_valid:
        out["trace_id"] = f"{span.trace_id:032x}"
        out["span_id"] = f"{span.span_id:016x}"
    elif now.trace_id is not None:
        out["trace_id"] = now.trace_id
    if now.org_id is not None:
        out["org_id"] = now.org_id
    if now.run_id is not None:
        out["run_id"] = now.run_id
    return out


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.process,
            "pid": record.process,
        }
        line.update(_ids(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        run_id = scope.current().run_id
        return f"{text} [{run_id}]" if run_id and run_id not in text else text


def configure(process: str, level: str = "INFO", fmt: LogFormat = "json") -> None:
    """Send every logger's records to stderr in `fmt`, replacing earlier handlers of the root
    logger (so libraries that log — uvicorn, Celery — come out in the same form)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that keep their own handlers would print twice, in another form.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
