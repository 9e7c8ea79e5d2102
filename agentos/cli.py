"""The `agentos` command: `dev`, `api`, `worker`, `watchdog`, `migrate`, `org create`, `run`,
`memory reembed`, `memory indexes`, `secrets rotate`.

Expected failures (a port in use, no stack running, a taken name, ...) raise `CliError` or one of
the infrastructure errors `agentos.errors.explain` knows; `AgentosGroup` prints them as one line
on stderr and exits non-zero. `agentos --debug` shows their traceback instead."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from agentos.bootstrap import (
    DEV_STATE_FILE,
    OWNER_KEY_FILE,
    ensure_default_agents,
    ensure_default_org,
    forget_api_url,
    record_api_url,
)
from agentos.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NEEDS_APPROVAL,
    EXIT_USAGE,
    CliError,
    explain,
)
from agentos.services import require_services
from agentos.stack.local import LocalStack, running_stack
from agentos.stack.process import StackError
from agentos.stack.supervisor import Supervisor
from agentos.stack.worker import sandbox_process, watchdog_process, worker_health, worker_process
from core.db import open_pool
from core.migrations import migrate as apply_migrations
from core.settings import Settings, load_settings
from core.store import orgs
from core.telemetry.logs import configure as configure_logs

if TYPE_CHECKING:
    from collections.abc import Iterator

    from agentos.client import AgentOSError, Client, Event

console = Console(stderr=True, soft_wrap=True)


class AgentosGroup(TyperGroup):
    """The root command: turns expected failures into one line on stderr and an exit code."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer's vendored click.Context is not public API
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own: exit codes and usage errors
            raise
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            console.print("interrupted")
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            failure = exc if isinstance(exc, CliError) else explain(exc)
            if failure is None and isinstance(exc, StackError):
                failure = CliError(str(exc))
            if failure is None or ctx.params.get("debug"):
                raise
            console.print(f"[red]error:[/red] {escape(failure.message)}", highlight=False)
            ctx.exit(failure.code)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"agentos {package_version('agentos')}")
        except PackageNotFoundError:
            typer.echo("agentos (not installed as a package)")
        raise typer.Exit()


app = typer.Typer(help="AgentOS: a self-hostable, multi-tenant agent platform.", no_args_is_help=True,
                  cls=AgentosGroup, pretty_exceptions_show_locals=False)


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of a failure.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version,
                                          is_eager=True)] = False,
) -> None:
    """AgentOS: a self-hostable, multi-tenant agent platform."""


org_app = typer.Typer(help="Manage organisations.", no_args_is_help=True)
app.add_typer(org_app, name="org")
memory_app = typer.Typer(help="Manage long-term memory.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
secrets_app = typer.Typer(help="Manage org secrets' encryption keys.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")
skills_app = typer.Typer(help="The skill catalogue.", no_args_is_help=True)
app.add_typer(skills_app, name="skills")

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where the local stack keeps its data.")]


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: "
                             f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}", EXIT_USAGE) from None


# `agentos dev` lets pages on this machine call the API (a dev server on any port), unless
# AGENTOS_API__CORS_ORIGINS says otherwise.
DEV_CORS_ORIGINS = ["http://localhost:*", "http://127.0.0.1:*"]


def _dev_settings(**overrides: object) -> Settings:
    if "AGENTOS_API__CORS_ORIGINS" not in os.environ:
        overrides["api"] = {"cors_origins": DEV_CORS_ORIGINS}
    return _settings(**overrides)


def _logs(process: str, settings: Settings | None = None) -> None:
    """This process's logging (JSON lines, or text under `agentos dev`); the settings are read
    from the environment when the command has none yet (their errors are reported later)."""
    if settings is None:
        try:
            settings = load_settings()
        except ValidationError:
            configure_logs(process)
            return
    configure_logs(process, settings.log_level, settings.telemetry.log_format)


def _external_services() -> bool:
    env = os.environ
    db = env.get("AGENTOS_DATABASE_URL") or env.get("AGENTOS_DATABASE__URL")
    rd = env.get("AGENTOS_REDIS_URL") or env.get("AGENTOS_REDIS__URL")
    return bool(db and rd)


