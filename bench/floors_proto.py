"""The issue 18 prototype, rebuilt as a bench (bench/floors.py's machine calibration).

The same chain as a run, by hand and without LangGraph or AgentOS's own code:
Starlette (uvicorn) -> Postgres -> Celery -> Redis Stream -> SSE.

- `POST /runs` inserts one row in Postgres in a tenant-scoped transaction (a psycopg async pool
  whose connections act as the application role; `BEGIN`, `set_config('app.org_id', ..., true)`,
  `INSERT`, `COMMIT`, as `core.tenancy.tenant_tx` does, on a table with row-level security), then
  sends a Celery task from a thread, as `core.jobs.JobQueue.enqueue_run` does; answers `202`.
- The Celery worker (prefork, `acks_late`, prefetch 1: `runtime.celery_app`'s settings) XADDs
  three events (started, one delta, ended) to the run's Redis Stream and writes one row (the run
  ends: an `UPDATE` in a tenant-scoped transaction) before the last one.
- `GET /runs/{id}/events` is an SSE stream that XREADs the run's Redis Stream from its start until
  the end event.

    python -m bench.floors_proto api --port P      # uvicorn, as `agentos api` runs the API
    python -m bench.floors_proto worker --concurrency 2

Both read FLOORS_DATABASE_URL (a superuser URL: the pool switches to FLOORS_APP_ROLE),
FLOORS_REDIS_URL and FLOORS_ORG (the one tenant). `SCHEMA_SQL` makes the table (bench/floors.py
runs it). No authentication, no access log, no event stored in Postgres: the prototype's floor.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from celery import Celery  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

QUEUE = "floors.runs"
TASK = "floors.execute"
SET_ORG_SQL = "SELECT set_config('app.org_id', %s, true)"
INSERT_SQL = "INSERT INTO floors_runs (id, org_id, session_id, input) VALUES (%s, %s, %s, %s)"
END_SQL = "UPDATE floors_runs SET status = 'succeeded', output = %s, ended_at = now() WHERE id = %s"
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS floors_runs (
  id text PRIMARY KEY,
  org_id text NOT NULL,
  session_id text NOT NULL,
  input jsonb NOT NULL,
  status text NOT NULL DEFAULT 'queued',
  output jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  ended_at timestamptz
);
CREATE INDEX IF NOT EXISTS floors_runs_session ON floors_runs (org_id, session_id, created_at);
ALTER TABLE floors_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE floors_runs FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS floors_tenant ON floors_runs;
CREATE POLICY floors_tenant ON floors_runs
  USING (org_id = current_setting('app.org_id', true))
  WITH CHECK (org_id = current_setting('app.org_id', true));
"""


def stream_key(org_id: str, run_id: str) -> str:
    return f"floors:{org_id}:run:{run_id}:events"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


def celery_conf(redis_url: str) -> dict[str, Any]:
    """The worker's Celery settings (`core.jobs.worker_config`: the broker's of `celery_config`,
    acks late, prefetch 1), with this bench's queue."""
    from core.jobs import worker_config
    from core.settings import load_settings

    return {
        **worker_config(load_settings(redis={"url": redis_url})),
        "task_default_queue": QUEUE,
        "worker_hijack_root_logger": True,  # Celery's own log set-up: its " ready." line and per-task lines at INFO
    }


def _event(kind: str, run_id: str, data: dict[str, Any]) -> dict[Any, Any]:
    return {"t": kind.encode(), "d": orjson.dumps({"type": kind, "run_id": run_id, "data": data})}


# ---------------------------------------------------------------------------------------------
# The API


