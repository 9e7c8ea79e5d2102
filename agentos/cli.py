"""The `agentos` command: `dev`, `api`, `migrate`, `org create`."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from agentos.bootstrap import OWNER_KEY_FILE, ensure_default_org
from agentos.stack.local import LocalStack, running_stack
from core.db import open_pool
from core.migrations import migrate as apply_migrations
from core.settings import Settings, load_settings
from core.store import orgs

app = typer.Typer(help="AgentOS: a self-hostable, multi-tenant agent platform.", no_args_is_help=True)
org_app = typer.Typer(help="Manage organisations.", no_args_is_help=True)
app.add_typer(org_app, name="org")
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
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Start the whole platform locally: Postgres + pgvector, Redis, migrations, API.

    Uses AGENTOS_DATABASE_URL / AGENTOS_REDIS_URL instead of embedded servers when both are set.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data_dir = data_dir.resolve()
    stack: LocalStack | None = None
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
        console.print(f"\n  API       http://{host}:{port}")
        console.print(f"  Owner key {key}   (saved in {data_dir / OWNER_KEY_FILE})")
        console.print(f"  Try:      curl -H 'Authorization: Bearer {key}' http://{host}:{port}/v1/me\n")
        console.print("Press Ctrl-C to stop everything.")
        _serve(settings, host, port)
    finally:
        if stack is not None:
            with console.status("Stopping Redis and PostgreSQL…"):
                stack.stop()
            console.print("[green]✓[/green] stopped")


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
    data_dir: DataDir = Path(".agentos"),
) -> None:
    """Execute runs: a Celery worker on the runs queue (uses the running `agentos dev` stack of this
    directory, or AGENTOS_DATABASE_URL / AGENTOS_REDIS_URL)."""
    from runtime.celery_app import run_worker

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings_for_cli(data_dir)
    run_worker(settings, concurrency=concurrency, pool=pool, loglevel=settings.log_level.upper())


def _settings_for_cli(data_dir: Path) -> Settings:
    """The settings of a running `agentos dev` in `data_dir`, else those of the environment."""
    urls = running_stack(data_dir.resolve())
    if urls and not _external_services():
        return _settings(database={"url": urls.database_url}, redis={"url": urls.redis_url})
    return _settings()


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


def main() -> None:
    app()