def _migrate(settings: Settings) -> None:
    applied = apply_migrations(settings.database.url, settings.database.app_role,
                               log=lambda m: console.print(f"  {m}"))
    console.print(f"[green]✓[/green] database schema up to date ({applied} migration(s) applied)")


def _serve(settings: Settings, host: str, port: int, sock: socket.socket | None = None) -> None:
    from api.app import create_app

    # log_config=None: uvicorn's records go through the process's one set-up (core.telemetry.logs).
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level=settings.log_level.lower(),
                            lifespan="on", timeout_graceful_shutdown=10, log_config=None)
    sockets = [sock] if sock else None
    if sockets and settings.telemetry.metrics_port is not None:  # /metrics for a scraper on a private port
        sockets.append(_bind(settings.telemetry.metrics_host, settings.telemetry.metrics_port))
    uvicorn.Server(config).run(sockets=sockets)


def _bind(host: str, port: int) -> socket.socket:
    """The API's listening socket, taken before anything else starts: a port in use is then a
    one-line error, not a stack started for nothing (or a recorded URL that is someone else's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {port} on {host} is already in use; stop what uses it or choose another "
                           "with --port") from None
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(
        help="Worker processes; each executes one run at a time and is restarted if it dies.", min=1, max=16)] = 1,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Start the whole platform locally: Postgres + pgvector, Redis, migrations, API, workers and
    the watchdog.

    Uses AGENTOS_DATABASE_URL / AGENTOS_REDIS_URL instead of embedded servers when both are set.
    """
    # Human-readable logs here and in the workers, watchdog and sandbox it starts.
    os.environ.setdefault("AGENTOS_TELEMETRY__LOG_FORMAT", "text")
    _logs("dev")
    data_dir = data_dir.resolve()
    other = running_stack(data_dir)
    if other is not None and not _external_services():
        raise CliError(f"`agentos dev` is already running from {data_dir} (pid {other.pid}); stop it first, "
                       "or use another directory")
    sock = _bind(host, port)
    stack: LocalStack | None = None
    supervisor: Supervisor | None = None
    api_url = f"http://{host}:{port}"
    try:
        if _external_services():
            settings = _dev_settings()
            require_services(settings, need_redis=True)
            console.print("Using the Postgres and Redis named by AGENTOS_DATABASE_URL / AGENTOS_REDIS_URL")
        else:
            starting = LocalStack(data_dir)
            with console.status("Starting embedded PostgreSQL (pgvector) and Redis…"):
                urls = starting.start()  # stops what it started if it fails
            stack = starting
            console.print(f"[green]✓[/green] PostgreSQL {urls.database_url}")
            console.print(f"[green]✓[/green] Redis      {urls.redis_url}")
            settings = _dev_settings(database={"url": urls.database_url}, redis={"url": urls.redis_url})
        _migrate(settings)
        data_dir.mkdir(parents=True, exist_ok=True)
        org_id, key, created = asyncio.run(ensure_default_org(settings, data_dir))
        console.print(f"[green]✓[/green] org {org_id} ({'created' if created else 'reused'})")
        if asyncio.run(ensure_default_agents(settings, org_id)):
            console.print("[green]✓[/green] agent 'assistant' (offline model, file_manager, code_executor, "
                          "web_search, remember, recall, knowledge recall, sub-agent 'helper' with file_manager)")
        supervisor = _start_workers(settings, data_dir, workers, stack, *_dev_sandbox(settings))
        record_api_url(data_dir, api_url)
        console.print(f"\n  API       {api_url}")
        console.print(f"  Owner key {key}   (saved in {data_dir / OWNER_KEY_FILE})")
        console.print(f"  Try:      curl -H 'Authorization: Bearer {key}' {api_url}/v1/me")
        console.print('            agentos run assistant "hello"\n')
        console.print("Press Ctrl-C to stop everything.")
        try:
            _serve(settings, host, port, sock)
        except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
            if not supervisor.failed:
                raise
        if supervisor.failed:
            raise CliError(f"stopped: {supervisor.failed}; see the logs in {data_dir}")
    finally:
        sock.close()
        forget_api_url(data_dir, api_url)
        if supervisor is not None:
            with console.status("Stopping the workers and the watchdog…"):
                supervisor.stop()
        if stack is not None:
            with console.status("Stopping Redis and PostgreSQL…"):
                stack.stop()
            console.print("[green]✓[/green] stopped")


