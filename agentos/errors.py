"""Expected failures of the `agentos` command: each becomes one line on stderr and an exit code
(a traceback only with `agentos --debug`). Unexpected errors keep their traceback."""

from __future__ import annotations

from urllib.parse import urlsplit

# Exit codes, documented in the README's command table.
EXIT_FAILED = 1  # the command could not do its job (a run failed, a service is unreachable, ...)
EXIT_USAGE = 2  # invalid arguments or settings (also what click answers for a bad option)
EXIT_NEEDS_APPROVAL = 3  # `agentos run` without a terminal: a call waits for a human decision
EXIT_INTERRUPTED = 130  # Ctrl-C


class CliError(Exception):
    """A failure the user can act on: `message` is the one line to print."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


START_HINT = "start `agentos dev` in this directory, or set AGENTOS_DATABASE_URL and AGENTOS_REDIS_URL"


def where(url: str) -> str:
    """`host:port` of a service URL, never its credentials."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname or '?'}:{port}" if port else (parts.hostname or "?")


def unreachable(service: str, url: str) -> CliError:
    return CliError(f"cannot reach {service} at {where(url)}: {START_HINT}.")


_UNREACHABLE = ("connection refused", "timeout expired", "could not translate host", "no route to host",
                "network is unreachable", "connection timed out", "server closed the connection")


def is_unreachable(exc: BaseException) -> bool:
    """Whether a database error says nothing answers there (rather than, say, a wrong password)."""
    text = str(exc).lower()
    return any(s in text for s in _UNREACHABLE)


def explain(exc: BaseException) -> CliError | None:
    """The one line for an infrastructure failure the user can fix, or None for a real bug."""
    import psycopg
    from psycopg_pool import PoolTimeout
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, PoolTimeout) or isinstance(exc, psycopg.OperationalError) and is_unreachable(exc):
        return CliError(f"cannot reach PostgreSQL: {START_HINT}.")
    if isinstance(exc, psycopg.OperationalError):
        # e.g. 'connection failed: connection to server at "h", port 5432 failed: FATAL: password ...'
        return CliError(f"database error: {' '.join(str(exc).split()) or type(exc).__name__}")
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return CliError(f"cannot reach Redis: {START_HINT}.")
    return None
