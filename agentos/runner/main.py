"""`agentos runner`: read the token (from the environment or a file, never the command line or
a URL), open the journal and workspaces, choose the sandbox, and keep the link up until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from agentos.errors import CliError
from agentos.runner.journal import Journal
from agentos.runner.link import Link, LinkConfig, RunnerRefused, lock_state_dir
from agentos.runner.tools import RUNNER_SKILLS, Executor, Sandbox
from agentos.runner.workspace import WorkspaceError, Workspaces

log = logging.getLogger("agentos.runner")
TOKEN_ENV = "AGENTOS_RUNNER_TOKEN"


def read_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"Cannot read the runner token from {token_file}: {exc.strerror}.") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token.startswith("aosr_"):
        raise CliError(f"No runner token: set {TOKEN_ENV} or pass --token-file (POST /v1/runners shows one).")
    return token


def build_executor(state_dir: Path, repo: Path | None, skills: str | None, read_only: bool, sandbox: str,
                   allow_unsandboxed: bool) -> Executor:
    allowed = frozenset(s.strip() for s in skills.split(",") if s.strip()) if skills else frozenset(RUNNER_SKILLS)
    unknown = allowed - set(RUNNER_SKILLS)
    if unknown:
        raise CliError(f"--skills: unknown {', '.join(sorted(unknown))}; choose from {', '.join(RUNNER_SKILLS)}.")
    try:
        workspaces = Workspaces(state_dir / "workspaces", repo)
    except WorkspaceError as exc:
        raise CliError(f"--repo {repo}: {exc}") from None
    return Executor(workspaces, Sandbox.choose(sandbox, allow_unsandboxed), allowed, read_only)


def serve(api_url: str, token: str, state_dir: Path, executor: Executor, heartbeat_timeout_s: float,
          concurrency: int, backoff_max_s: float = 30.0, worktree_grace_s: float = 3600.0) -> None:
    lock = lock_state_dir(state_dir)
    journal = Journal(state_dir / "journal.sqlite3")
    link = Link(LinkConfig(api_url.rstrip("/"), token, heartbeat_timeout_s=heartbeat_timeout_s,
                           concurrency=concurrency, backoff_max_s=backoff_max_s, worktree_grace_s=worktree_grace_s),
                executor, journal)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await link.run(stop)

    try:
        asyncio.run(main())
    except RunnerRefused as exc:
        raise CliError(f"The platform refused this runner: {exc}.") from None
    finally:
        journal.close()
        lock.close()
