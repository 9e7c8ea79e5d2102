"""The `agentos` command as a user meets it: the real entry point of this venv in a subprocess.

An expected failure (a port in use, a dev already running, no stack, a taken name, a model
without credentials) is one line on stderr and a non-zero exit, never a traceback; `agentos run`
keeps stdout for the answer and does not block without a terminal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from starlette.testclient import TestClient

from agentos.bootstrap import ensure_default_agents, ensure_default_org
from agentos.errors import EXIT_NEEDS_APPROVAL, EXIT_USAGE
from agentos.stack.local import STATE_FILE, StackUrls
from agentos.stack.process import ServerProcess, free_port
from core.migrations import MIGRATIONS, _unique_org_names, migrate
from core.settings import Settings
from core.skill_names import BUILTIN_SKILLS
from tests.helpers import ADMIN_TOKEN, Worker, database_with_owner_login, error_of, running_api

AGENTOS = str(Path(sys.executable).parent / "agentos")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    return env | {"PYTHONUNBUFFERED": "1", "AGENTOS_ENV": "test", **extra}


def agentos(*args: str, cwd: Path, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENTOS, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def one_line_failure(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The command exited `code` with exactly one line on stderr holding each fragment."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def no_stack_env() -> dict[str, str]:
    return _env(AGENTOS_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port()}/agentos",
                AGENTOS_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")


def stack_env(stack: StackUrls) -> dict[str, str]:
    return _env(AGENTOS_DATABASE_URL=stack.database_url, AGENTOS_REDIS_URL=stack.redis_url)


# --- failures without a traceback ---------------------------------------------------------------


def test_version_and_help_work_without_a_stack(tmp_path: Path) -> None:
    result = agentos("--version", cwd=tmp_path, env=no_stack_env())
    assert result.returncode == 0 and result.stdout.startswith("agentos "), result


def test_dev_on_a_taken_port_starts_nothing_and_records_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = agentos("dev", "--port", str(port), cwd=tmp_path, env=_env(), timeout=20)
    one_line_failure(result, 1, f"port {port}", "already in use", "--port")
    assert not (tmp_path / ".agentos" / "pgdata").exists(), "Postgres was started for nothing"
    assert not (tmp_path / ".agentos" / "dev.json").exists(), "a stack it did not start was recorded"


def test_a_second_dev_in_the_same_directory_refuses_and_leaves_the_first_alone(stack: StackUrls,
                                                                                tmp_path: Path) -> None:
    # The suite's stack is an `agentos dev`-style stack of this very process: its data directory
    # has a live stack.json and a running postmaster.
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    data_dir = Path(row[0]).parent
    state = (data_dir / STATE_FILE).read_text()
    result = agentos("dev", "--port", str(free_port()), "--data-dir", str(data_dir), cwd=tmp_path, env=_env(),
                     timeout=20)
    one_line_failure(result, 1, "already running", str(os.getpid()))
    assert "stopped" not in result.stderr
    assert (data_dir / STATE_FILE).read_text() == state, "the running stack's record must stay"


@pytest.mark.parametrize("command", [["org", "create", "acme"], ["migrate"], ["watchdog", "--once"],
                                     ["memory", "reembed", "--org", "org_x", "--model", "offline:hash"]])
def test_without_a_stack_commands_say_how_to_start_one(tmp_path: Path, command: list[str]) -> None:
    env = no_stack_env()
    result = agentos(*command, cwd=tmp_path, env=env, timeout=20)
    port = env["AGENTOS_DATABASE_URL"].split(":")[2].split("/")[0]
    one_line_failure(result, 1, f"cannot reach PostgreSQL at 127.0.0.1:{port}", "agentos dev",
                     "AGENTOS_DATABASE_URL")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = agentos("--debug", "migrate", cwd=tmp_path, env=no_stack_env(), timeout=20)
    assert result.returncode == 1 and "Traceback" in result.stderr and "CliError" in result.stderr


def test_run_without_an_api_says_how_to_get_one(tmp_path: Path) -> None:
    result = agentos("run", "assistant", "hi", cwd=tmp_path, env=_env(), timeout=20)
    one_line_failure(result, EXIT_USAGE, "start `agentos dev`", "AGENTOS_API_URL")


def test_org_names_are_taken_regardless_of_case(stack: StackUrls, tmp_path: Path) -> None:
    name = f"Taken {os.urandom(4).hex()}"
    first = agentos("org", "create", name, cwd=tmp_path, env=stack_env(stack))
    assert first.returncode == 0 and "owner_api_key: aos_" in first.stdout, first.stderr
    again = agentos("org", "create", name.upper(), cwd=tmp_path, env=stack_env(stack))
    one_line_failure(again, 1, "already exists")


def test_reembed_with_a_model_lacking_credentials_reports_model_config(stack: StackUrls, tmp_path: Path) -> None:
    result = agentos("memory", "reembed", "--org", "org_0000000000000000000000000000", "--model",
                     "openai:text-embedding-3-small", cwd=tmp_path, env=stack_env(stack))
    one_line_failure(result, EXIT_USAGE, "MODEL_CONFIG: openai:text-embedding-3-small needs an API key",
                     "AGENTOS_MODELS__OPENAI_API_KEY")


# --- agentos run against a real API and worker ----------------------------------------------------


@dataclass(frozen=True)
class Api:
    url: str
    key: str  # the owner key of the org `agentos dev` would make
    process: ServerProcess


@pytest.fixture(scope="module")
def api(stack: StackUrls, worker: Worker, settings: Settings,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`agentos api` (default host) on the suite's stack, with the org and agents of `agentos dev`."""
    base = tmp_path_factory.mktemp("cli")
    _, key, _ = asyncio.run(ensure_default_org(settings, base))
    org_id = json.loads((base / "dev.json").read_text())["org_id"]
    asyncio.run(ensure_default_agents(settings, org_id))
    env = stack_env(stack) | {"AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": ADMIN_TOKEN}
    with running_api([AGENTOS], base / "api.log", env) as (url, proc):
        yield Api(url, key, proc)


