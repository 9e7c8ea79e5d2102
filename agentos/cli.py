"""The `agentos` command: `dev`, `api`, `worker`, `watchdog`, `migrate`, `org create`, `run`,
`memory reembed`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from agentos.bootstrap import DEV_STATE_FILE, OWNER_KEY_FILE, ensure_default_agents, ensure_default_org, record_api_url
from agentos.stack.local import LocalStack, running_stack
from agentos.stack.supervisor import Supervisor
from agentos.stack.worker import watchdog_process, worker_health, worker_process
from core.db import open_pool
from core.migrations import migrate as apply_migrations
from core.settings import Settings, load_settings
from core.store import orgs

app = typer.Typer(help="AgentOS: a self-hostable, multi-tenant agent platform.", no_args_is_help=True)
org_app = typer.Typer(help="Manage organisations.", no_args_is_help=True)
app.add_typer(org_app, name="org")
memory_app = typer.Typer(help="Manage long-term memory.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
console = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where the local stack keeps its data.")]


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        console.print(f"[red]Invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


def _external_services() -> bool:
    env = os.environ
    db = env.get("AGENTOS_DATABASE_URL") or env.get("AGENTOS_DATABASE__URL")
    rd = env.get("AGENTOS_REDIS_URL") or env.get("AGENTOS_REDIS__URL")
    return bool(db and rd)


def _migrate(settings: Settings) -> None:
    applied = apply_migrations(settings.database.url, settings.database.app_role,
                               log=lambda m: console.print(f"  {m}"))
    console.print(f"[green]✓[/green] database schema up to date ({applied} migration(s) applied)")


def _serve(settings: Settings, host: str, port: int) -> None:
    from api.app import create_app

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level=settings.log_level.lower(),
                            lifespan="on", timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data_dir = data_dir.resolve()
    stack: LocalStack | None = None
    supervisor: Supervisor | None = None
    try:
        if _external_services():
            settings = _settings()
            console.print("Using the Postgres and Redis named by AGENTOS_DATABASE_URL / AGENTOS_REDIS_URL")
        else:
            stack = LocalStack(data_dir)
            with console.status("Starting embedded PostgreSQL (pgvector) and Redis…"):
                urls = stack.start()
            console.print(f"[green]✓[/green] PostgreSQL {urls.database_url}")
            console.print(f"[green]✓[/green] Redis      {urls.redis_url}")
            settings = _settings(database={"url": urls.database_url}, redis={"url": urls.redis_url})
        _migrate(settings)
        data_dir.mkdir(parents=True, exist_ok=True)
        org_id, key, created = asyncio.run(ensure_default_org(settings, data_dir))
        console.print(f"[green]✓[/green] org {org_id} ({'created' if created else 'reused'})")
        if asyncio.run(ensure_default_agents(settings, org_id)):
            console.print("[green]✓[/green] agent 'assistant' (offline model, file_manager, remember, recall, "
                          "sub-agent 'helper')")
        supervisor = _start_workers(settings, data_dir, workers, stack)
        api_url = f"http://{host}:{port}"
        record_api_url(data_dir, api_url)
        console.print(f"\n  API       {api_url}")
        console.print(f"  Owner key {key}   (saved in {data_dir / OWNER_KEY_FILE})")
        console.print(f"  Try:      curl -H 'Authorization: Bearer {key}' {api_url}/v1/me")
        console.print('            agentos run assistant "hello"\n')
        console.print("Press Ctrl-C to stop everything.")
        try:
            _serve(settings, host, port)
        except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
            if not supervisor.failed:
                raise
        if supervisor.failed:
            console.print(f"[red]Stopped:[/red] {supervisor.failed}. See the logs in {data_dir}.")
            raise typer.Exit(1)
    finally:
        if supervisor is not None:
            with console.status("Stopping the workers and the watchdog…"):
                supervisor.stop()
        if stack is not None:
            with console.status("Stopping Redis and PostgreSQL…"):
                stack.stop()
            console.print("[green]✓[/green] stopped")


def _start_workers(settings: Settings, data_dir: Path, count: int, stack: LocalStack | None) -> Supervisor:
    """`count` worker processes (one run at a time each) and the watchdog, restarted if they die
    or (workers) stop consuming; the embedded Postgres and Redis, restarted if they die."""
    db, rd = settings.database.url, settings.redis.url
    supervisor = Supervisor(report=lambda text: console.print(f"[yellow]![/yellow] {text}"),
                            on_fatal=lambda _: os.kill(os.getpid(), signal.SIGINT))  # ends _serve
    if stack is not None:
        supervisor.watch("PostgreSQL", lambda: stack.postgres.server, stack.postgres.start)
        supervisor.watch("Redis", lambda: stack.redis.server, stack.redis.start)
    for i in range(1, count + 1):
        health = data_dir / f"worker-{i}.health.json"
        supervisor.add(f"worker {i}", partial(worker_process, data_dir / f"worker-{i}.log", database_url=db,
                                              redis_url=rd, workspace_root=data_dir / "workspaces", concurrency=1,
                                              health_file=health),
                       ready_marker=" ready.", health=worker_health(health, rd))
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
    port: Annotated[int, typer.Option(help="Port to listen on.", envvar="AGENTOS_API__PORT")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind.", envvar="AGENTOS_API__HOST")] = "0.0.0.0",
) -> None:
    """Serve the API alone, against AGENTOS_DATABASE_URL and AGENTOS_REDIS_URL (for deployment)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _serve(_settings(), host, port)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Runs executed at once (processes).")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
    check: Annotated[bool, typer.Option("--check", help=(
        "Don't run a worker: judge the one writing AGENTOS_WORKER__HEALTH_FILE; exit 1 if it stopped "
        "consuming (a liveness probe for orchestrators)."))] = False,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Execute runs: a Celery worker on the runs queue (uses the running `agentos dev` stack of this
    directory, or AGENTOS_DATABASE_URL / AGENTOS_REDIS_URL)."""
    settings = _settings_for_cli(data_dir)
    if check:
        from runtime.liveness import check as judge

        verdict = judge(Path(settings.worker.health_file), settings.redis.url)
        typer.echo(f"{'healthy' if verdict.healthy else 'unhealthy'}: {verdict.reason}")
        raise typer.Exit(0 if verdict.healthy else 1)
    from runtime.celery_app import run_worker

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_worker(settings, concurrency=concurrency, pool=pool, loglevel=settings.log_level.upper())


def _settings_for_cli(data_dir: Path) -> Settings:
    """The settings of a running `agentos dev` in `data_dir`, else those of the environment."""
    urls = running_stack(data_dir.resolve())
    if urls and not _external_services():
        return _settings(database={"url": urls.database_url}, redis={"url": urls.redis_url})
    return _settings()


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

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings_for_cli(data_dir)
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
    name: Annotated[str, typer.Argument(help="The organisation's name.")],
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Create an organisation; prints its id and an owner API key (shown once)."""
    settings = _settings_for_cli(data_dir)

    async def create() -> tuple[str, str]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            org, key = await orgs.create_org(pool, name, actor="cli")
            return org["id"], key["key"]
        finally:
            await pool.close()

    if not 1 <= len(name) <= 200:
        console.print("[red]The name must be 1 to 200 characters.[/red]")
        raise typer.Exit(2)
    org_id, key = asyncio.run(create())
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
    import psycopg
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from memory.embeddings import resolve_embedder
    from memory.reembed import ReembedError, ReembedProgress, reembed

    settings = _settings_for_cli(data_dir)
    try:
        embedder = resolve_embedder(model, settings)
    except ValueError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None

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
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None
    except (ReembedError, psycopg.Error) as exc:
        detail = f"database error ({type(exc).__name__}): {exc}" if isinstance(exc, psycopg.Error) else str(exc)
        console.print(detail, style="red", markup=False)
        console.print("Nothing is lost: items already moved stay moved; run the command again to continue.")
        raise typer.Exit(1) from None
    console.print(f"[green]✓[/green] org {org}: {counts.done} re-embedded, {counts.merged} merged into an "
                  f"existing item, {counts.skipped} skipped; its embedding model is now {embedder.model}")