def _start_workers(settings: Settings, data_dir: Path, count: int, stack: LocalStack | None,
                   sandbox_port: int | None = None, sandbox_env: dict[str, str] | None = None) -> Supervisor:
    """`count` worker processes (one run at a time each) and the watchdog, restarted if they die
    or (workers) stop consuming; the embedded Postgres and Redis, restarted if they die; the
    sandbox service too when `sandbox_port` is given."""
    db, rd = settings.database.url, settings.redis.url
    supervisor = Supervisor(report=lambda text: console.print(f"[yellow]![/yellow] {text}"),
                            on_fatal=lambda _: os.kill(os.getpid(), signal.SIGINT))  # ends _serve
    if stack is not None:
        supervisor.watch("PostgreSQL", lambda: stack.postgres.server, stack.postgres.start)
        supervisor.watch("Redis", lambda: stack.redis.server, stack.redis.start)
    if sandbox_port is not None and sandbox_env:
        token = sandbox_env["AGENTOS_SANDBOX__TOKEN"]
        supervisor.add("sandbox", partial(sandbox_process, data_dir / "sandbox.log", port=sandbox_port, token=token),
                       ready_marker="Uvicorn running on")
    for i in range(1, count + 1):
        health = data_dir / f"worker-{i}.health.json"
        supervisor.add(f"worker {i}", partial(worker_process, data_dir / f"worker-{i}.log", database_url=db,
                                              redis_url=rd, workspace_root=data_dir / "workspaces", concurrency=1,
                                              extra_env=sandbox_env, health_file=health),
                       ready_marker=" ready.", health=worker_health(health, rd))
    # Webhook deliveries on a worker of their own, so a slow receiver never holds a run's slot.
    hooks_health = data_dir / "webhooks.health.json"
    supervisor.add("webhook worker", partial(worker_process, data_dir / "webhooks.log", database_url=db, redis_url=rd,
                                             workspace_root=data_dir / "workspaces", concurrency=1,
                                             health_file=hooks_health, queues=["agentos.webhooks"]),
                   ready_marker=" ready.", health=worker_health(hooks_health, rd))
    supervisor.add("watchdog", partial(watchdog_process, data_dir / "watchdog.log", database_url=db, redis_url=rd),
                   ready_marker="watchdog ready.")
    try:
        supervisor.start()
        with console.status(f"Starting {count} worker(s) and the watchdog…"):
            supervisor.wait_ready(timeout_s=90)
    except BaseException:
        supervisor.stop()
        raise
    supervisor.supervise()
    pids = ", ".join(str(p) for p in supervisor.pids("worker"))
    logs = data_dir / ("worker-1.log" if count == 1 else "worker-*.log")
    console.print(f"[green]✓[/green] {count} worker(s), one run at a time each, restarted if they die "
                  f"(pid {pids}; log {logs})")
    console.print(f"[green]✓[/green] watchdog pid {supervisor.pids('watchdog')[0]} (recovers stalled runs; "
                  f"log {data_dir / 'watchdog.log'})")
    return supervisor


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: AGENTOS_API__PORT, 8000).")] = None,
    host: Annotated[str | None, typer.Option(
        help="Address to bind (default: AGENTOS_API__HOST, 127.0.0.1; 0.0.0.0 listens on every interface).")] = None,
) -> None:
    """Serve the API alone, against AGENTOS_DATABASE_URL and AGENTOS_REDIS_URL (for deployment)."""
    settings = _settings()
    _logs("api", settings)
    require_services(settings)  # Redis may be down: the API serves reads and defers runs meanwhile
    host, port = host or settings.api.host, settings.api.port if port is None else port
    sock = _bind(host, port)
    # uvicorn handles SIGTERM (stops accepting, ends SSE streams with a farewell, waits for
    # requests in flight), then raises it again with the handler it found: make that an exit 0,
    # so an orchestrator sees a clean stop rather than a death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    _serve(settings, host, port, sock)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Runs executed at once (processes).")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
    queues: Annotated[str | None, typer.Option(help=(
        "Comma-separated queues to consume: agentos.runs, agentos.webhooks (default: AGENTOS_WORKER__QUEUES, "
        "agentos.runs)."))] = None,
    check: Annotated[bool, typer.Option("--check", help=(
        "Don't run a worker: judge the one writing AGENTOS_WORKER__HEALTH_FILE; exit 1 if it stopped "
        "consuming (a liveness probe for orchestrators)."))] = False,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Execute runs: a Celery worker on the runs queue (uses the running `agentos dev` stack of this
    directory, or AGENTOS_DATABASE_URL / AGENTOS_REDIS_URL)."""
    if check:  # judged from the heartbeat file and Redis, never failed for a database that is away
        from runtime.liveness import check as judge

        settings = _settings_for_cli(data_dir, require=False)
        verdict = judge(Path(settings.worker.health_file), settings.redis.url)
        typer.echo(f"{'healthy' if verdict.healthy else 'unhealthy'}: {verdict.reason}")
        raise typer.Exit(0 if verdict.healthy else 1)
    from runtime.celery_app import run_worker

    _logs("worker")
    # A worker is a service: started while Postgres or Redis is away (an orchestrator starts it
    # next to them, a supervisor restarts it during an outage) it waits for them, as Celery does
    # for its broker and as deliveries do for Postgres, instead of exiting.
    settings = _settings_for_cli(data_dir, require=False)
    run_worker(settings, concurrency=concurrency, pool=pool, loglevel=settings.log_level.upper(),
               queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None)


@app.command()
def runner(
    api_url: Annotated[str, typer.Option("--api-url", help="The platform's API, e.g. https://agentos.example.com.")],
    token_file: Annotated[Path | None, typer.Option(help=(
        "A file holding the runner token (default: the AGENTOS_RUNNER_TOKEN variable).")) ] = None,
    state_dir: Annotated[Path, typer.Option(help="Where the journal and the runs' workspaces live.")] = Path(
        ".agentos-runner"),
    repo: Annotated[Path | None, typer.Option(help=(
        "A git repository: each run works in its own worktree of it (branch agentos/<run id>).")) ] = None,
    skills: Annotated[str | None, typer.Option(help=(
        "Comma-separated skills this runner executes (default: shell, code_executor, file_manager, git)."))] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every call that could change files.")] = False,
    sandbox: Annotated[str, typer.Option(help="auto (bwrap when installed), bwrap or none.")] = "auto",
    allow_unsandboxed: Annotated[bool, typer.Option("--allow-unsandboxed", help=(
        "Without bwrap, run commands as plain subprocesses of this user (a warning is logged)."))] = False,
    heartbeat_timeout: Annotated[float, typer.Option(help="Seconds without a byte before the link counts as "
                                                        "dead and is reopened.")] = 20.0,
    concurrency: Annotated[int, typer.Option(help="Calls executed at once.")] = 4,
    backoff_max: Annotated[float, typer.Option(help="The longest wait (seconds) between reconnection "
                                                     "attempts; each wait is random up to a doubling bound.")] = 30.0,
    worktree_grace: Annotated[float, typer.Option(help="Seconds after a run ends before its worktree directory "
                                                        "is removed (its branch stays); negative: never.")] = 3600.0,
) -> None:
    """Execute an org's routed tool calls on this machine, connected outward to the platform
    (docs/runners.md). The token comes from AGENTOS_RUNNER_TOKEN or --token-file, never the command line."""
    from agentos.runner.main import build_executor, read_token, serve

    _logs("runner")
    token = read_token(token_file)
    executor = build_executor(state_dir.resolve(), repo, skills, read_only, sandbox, allow_unsandboxed)
    serve(api_url, token, state_dir.resolve(), executor, heartbeat_timeout, concurrency, backoff_max, worktree_grace)


def _settings_for_cli(data_dir: Path, *, need_redis: bool = False, require: bool = True) -> Settings:
    """The settings of a running `agentos dev` in `data_dir`, else those of the environment;
    `CliError` at once when their Postgres (or Redis) cannot be reached (unless not `require`d)."""
    urls = running_stack(data_dir.resolve())
    if urls and not _external_services():
        settings = _settings(database={"url": urls.database_url}, redis={"url": urls.redis_url})
    else:
        settings = _settings()
    if require:
        require_services(settings, need_redis=need_redis)
    return settings


@app.command()
def watchdog(
    interval: Annotated[float | None, typer.Option(
        help="Seconds between passes (default: AGENTOS_WORKER__WATCHDOG_INTERVAL_S).", min=0.05)] = None,
    once: Annotated[bool, typer.Option("--once", help="Make one pass, print what it did, and exit.")] = False,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Recover stalled runs: re-send runs whose worker died (lapsed lease) and queued runs whose
    message was lost; end runs past their deadline or attempt budget. Run one (or more) per
    deployment, next to the workers."""
    from runtime.watchdog import run_watchdog, sweep_once

    _logs("watchdog")
    # One pass needs its services now; the loop waits for them (it logs once per outage).
    settings = _settings_for_cli(data_dir, need_redis=True, require=once)
    if once:
        typer.echo(asyncio.run(sweep_once(settings)).summary())
        return
    run_watchdog(settings, interval)


