"""Helpers shared by test modules: the test stack's secrets and settings, API clients acting as an
org, runs started and awaited through the API, a real worker, and `agentos` CLI processes.
Test modules import these from here (never from conftest or another test module); conftest
builds its fixtures from them."""

from __future__ import annotations

import atexit
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.process import ServerProcess, free_port
from agentos.stack.worker import worker_process
from core.settings import Settings, load_settings
from tests.openai_server import OpenAIServer

# The workers' price table (USD per million tokens): `offline:priced` costs something, so usage
# tests can check costs; other offline models stay free.
PRICES = {"offline:priced": {"input": "0.5", "output": "1.5", "cached_input": "0.25"},
          "offline:*": {"input": "0", "output": "0"}}

# Random per test process; conftest's settings use them, tests sign and authenticate with them.
ADMIN_TOKEN = "test-platform-admin-token-" + secrets.token_hex(8)
JWT_SECRET = "test-jwt-secret-" + secrets.token_hex(16)


@dataclass(frozen=True)
class RsaKeys:
    private_pem: bytes
    public_pem: str


@functools.cache
def test_files_dir() -> Path:
    """Where the suite's APIs keep uploaded files (never the checkout's .agentos/)."""
    path = Path(tempfile.mkdtemp(prefix="agentos-test-files-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def make_settings(stack: StackUrls, rsa_keys: RsaKeys, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "env": "test",
        "database": {"url": stack.database_url, "pool_min": 1, "pool_max": 8},
        "redis": {"url": stack.redis_url},
        "auth": {
            "jwt_secret": JWT_SECRET,
            "jwt_public_key": rsa_keys.public_pem,
            "platform_admin_token": ADMIN_TOKEN,
        },
        "api": {"max_body_bytes": 64 * 1024},
        "files": {"data_dir": str(test_files_dir())},
    }
    base.update(overrides)
    return load_settings(**base)


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error object of a response that must be `status` with `code` and a message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return dict(error)


@dataclass
class Org:
    """A fresh organisation with an owner key; `headers` authenticate as that owner."""

    id: str
    key: str
    client: TestClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def key_with_role(self, role: str) -> str:
        r = self.client.post("/v1/api-keys", json={"name": f"{role} key", "role": role}, headers=self.headers)
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def create_agent(self, **fields: object) -> dict[str, object]:
        body = {"name": "agent-" + secrets.token_hex(4), "instructions": "Be helpful."} | fields
        r = self.client.post("/v1/agents", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def create_session(self, agent_id: str, **fields: object) -> dict[str, object]:
        r = self.client.post("/v1/sessions", json={"agent_id": agent_id} | fields, headers=self.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())


def new_org(client: TestClient, name: str = "test org") -> Org:
    # Org names are unique: a suffix lets every test ask for "org A".
    r = client.post("/v1/orgs", json={"name": f"{name} {secrets.token_hex(4)}"},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 201, r.text
    body = r.json()
    return Org(id=body["org"]["id"], key=body["api_key"]["key"], client=client)


def post_concurrently(org: Org, requests: list[tuple[str, dict[str, Any], dict[str, str]]]) -> list[Any]:
    """POST each (path, body, extra headers) from its own thread, all released at once; responses
    in order."""
    barrier = threading.Barrier(len(requests))
    responses: list[Any] = [None] * len(requests)

    def post(i: int) -> None:
        path, body, extra = requests[i]
        barrier.wait()
        responses[i] = org.client.post(path, json=body, headers=org.headers | extra)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(r is not None for r in responses)
    return responses


def open_loopback(stack: StackUrls, org_id: str) -> None:
    """The operator opens 127.0.0.1 for this org's outbound requests (orgs.settings.outbound_allow),
    so its providers, skills and webhooks may reach the tests' local servers."""
    import psycopg

    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || %s::jsonb WHERE id = %s",
                     (json.dumps({"outbound_allow": ["127.0.0.1"]}), org_id))


def start_run(org: Org, session_id: str, text: str, **fields: Any) -> dict[str, Any]:
    """POST a run to a session; it must be accepted (202)."""
    r = org.client.post(f"/v1/sessions/{session_id}/runs", json={"input": text} | fields, headers=org.headers)
    assert r.status_code == 202, r.text
    return dict(r.json())


def wait(org: Org, run_id: str, timeout: float = 30) -> dict[str, Any]:
    """The run once it ended, through the API's long poll (a `202`, still active when `timeout`
    passed, fails the test)."""
    r = org.client.get(f"/v1/runs/{run_id}/wait?timeout={timeout}", headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


@dataclass(frozen=True)
class Worker:
    process: ServerProcess
    workspace_root: Path


@contextmanager
def running_worker(stack: StackUrls, openai_server: OpenAIServer, base: Path,
                   extra_env: dict[str, str] | None = None) -> Iterator[Worker]:
    """A real Celery worker process (`agentos worker`, prefork, 2 slots) on the test stack, with
    quick model retries and short leases (a run whose worker is killed is taken over quickly);
    `extra_env` adds or overrides settings."""
    proc = worker_process(
        base / "worker.log", database_url=stack.database_url, redis_url=stack.redis_url,
        workspace_root=base / "workspaces", concurrency=2,
        extra_env={"AGENTOS_ENV": "test", "AGENTOS_MODELS__OPENAI_BASE_URL": openai_server.base_url,
                   "AGENTOS_MODELS__MAX_RETRIES": "1", "AGENTOS_MODELS__RETRY_BASE_DELAY_S": "0.05",
                   "AGENTOS_WORKER__LEASE_S": "3", "AGENTOS_WORKER__HEARTBEAT_S": "0.5",
                   "AGENTOS_USAGE__PRICES": json.dumps(PRICES), **(extra_env or {})},
    )
    proc.start()
    try:
        proc.wait_until(lambda: " ready." in proc.log_tail(200), timeout_s=60)
        yield Worker(proc, base / "workspaces")
    finally:
        proc.stop()


def api_process(log_path: Path, stack: StackUrls, port: int, extra_env: dict[str, str] | None = None) -> ServerProcess:
    """`agentos api` on 127.0.0.1:`port` against the test stack, a real process (started by the
    caller, which also stops it), taking the test stack's admin token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")} | {
        "AGENTOS_ENV": "test", "AGENTOS_DATABASE_URL": stack.database_url, "AGENTOS_REDIS_URL": stack.redis_url,
        "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": ADMIN_TOKEN, "AGENTOS_AUTH__JWT_SECRET": JWT_SECRET,
        "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    argv = [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess("api", argv, log_path, stop_signal=signal.SIGTERM, env=env, group=True)


# The `agentos` command as a user runs it, from this interpreter (so from this checkout's venv).
AGENTOS = [sys.executable, "-c", "from agentos.cli import main; main()"]


def cli_env() -> dict[str, str]:
    """This process's environment without AGENTOS_* settings, so a CLI process uses its defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    return env | {"PYTHONUNBUFFERED": "1"}


def wait_ready(proc: subprocess.Popen[str], port: int, timeout_s: float = 90) -> None:
    """Until `agentos dev` on `port` answers /readyz with 200; fails if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agentos dev exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("agentos dev did not become ready")


@dataclass(frozen=True)
class Served:
    url: str
    server: uvicorn.Server

    @property
    def state(self) -> dict[str, Any]:
        """What the app's lifespan yielded (the typed `ApiState` under "api")."""
        return dict(self.server.lifespan.state)


def until(check: Callable[[], bool], limit_s: float = 60) -> None:
    """Wait (polling) until `check()` holds or `limit_s` passes; the caller asserts what it needs."""
    deadline = time.monotonic() + limit_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def serving(app: Starlette) -> Iterator[Served]:
    """`app` under uvicorn on a free loopback port, in a thread (a real HTTP server, for clients
    that are not the in-process TestClient: browsers, proxies, many sockets)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, lifespan="on", loop="asyncio", http="h11", ws="none",
                            backlog=2048, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def running_api(argv: list[str], log_path: Path, env: dict[str, str]) -> Iterator[tuple[str, ServerProcess]]:
    """`<argv> api --port <free port>` (an `agentos` command) with `env`, once it answers
    /readyz: its URL and process; stopped on exit."""
    port = free_port()
    proc = ServerProcess("api", [*argv, "api", "--port", str(port)], log_path, stop_signal=signal.SIGTERM, env=env)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_until(lambda: _answers(url), timeout_s=60)
        yield url, proc
    finally:
        proc.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stored_run(settings: Settings, org_id: str, agent_id: str, session_id: str, text: str = "hello") -> str:
    """A queued run stored as the API stores it, but never sent to a worker (for tests that claim,
    pause or resume it themselves): its id."""
    import asyncio

    from core.db import open_pool
    from core.store import agents, runs
    from core.tenancy import tenant_tx

    async def store() -> str:
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org_id) as conn:
                await runs.lock_session(conn, session_id)
                agent = await agents.get(conn, agent_id)
                assert agent is not None
                created = await runs.create(conn, session_id=session_id, text=text, multitask="enqueue",
                                            metadata={}, idempotency_key=None, request_hash="", created_by=None)
                return created.run["id"]
        finally:
            await pool.close()

    return asyncio.run(store())


def runner_process(api_url: str, token: str, state_dir: Path, *args: str) -> ServerProcess:
    """`agentos runner` connected to `api_url` with `token` (given in the environment, as a user
    would), its journal and workspaces in `state_dir`, logging to `state_dir/../runner.log`;
    started by the caller, which also stops it."""
    env = cli_env() | {"AGENTOS_RUNNER_TOKEN": token, "AGENTOS_LOG_LEVEL": "info"}
    argv = [*AGENTOS, "runner", "--api-url", api_url, "--state-dir", str(state_dir), "--heartbeat-timeout", "3",
            *args]
    return ServerProcess("runner", argv, state_dir.parent / f"{state_dir.name}.log", stop_signal=signal.SIGTERM,
                         env=env)


def git_repo(path: Path) -> Path:
    """A new git repository at `path` with one commit (a README), for runners' worktrees."""
    path.mkdir(parents=True)
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@example.invalid"],
                 ["config", "user.name", "test"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    (path / "README").write_text("a repository\n")
    subprocess.run(["git", "add", "README"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "first"], cwd=path, check=True)
    return path


def create_runner(org: Org, name: str = "laptop", **labels: str) -> dict[str, Any]:
    """POST /v1/runners as the org's owner; the created runner with its token."""
    r = org.client.post("/v1/runners", json={"name": name, "labels": labels}, headers=org.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def runner_online(org: Org, runner_id: str) -> bool:
    return bool(org.client.get(f"/v1/runners/{runner_id}", headers=org.headers).json()["online"])
def fake_checkpoint(database_url: str, thread_id: str, checkpoint_id: str = "1", blob: bytes = b"state") -> None:
    """One LangGraph checkpoint of `thread_id` (a row in each of its three tables), written
    directly: tests of what removes checkpoints need some without running a graph."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, checkpoint) "
                     "VALUES (%s, '', %s, '{}')", (thread_id, checkpoint_id))
        conn.execute("INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob) "
                     "VALUES (%s, '', 'messages', %s, 'bytes', %s)", (thread_id, checkpoint_id, blob))
        conn.execute("INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, "
                     "blob) VALUES (%s, '', %s, 't', 0, 'messages', %s)", (thread_id, checkpoint_id, blob))


def populate_org(org: Org, settings: Settings, stack: StackUrls, *, user_id: str = "end-user-1",
                 tag: str = "") -> dict[str, Any]:
    """Give `org` some of every kind of data (an agent, a session of `user_id` with a queued run
    never sent to a worker, so nothing changes it meanwhile, its events in Postgres and in the
    session's live stream, a checkpoint, a memory, a knowledge document, an uploaded file attached
    to the session, a secret, a webhook, an extra API key): what deletion, erasure and export
    tests remove or read back. Returns the ids made."""
    import redis

    from core.tenancy import session_stream_key

    database_url = stack.database_url
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]), user_id=user_id)
    sid = str(session["id"])
    run = {"id": stored_run(settings, org.id, str(agent["id"]), sid, f"hello from {user_id} {tag}")}
    with redis.Redis.from_url(stack.redis_url) as r:
        r.xadd(session_stream_key(org.id, sid), {"type": "run.queued"}, id="1-0")
    h = org.headers
    memory = org.client.post("/v1/memories", json={"content": f"{user_id} likes tea {tag}", "scope": "user",
                                                   "user_id": user_id}, headers=h)
    assert memory.status_code == 201, memory.text
    doc = org.client.post("/v1/knowledge", json={"title": "handbook", "content": f"The handbook {tag}."}, headers=h)
    assert doc.status_code == 202, doc.text
    file = org.client.post("/v1/files", files={"file": ("notes.txt", f"notes {tag}".encode(), "text/plain")},
                           headers=h)
    assert file.status_code == 201, file.text
    attach = org.client.post(f"/v1/sessions/{sid}/files", json={"file_id": file.json()["id"]}, headers=h)
    assert attach.status_code in (200, 201), attach.text
    assert org.client.put("/v1/secrets/api_token", json={"value": f"SECRET-{org.id}"}, headers=h).status_code in (
        200, 201)
    import psycopg

    with psycopg.connect(database_url) as conn:  # the operator opens 127.0.0.1 for the webhook
        conn.execute("""UPDATE orgs SET settings = settings || '{"outbound_allow": ["127.0.0.1"]}' WHERE id = %s""",
                     (org.id,))
    hook = org.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["run.succeeded"]},
                           headers=h)
    assert hook.status_code == 201, hook.text
    org.key_with_role("member")
    fake_checkpoint(database_url, f"{org.id}:{sid}")
    return {"agent_id": agent["id"], "session_id": sid, "run_id": run["id"], "memory_id": memory.json()["id"],
            "document_id": doc.json()["id"], "file_id": file.json()["id"], "webhook_id": hook.json()["id"]}
# People (tests/test_people.py and whoever needs a signed-in user).
PASSWORD = "a long enough pass phrase 42"


def mailed_token(client: TestClient, email: str, prefix: str) -> str:
    """The last token (`aosi_…` invitation, `aosp_…` reset) the dev mailer sent to `email`."""
    sent = client.app_state["api"].mailer.sent  # core.mailer.LogMailer
    for mail in reversed(sent):
        if mail.to == email and prefix in mail.text:
            start = mail.text.index(prefix)
            return str(mail.text[start:].split()[0])
    raise AssertionError(f"no mail with a {prefix} token to {email}")


def join(org: Org, email: str, role: str = "member", password: str = PASSWORD,
         inviter: dict[str, str] | None = None) -> dict[str, Any]:
    """Invite `email` to `org`, accept (creating the user if new) and sign in there: the tokens."""
    client = org.client
    r = client.post("/v1/invitations", json={"email": email, "role": role}, headers=inviter or org.headers)
    assert r.status_code == 201, r.text
    token = mailed_token(client, email, "aosi_")
    r = client.post("/v1/invitations/accept", json={"token": token, "password": password, "name": "N"})
    assert r.status_code == 200, r.text
    return sign_in(client, email, password, org.id)


def sign_in(client: TestClient, email: str, password: str = PASSWORD, org_id: str | None = None) -> dict[str, Any]:
    r = client.post("/v1/auth/login", json={"email": email, "password": password}
                    | ({"org_id": org_id} if org_id else {}))
    assert r.status_code == 200, r.text
    return dict(r.json())


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@contextmanager
def scratch_database(stack: StackUrls, prefix: str) -> Iterator[str]:
    """A new, empty database on the suite's Postgres (its owner URL), dropped afterwards: for a
    test that migrates step by step or needs a schema no other test writes to."""
    import psycopg

    admin_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield stack.database_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@contextmanager
def database_with_owner_login(stack: StackUrls, prefix: str) -> Iterator[tuple[str, str, str]]:
    """A new, empty database and a login role that is neither superuser nor exempt from row-level
    security (how a managed Postgres's migrating login is), both dropped afterwards. Yields the
    superuser's URL of the database, the role's name and the role's URL; the test gives the role
    what it should own."""
    import psycopg

    admin_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    suffix = secrets.token_hex(4)
    name, owner = f"{prefix}_{suffix}", f"owner_{suffix}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS")
        conn.execute(f"CREATE DATABASE {name}")
    url = stack.database_url.rsplit("/", 1)[0] + "/" + name
    try:
        yield url, owner, url.replace("postgres@", f"{owner}@", 1)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            conn.execute(f"DROP ROLE {owner}")


@contextmanager
def people_api(settings: Settings, **people: Any) -> Iterator[TestClient]:
    """The API in-process with these `AGENTOS_PEOPLE__*` settings, a cookie jar of its own, called
    from an address of its own (so per-IP counters start at zero)."""
    from api.app import create_app

    app = create_app(settings.model_copy(update={"people": settings.people.model_copy(update=people)}))
    ip = f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"
    with TestClient(app, client=(ip, 50000)) as c:
        yield c