def create_app() -> Starlette:
    db_url, redis_url = _env("FLOORS_DATABASE_URL"), _env("FLOORS_REDIS_URL")
    role, org = os.environ.get("FLOORS_APP_ROLE", "agentos_app"), _env("FLOORS_ORG")
    holder: dict[str, Any] = {}

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        await conn.commit()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(db_url, min_size=4, max_size=10, configure=configure,
                                                             open=False)
        await pool.open(wait=True)
        client = aioredis.Redis.from_url(redis_url, max_connections=64)
        sender = Celery("floors-sender", set_as_current=False)
        sender.conf.update(celery_conf(redis_url))
        holder.update(pool=pool, redis=client, sender=sender)
        try:
            yield
        finally:
            await client.aclose()
            await pool.close()

    async def create_run(request: Request) -> Response:
        body = orjson.loads(await request.body())
        run_id = "run_" + secrets.token_hex(10)
        pool: AsyncConnectionPool[Any] = holder["pool"]
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(SET_ORG_SQL, (org,))
            await conn.execute(INSERT_SQL, (run_id, org, str(body.get("session", "s")), Jsonb(body)))
        sender: Celery = holder["sender"]
        await asyncio.to_thread(sender.send_task, TASK, kwargs={"run_id": run_id, "org_id": org}, queue=QUEUE)
        return JSONResponse({"id": run_id, "status": "queued"}, status_code=202)

    async def run_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        key = stream_key(org, run_id)
        client: aioredis.Redis = holder["redis"]

        async def follow() -> AsyncIterator[bytes]:
            last = "0-0"
            for _ in range(60):  # 60 blocking reads of 1 s at most: a lost run ends its stream
                found: Any = await client.xread({key: last}, count=100, block=1000)
                for _key, entries in found or []:
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        yield b"id: " + entry_id + b"\ndata: " + fields[b"d"] + b"\n\n"
                        if fields[b"t"] == b"ended":
                            return

        return StreamingResponse(follow(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/runs", create_run, methods=["POST"]),
                             Route("/runs/{run_id}/events", run_events, methods=["GET"]),
                             Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)


# ---------------------------------------------------------------------------------------------
# The worker


class _Resources:
    """One Postgres connection and one Redis client per worker process, made after the fork."""

    pid = -1
    db: psycopg.Connection[Any]
    redis: redis.Redis

    def get(self) -> _Resources:
        if self.pid != os.getpid():
            self.db = psycopg.connect(_env("FLOORS_DATABASE_URL"))
            self.db.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(os.environ.get("FLOORS_APP_ROLE",
                                                                                      "agentos_app"))))
            self.db.commit()
            self.redis = redis.Redis.from_url(_env("FLOORS_REDIS_URL"))
            self.pid = os.getpid()
        return self


def create_celery() -> Celery:
    app = Celery("floors", set_as_current=False)
    app.conf.update(celery_conf(_env("FLOORS_REDIS_URL")))
    resources = _Resources()

    @app.task(name=TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def execute(run_id: str, org_id: str) -> str:
        res = resources.get()
        key = stream_key(org_id, run_id)
        res.redis.xadd(key, _event("started", run_id, {}))
        res.redis.xadd(key, _event("delta", run_id, {"text": "Hello! This is the prototype's one delta."}))
        with res.db.transaction():
            res.db.execute(SET_ORG_SQL, (org_id,))
            res.db.execute(END_SQL, (Jsonb({"text": "Hello!"}), run_id))
        res.redis.xadd(key, _event("ended", run_id, {"status": "succeeded"}))
        return "succeeded"

    return app


def main(argv: list[str]) -> None:
    if argv[:1] == ["api"] and len(argv) == 3 and argv[1] == "--port":
        import uvicorn

        # As `agentos api` serves (agentos/cli.py `_serve`), but without the access log.
        config = uvicorn.Config(create_app(), host="127.0.0.1", port=int(argv[2]), log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=5)
        uvicorn.Server(config).run()
    elif argv[:1] == ["worker"] and len(argv) == 3 and argv[1] == "--concurrency":
        create_celery().worker_main([
            "worker", "--loglevel=INFO", f"--concurrency={int(argv[2])}", "--pool=prefork", f"--queues={QUEUE}",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ])
    else:
        raise SystemExit("usage: python -m bench.floors_proto api --port P | worker --concurrency N")


if __name__ == "__main__":
    main(sys.argv[1:])