@app.command()
def migrate(data_dir: DataDir = Path(".agentos")) -> None:
    """Apply pending database migrations (idempotent)."""
    _migrate(_settings_for_cli(data_dir))


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(help="The organisation's name (unique, regardless of case).")],
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Create an organisation; prints its id and an owner API key (shown once)."""
    if not 1 <= len(name.strip()) <= 200:
        raise CliError("the name must be 1 to 200 characters", EXIT_USAGE)
    settings = _settings_for_cli(data_dir)

    async def create() -> tuple[str, str]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            org, key = await orgs.create_org(pool, name, actor="cli")
            return org["id"], key["key"]
        finally:
            await pool.close()

    try:
        org_id, key = asyncio.run(create())
    except orgs.OrgNameTaken:
        raise CliError(f"an organisation named {name!r} already exists; choose another name") from None
    typer.echo(f"org_id: {org_id}")
    typer.echo(f"owner_api_key: {key}")
    console.print("[yellow]Store the key now: it is not shown again.[/yellow]")


@memory_app.command("reembed")
def memory_reembed(
    org: Annotated[str, typer.Option("--org", help="The organisation's id.")],
    model: Annotated[str, typer.Option("--model", help="Target embedding spec, e.g. openai:text-embedding-3-small.")],
    batch: Annotated[int, typer.Option(help="Items embedded per request and written per transaction.",
                                       min=1, max=10_000)] = 256,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Re-embed an organisation's memories with another model, then make it the org's model.

    Resumable: after a failure, run it again to continue; when everything is on the model it only
    confirms the org's setting.
    """
    settings = _settings_for_cli(data_dir)  # first: without a stack, say so before the slow imports

    import psycopg
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from memory.embeddings import resolve_embedder
    from memory.reembed import ReembedError, ReembedProgress, reembed
    from orchestrator.models import ModelConfigError, require_credentials

    try:
        require_credentials(model, settings.models)  # the check (and message) a run makes
        embedder = resolve_embedder(model, settings)
    except ModelConfigError as exc:  # what a run reports as MODEL_CONFIG
        raise CliError(f"MODEL_CONFIG: {exc}", EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

    async def go(bar: Progress) -> ReembedProgress:
        task = bar.add_task(f"re-embedding with {embedder.model}", total=None)

        def report(p: ReembedProgress) -> None:
            bar.update(task, total=p.total, completed=p.done + p.merged + p.skipped)

        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            return await reembed(pool, settings, org, model, batch=batch, progress=report, embedder=embedder)
        finally:
            await pool.close()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            counts = asyncio.run(go(bar))
    except ValueError as exc:  # an unknown org: nothing was changed
        raise CliError(str(exc), EXIT_USAGE) from None
    except (ReembedError, psycopg.Error) as exc:
        detail = f"database error ({type(exc).__name__}): {exc}" if isinstance(exc, psycopg.Error) else str(exc)
        raise CliError(f"{' '.join(detail.split())}. Nothing is lost: the org searches its model until every "
                       "item has its new embedding, and those made are kept; run the command again to "
                       "continue.") from None
    rechunked = f"; {counts.rechunked} document(s) chunked again" if counts.rechunked else ""
    console.print(f"[green]✓[/green] org {org}: {counts.done} re-embedded, {counts.merged} merged into an "
                  f"existing item, {counts.skipped} skipped; its embedding model is now {embedder.model}{rechunked}")


@memory_app.command("indexes")
def memory_indexes(data_dir: DataDir = Path(".agentos")) -> None:
    """List the per-org vector indexes (kept by the watchdog's memory-indexes job): each org's
    items of the offline model, the index's state (valid, building, invalid: an interrupted build
    the next pass redoes; wanted: the next pass builds it) and size."""
    from memory.index_maintenance import list_indexes

    settings = _settings_for_cli(data_dir)
    rows = asyncio.run(list_indexes(settings))
    memory = settings.memory
    typer.echo(f"per-org vector indexes: built from {memory.index_create_rows:,} items of the offline model, "
               f"dropped below {memory.index_drop_rows:,}")
    if not rows:
        typer.echo("no org has or needs its own vector index")
        return
    # Plain columns, never cut: the org ids and index names are what an operator copies.
    lines = [("org", "items", "state", "size", "index")] + [
        (r.org_id, f"{r.items:,}", r.state, f"{r.bytes / 2**20:,.1f} MiB" if r.name else "-", r.name or "-")
        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for line in lines:
        typer.echo("  ".join([line[0].ljust(widths[0]), line[1].rjust(widths[1]), line[2].ljust(widths[2]),
                              line[3].rjust(widths[3]), line[4]]))


@secrets_app.command("rotate")
def secrets_rotate(
    batch: Annotated[int, typer.Option(help="Secrets found per scan.", min=1, max=10_000)] = 100,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Rewrap every org secret's data key under AGENTOS_SECRETS__ACTIVE_KEY_VERSION.

    Values are not re-encrypted and stay readable throughout. Resumable: run it again after an
    interruption; when nothing is left it says so. Remove an old key version from
    AGENTOS_SECRETS__KEYS only after a run that reports no failures.
    """
    import psycopg
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from core.secrets import Keyring, RotationReport, count_stale, rotate

    settings = _settings_for_cli(data_dir)
    keyring = Keyring.from_settings(settings.secrets)

    async def go(bar: Progress) -> RotationReport:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            total = await count_stale(pool, keyring)
            task = bar.add_task(f"rewrapping under key version {keyring.active_version}", total=total)

            def report(p: RotationReport) -> None:
                bar.update(task, completed=p.rewrapped + p.skipped + len(p.failed))

            return await rotate(pool, keyring, batch=batch, progress=report)
        finally:
            await pool.close()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            result = asyncio.run(go(bar))
    except psycopg.Error as exc:
        raise CliError(f"database error ({type(exc).__name__}): {' '.join(str(exc).split())}. Nothing is lost: "
                       "secrets already rewrapped stay rewrapped; run the command again to continue.") from None
    for org_id, _, reason in result.failed:
        console.print(f"[red]✗[/red] org {org_id}: {escape(reason)}", highlight=False)
    console.print(f"[green]✓[/green] {result.rewrapped} rewrapped under key version {keyring.active_version}, "
                  f"{result.skipped} already current, {len(result.failed)} failed")
    if result.failed:
        raise CliError(f"{len(result.failed)} secrets could not be rewrapped (see above); keep their key versions "
                       "configured, or store those secrets again")


@app.command()
def run(
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
    message: Annotated[str, typer.Argument(help="What to ask.")],
    session: Annotated[str | None, typer.Option(help="Continue this session instead of starting one.")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", help="The end user of a new session (user-scoped memory is theirs); default: the key's.")] = None,
    api_url: Annotated[str | None, typer.Option(envvar="AGENTOS_API_URL", help="Default: the local dev API.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="AGENTOS_API_KEY", help="Default: the dev owner key.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Approve every call that asks for approval.")] = False,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Send a message to an agent and stream the run: the answer to stdout, steps to stderr.

    A call that needs approval is asked about on the terminal, or approved with --yes. Without a
    terminal (stdin not a tty) and without --yes, the command prints how to decide over HTTP and
    exits 3, leaving the run waiting. Exits 0 when the run succeeds, 1 when it fails, times out
    or is cancelled, 130 on Ctrl-C (which cancels the run).
    """
    from agentos.client import AgentOSError, Client
    from agentos.run_render import render

    if session and user:
        raise CliError("--user applies to a new session; a --session keeps its own end user", EXIT_USAGE)
    url, key, key_hint = _dev_client_defaults(data_dir, api_url, api_key)
    out = Console(soft_wrap=True)
    with Client(url, key) as client:
        try:
            session_id, agent_id = _session_for(client, agent, message, session, user)
        except AgentOSError as exc:
            raise CliError(_client_failure(exc)) from None
        run_ids: list[str] = []  # the run, once its first event (run.queued) names it

        def announced(events: Iterator[Event]) -> Iterator[Event]:
            for event in events:
                if not run_ids:
                    run_ids.append(event.run_id)
                    console.print(f"[dim]session {session_id} · run {event.run_id}[/dim]")
                yield event

        def on_confirm(call: dict[str, object]) -> None:
            tool_call_id = str(call["tool_call_id"])
            if yes:
                client.tool_calls.approve(tool_call_id)
            elif sys.stdin.isatty():
                if typer.confirm("  Approve?", default=False, err=True):
                    client.tool_calls.approve(tool_call_id)
                else:
                    client.tool_calls.reject(tool_call_id, "declined on the terminal")
            else:
                decide = f"{url}/v1/tool-calls/{tool_call_id}"
                console.print(f"run {run_ids[0]} waits for a decision and there is no terminal to ask (--yes "
                              f"approves every call): curl -X POST -H \"Authorization: Bearer {key_hint}\" "
                              f"{decide}/approve   (or .../reject); then follow it: GET {url}/v1/runs/{run_ids[0]}"
                              "/events", highlight=False, markup=False)
                raise typer.Exit(EXIT_NEEDS_APPROVAL)

        try:
            # Started and followed in one request (the POST answers with the run's stream).
            terminal = render(announced(client.runs.stream(session_id, message)), out, console, agent_id,
                              on_confirm, stream=out.is_terminal)
        except KeyboardInterrupt:
            if run_ids:
                client.runs.cancel(run_ids[0])
            console.print("\n[yellow]cancelled[/yellow]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except AgentOSError as exc:
            raise CliError(_client_failure(exc)) from None
    if terminal.type != "run.succeeded":
        error = terminal.data.get("error") or {}
        message = escape(str(error.get("message", "")))
        console.print(f"[red]{terminal.type}[/red] {error.get('code', '')}: {message}", highlight=False)
        raise typer.Exit(EXIT_FAILED)


def _session_for(client: Client, agent_ref: str, message: str, session_id: str | None,
                 user_id: str | None) -> tuple[str, str]:
    """(session id, its agent's id) of the run to start: `session_id`, or a new session of the
    agent (by id or name) for end user `user_id`."""
    from agentos.client import AgentOSError

    if session_id is not None:
        return session_id, client.sessions.get(session_id).agent_id
    if agent_ref.startswith("agt_"):
        agent_id = client.agents.get(agent_ref).id
    else:
        found = next((a for a in client.agents.iter(limit=200) if a.name == agent_ref), None)
        if found is None:
            raise AgentOSError(f"no agent named {agent_ref!r} in this organisation", code="NOT_FOUND")
        agent_id = found.id
    return client.sessions.create(agent_id, title=message[:80], user_id=user_id).id, agent_id


def _client_failure(exc: AgentOSError) -> str:
    """One line for a failure of `agentos.client`: the API's code and message, or what the
    client could not do."""
    from agentos.client import ApiError

    return f"{exc.code}: {exc.message}" if isinstance(exc, ApiError) else exc.message


@skills_app.command("list")
def skills_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalogue as JSON, schemas included.")] = False,
    api_url: Annotated[str | None, typer.Option(envvar="AGENTOS_API_URL", help="Default: the local dev API.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="AGENTOS_API_KEY", help="Default: the dev owner key.")] = None,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Print the skills the org's agents may use: built-ins, the org's own (with their latest
    versions) and its MCP servers' tools; one per line, or JSON with their schemas."""
    import json

    from agentos.client import AgentOSError, Client

    url, key, _ = _dev_client_defaults(data_dir, api_url, api_key)
    try:
        with Client(url, key) as client:
            catalogue = client.skills()
    except AgentOSError as exc:
        raise CliError(_client_failure(exc)) from None
    if as_json:
        print(json.dumps(catalogue, indent=2, ensure_ascii=False))
        return
    width = max((len(s["name"]) for s in catalogue), default=4)
    for item in catalogue:
        version = f"v{item['version']}" if item.get("version") else "-"
        sensitive = {True: "sensitive", False: "", "by_arguments": "sensitive by arguments"}.get(
            item.get("sensitive"), "")
        summary = " ".join(str(item.get("description", "")).split())
        summary = summary if len(summary) <= 80 else summary[:79] + "…"
        print(f"{item['name']:<{width}}  {item['kind']:<7}  {version:<4}  {sensitive:<21}  {summary}".rstrip())


def _dev_client_defaults(data_dir: Path, api_url: str | None, api_key: str | None) -> tuple[str, str, str]:
    """The API URL and key, given ones first, else those `agentos dev` saved in `data_dir`; and
    how to name the key in a hint without printing it."""
    import json

    try:
        state = json.loads((data_dir / DEV_STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    url, key = api_url or state.get("api_url"), api_key or state.get("api_key")
    if not url or not key:
        raise CliError("no API to talk to: start `agentos dev` in this directory, or set AGENTOS_API_URL and "
                       "AGENTOS_API_KEY", EXIT_USAGE)
    hint = "$AGENTOS_API_KEY" if api_key else f"$(cat {data_dir / OWNER_KEY_FILE})"
    return str(url).rstrip("/"), str(key), hint


# --- sandbox (issue 11): `agentos sandbox`, and the one `agentos dev` starts -----------------------


@app.command()
def sandbox(
    port: Annotated[int | None, typer.Option(help="Port (default: AGENTOS_SANDBOX__PORT, 8300).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: AGENTOS_SANDBOX__HOST).")] = None,
) -> None:
    """Serve the sandbox service (POST /execute) that runs code_executor's code. Needs
    AGENTOS_SANDBOX__TOKEN; the local backends also root (each execution drops to an unprivileged
    uid) and bubblewrap (or runsc); the hosted ones (e2b, modal) their credentials."""
    from core.settings import SandboxServiceSettings
    from skills.sandbox.backend import BackendUnavailable
    from skills.sandbox.choose import make_backend
    from skills.sandbox.execution import become_subreaper
    from skills.sandbox.service import create_sandbox_app

    try:
        service = SandboxServiceSettings()
    except ValidationError as exc:
        raise CliError(f"invalid settings: {exc}", EXIT_USAGE) from None
    configure_logs("sandbox", service.log_level, service.telemetry.log_format)
    settings = service.sandbox
    if settings.token is None or not settings.token.get_secret_value():
        raise CliError("no service token: set AGENTOS_SANDBOX__TOKEN (the workers send the same one)", EXIT_USAGE)
    become_subreaper()  # a killed sandbox's orphans are reaped here, not left as zombies of init
    backend = make_backend(settings)
    try:
        backend.check()
    except BackendUnavailable as exc:
        backend.close()
        raise CliError(f"sandbox backend {settings.backend} unavailable: {exc}", EXIT_USAGE) from None
    uvicorn.run(create_sandbox_app(settings, backend), host=host or settings.host,
                port=settings.port if port is None else port, log_level=service.log_level.lower(), log_config=None)


def _dev_sandbox(settings: Settings) -> tuple[int | None, dict[str, str]]:
    """(the port of a sandbox service to start, the env the dev workers need to reach it): the
    configured service (nothing to start), else one `agentos dev` starts with a fresh token when
    this machine can run it, else none (code_executor then says no sandbox is configured)."""
    import secrets

    from agentos.stack.process import free_port
    from skills.sandbox.backend import BackendUnavailable
    from skills.sandbox.choose import make_backend

    if settings.sandbox.url:
        return None, {}
    backend = make_backend(settings.sandbox)
    try:
        backend.check()
    except BackendUnavailable as exc:
        console.print(f"[yellow]![/yellow] no sandbox, so code_executor will not run code: {exc}")
        return None, {}
    finally:
        backend.close()
    port, token = free_port(), secrets.token_urlsafe(32)
    console.print(f"[green]✓[/green] sandbox service (code_executor) on 127.0.0.1:{port}")
    return port, {"AGENTOS_SANDBOX__URL": f"http://127.0.0.1:{port}", "AGENTOS_SANDBOX__TOKEN": token}


def main() -> None:
    app()