@app.command()
def run(
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
    message: Annotated[str, typer.Argument(help="What to ask.")],
    session: Annotated[str | None, typer.Option(help="Continue this session instead of starting one.")] = None,
    api_url: Annotated[str | None, typer.Option(envvar="AGENTOS_API_URL", help="Default: the local dev API.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="AGENTOS_API_KEY", help="Default: the dev owner key.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Approve every call that asks for approval.")] = False,
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Send a message to an agent and stream the run: tokens to stdout, steps to stderr.

    A call that needs approval is asked about on the terminal (or approved with --yes; without a
    terminal the run waits for a decision through the API). Exits 0 when the run succeeds, 1 when
    it fails, times out or is cancelled (Ctrl-C cancels it).
    """
    from agentos.run_client import ClientError, RunClient, render

    url, key = _dev_client_defaults(data_dir, api_url, api_key)
    client = RunClient(url, key)
    out = Console(soft_wrap=True)
    try:
        started = client.start(agent, message, session)
    except ClientError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"[dim]session {started['session_id']} · run {started['id']}[/dim]")

    def on_confirm(call: dict[str, object]) -> None:
        tool_call_id = str(call["tool_call_id"])
        if yes:
            client.decide(tool_call_id, approve=True)
        elif sys.stdin.isatty():
            approve = typer.confirm("  Approve?", default=False, err=True)
            client.decide(tool_call_id, approve=approve, reason=None if approve else "declined on the terminal")
        else:
            console.print(f"  waiting: POST /v1/tool-calls/{tool_call_id}/approve (or /reject)")

    try:
        terminal = render(client.events(started["id"]), out, console, started["agent_id"], on_confirm)
    except KeyboardInterrupt:
        client.cancel(started["id"])
        console.print("\n[yellow]cancelled[/yellow]")
        raise typer.Exit(130) from None
    except ClientError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if terminal["type"] != "run.succeeded":
        error = terminal["data"].get("error") or {}
        console.print(f"[red]{terminal['type']}[/red] {error.get('code', '')}: {error.get('message', '')}")
        raise typer.Exit(1)


def _dev_client_defaults(data_dir: Path, api_url: str | None, api_key: str | None) -> tuple[str, str]:
    """The API URL and key: given ones first, else those `agentos dev` saved in `data_dir`."""
    import json

    try:
        state = json.loads((data_dir / DEV_STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    url, key = api_url or state.get("api_url"), api_key or state.get("api_key")
    if not url or not key:
        console.print("[red]No API to talk to:[/red] start `agentos dev` in this directory, or set "
                      "AGENTOS_API_URL and AGENTOS_API_KEY.")
        raise typer.Exit(2)
    return str(url), str(key)


def main() -> None:
    app()