def run_env(api: Api) -> dict[str, str]:
    return _env(AGENTOS_API_URL=api.url, AGENTOS_API_KEY=api.key)


def test_api_binds_the_settings_host_by_default(api: Api) -> None:
    assert api.process.pid is not None
    listening = [c.laddr for c in psutil.Process(api.process.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_run_stdout_is_only_the_answer_and_the_helper_does_real_work(api: Api, tmp_path: Path) -> None:
    # The README's delegation example, as a pipe would see it.
    script = ('call: file_manager {"action": "write", "path": "notes.md", "content": "Meeting moved to Friday."}\n'
              'delegate: helper call: file_manager {"action": "read", "path": "notes.md"}')
    result = agentos("run", "assistant", script, "--yes", cwd=tmp_path, env=run_env(api))
    assert result.returncode == 0, result.stderr
    answer = result.stdout.strip().splitlines()
    assert len(answer) == 1 and answer[0].startswith("Done. file_manager returned"), result.stdout
    assert "helper said: Done. file_manager returned" in answer[0] and "Meeting moved to Friday." in answer[0]
    # the helper's own text and every step went to stderr
    assert "⇢ delegating to helper" in result.stderr and "· respond" in result.stderr
    assert '"content": "Meeting moved to Friday."' in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_resumed_after_approval_says_resumed(api: Api, tmp_path: Path) -> None:
    script = 'call: file_manager {"action": "write", "path": "a.md", "content": "a"}'
    result = agentos("run", "assistant", script, "--yes", cwd=tmp_path, env=run_env(api))
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stderr and "attempt 2" not in result.stderr, result.stderr


def test_without_a_terminal_a_run_needing_approval_exits_3_with_how_to_decide(api: Api, tmp_path: Path) -> None:
    script = 'call: file_manager {"action": "write", "path": "b.md", "content": "b"}'
    result = agentos("run", "assistant", script, cwd=tmp_path, env=run_env(api))
    assert result.returncode == EXIT_NEEDS_APPROVAL, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    hint = result.stderr.strip().splitlines()[-1]
    assert "curl -X POST" in hint and "$AGENTOS_API_KEY" in hint and api.key not in hint
    tool_call = hint.split("/v1/tool-calls/")[1].split("/")[0]
    # the hint's call works, and the run then finishes
    decided = httpx.post(f"{api.url}/v1/tool-calls/{tool_call}/approve",
                         headers={"Authorization": f"Bearer {api.key}"})
    assert decided.status_code == 200, decided.text
    run_id = hint.split("/v1/runs/")[1].split("/")[0]
    waited = httpx.get(f"{api.url}/v1/runs/{run_id}/wait", headers={"Authorization": f"Bearer {api.key}"},
                       timeout=70)
    assert waited.json()["status"] == "succeeded", waited.text


def test_run_user_sets_the_end_user_of_the_new_session(api: Api, tmp_path: Path) -> None:
    result = agentos("run", "assistant", "hello", "--user", "alice", cwd=tmp_path, env=run_env(api))
    assert result.returncode == 0, result.stderr
    session_id = result.stderr.split("session ")[1].split()[0]
    session = httpx.get(f"{api.url}/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {api.key}"})
    assert session.json()["user_id"] == "alice", session.text


def test_the_dev_assistant_recalls_knowledge_and_its_helper_manages_files(api: Api) -> None:
    listed = httpx.get(f"{api.url}/v1/agents", headers={"Authorization": f"Bearer {api.key}"}).json()["data"]
    agents = {a["name"]: a for a in listed}
    assert agents["assistant"]["memory"]["knowledge"] is True
    assert agents["helper"]["skills"] == ["file_manager"]


def test_the_dev_assistant_searches_the_web_with_the_offline_provider(api: Api, tmp_path: Path) -> None:
    # The README's web_search example.
    script = 'call: web_search {"query": "agent platforms", "count": 2}'
    result = agentos("run", "assistant", script, cwd=tmp_path, env=run_env(api))
    assert result.returncode == 0, result.stderr
    answer = result.stdout.strip()
    assert answer.startswith("Done. web_search returned"), answer
    assert "https://example.org/offline/agent-platforms/" in answer and '"provider": "offline"' in answer


# --- unique org names: the API and the migration -------------------------------------------------


def test_post_orgs_answers_409_for_a_taken_name_and_patch_too(client: TestClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    name = f"Globex {os.urandom(4).hex()}"
    first = client.post("/v1/orgs", json={"name": name}, headers=admin)
    assert first.status_code == 201, first.text
    error = error_of(client.post("/v1/orgs", json={"name": name.lower()}, headers=admin), 409, "CONFLICT")
    assert error["details"] == {"field": "name"} and "already exists" in error["message"]
    other = client.post("/v1/orgs", json={"name": f"Initech {os.urandom(4).hex()}"}, headers=admin).json()
    error_of(client.patch(f"/v1/orgs/{other['org']['id']}", json={"name": name.upper()}, headers=admin),
             409, "CONFLICT")


def test_the_migration_renames_earlier_duplicates_and_keeps_the_oldest(stack: StackUrls) -> None:
    admin_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    database = f"orgnames_{os.urandom(4).hex()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    url = stack.database_url.rsplit("/", 1)[0] + "/" + database
    try:
        names_version = next(v for v, m in enumerate(MIGRATIONS, start=1) if m.apply is _unique_org_names)
        migrate(url, "agentos_app", target=names_version - 1)  # up to just before the renaming
        with psycopg.connect(url, autocommit=True) as conn:
            long = "x" * 200
            conn.execute("""INSERT INTO orgs (id, name, created_at) VALUES
                ('org_a', 'Acme', now() - interval '2 days'), ('org_b', 'ACME', now() - interval '1 day'),
                ('org_c', 'acme', now()), ('org_d', %s, now()), ('org_e', %s, now() + interval '1 s'),
                ('org_f', 'Other', now())""", (long, long))
        assert migrate(url, "agentos_app", target=names_version) == 1
        with psycopg.connect(url) as conn:
            names = dict(conn.execute("SELECT id, name FROM orgs").fetchall())
        assert names["org_a"] == "Acme" and names["org_b"] == "ACME (org_b)" and names["org_c"] == "acme (org_c)"
        assert names["org_d"] == long and names["org_e"] == "x" * 192 + " (org_e)" and names["org_f"] == "Other"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


def test_the_renaming_sees_every_org_when_the_owner_is_no_superuser(stack: StackUrls) -> None:
    # In production the migrating login owns the database and tables but, not being superuser,
    # is subject to their FORCEd row-level security.
    with database_with_owner_login(stack, "orgowner") as (url, owner, owner_url):
        migrate(url, "agentos_app")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP INDEX orgs_name_uq")
            conn.execute("INSERT INTO orgs (id, name, created_at) VALUES ('org_a', 'Acme', now() - interval '1 s'), "
                         "('org_b', 'acme', now())")
            conn.execute(f"ALTER TABLE orgs OWNER TO {owner}")
            conn.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} OWNER TO {owner}")  # as docs/operations.md sets it up
        with psycopg.connect(owner_url) as conn:
            _unique_org_names(conn)
            conn.commit()
        with psycopg.connect(url) as conn:
            names = dict(conn.execute("SELECT id, name FROM orgs").fetchall())
            forced = conn.execute("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'orgs'").fetchone()
        assert names == {"org_a": "Acme", "org_b": "acme (org_b)"} and forced == (True,)


def test_skills_list_prints_the_catalogue(api: Api, tmp_path: Path) -> None:
    result = agentos("skills", "list", cwd=tmp_path, env=run_env(api))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(BUILTIN_SKILLS) <= set(lines)
    assert "builtin" in lines["file_manager"] and "sensitive by arguments" in lines["file_manager"]
    listed = json.loads(agentos("skills", "list", "--json", cwd=tmp_path, env=run_env(api)).stdout)
    assert next(s for s in listed if s["name"] == "data_query")["parameters"]["required"] == ["source", "sql"]
    one_line_failure(agentos("skills", "list", cwd=tmp_path, env=_env(), timeout=20), EXIT_USAGE,
                     "start `agentos dev`")


@pytest.mark.parametrize("command", [["worker", "--concurrency", "1"], ["watchdog"]])
def test_services_started_while_postgres_and_redis_are_away_wait_for_them(tmp_path: Path,
                                                                        command: list[str]) -> None:
    """A worker or a watchdog loop is a service: an orchestrator (or `agentos dev`'s supervisor,
    during an outage) may start it before its Postgres and Redis answer. It must wait, not exit
    (a fault bench lost every worker that a supervisor restarted during an outage)."""
    proc = subprocess.Popen([AGENTOS, *command], cwd=tmp_path, env=no_stack_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.communicate(timeout=5)[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_run_session_continues_a_session_and_an_unknown_one_is_one_line(api: Api, tmp_path: Path) -> None:
    first = agentos("run", "assistant", "hello", cwd=tmp_path, env=run_env(api))
    assert first.returncode == 0, first.stderr
    session_id = first.stderr.split("session ")[1].split()[0]
    first_run = first.stderr.split(" · run ")[1].split()[0]
    again = agentos("run", "assistant", "hello again", "--session", session_id, cwd=tmp_path, env=run_env(api))
    assert again.returncode == 0, again.stderr
    assert again.stderr.split("session ")[1].split()[0] == session_id
    second_run = again.stderr.split(" · run ")[1].split()[0]
    assert second_run != first_run and again.stdout.strip()
    listed = httpx.get(f"{api.url}/v1/sessions/{session_id}/runs", headers={"Authorization": f"Bearer {api.key}"})
    assert sorted(r["id"] for r in listed.json()["data"]) == sorted([first_run, second_run])
    unknown = agentos("run", "assistant", "hello", "--session", "ses_" + "0" * 28, cwd=tmp_path, env=run_env(api))
    assert unknown.returncode != 0 and unknown.stdout == ""
    assert "NOT_FOUND" in unknown.stderr and "Traceback" not in unknown.stderr, unknown.stderr
