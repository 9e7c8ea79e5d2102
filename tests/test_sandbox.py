"""The sandbox service's contract, per-org quotas, and the `code_executor` skill in real runs
(executed in-process against the real sandbox service, so no other worker can take them)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis.asyncio as aioredis
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.process import free_port
from agentos.stack.redis import EmbeddedRedis
from core.settings import SandboxSettings, Settings
from core.store import agents, runs
from core.tenancy import org_sandbox_running_key, tenant_tx
from runtime.executor import execute_run
from runtime.services import Services
from skills import default_registry
from skills.sandbox.bwrap import BwrapBackend
from skills.sandbox.client import SandboxClient, SandboxError
from skills.sandbox.protocol import ExecuteRequest
from skills.sandbox.quota import SandboxQuota
from tests.helpers import ADMIN_TOKEN, Org, RsaKeys, make_settings
from tests.sandbox_service import Sandbox, require_bwrap, running_sandbox, sandbox_processes
from tests.sse import read_events


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as running:
        yield running


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- the service ---------------------------------------------------------------------------------

def test_execute_returns_exit_code_streams_and_changed_files(sandbox: Sandbox) -> None:
    code = ("import os, sys\nprint(open('keep.txt').read() + sys.stdin.read())\nprint('oops', file=sys.stderr)\n"
            "open('edit.txt', 'a').write(' more')\nos.remove('gone.txt')\nos.makedirs('d/e')\n"
            "open('d/e/new.bin', 'wb').write(bytes([0, 255]))\nsys.exit(3)\n")
    files = {"keep.txt": b64("kept"), "edit.txt": b64("edit"), "gone.txt": b64("bye")}
    result = sandbox.execute(code, files=files, stdin=" and stdin")
    assert (result["exit_code"], result["stdout"], result["stderr"]) == (3, "kept and stdin\n", "oops\n")
    assert (result["truncated"], result["timed_out"], result["killed_by"]) == (False, False, None)
    changes = {(c["path"], c["change"], c["size"], c["content"]) for c in result["files_changed"]}
    assert changes == {("d/e/new.bin", "created", 2, base64.b64encode(bytes([0, 255])).decode()),
                       ("edit.txt", "modified", 9, b64("edit more")), ("gone.txt", "deleted", None, None)}
    assert result["duration_ms"] > 0 and result["cpu_ms"] >= 0


def test_bash_runs_too(sandbox: Sandbox) -> None:
    result = sandbox.execute("echo $((6 * 7)); exit 0", language="bash")
    assert (result["exit_code"], result["stdout"]) == (0, "42\n")


def test_a_wrong_or_missing_token_is_401(sandbox: Sandbox) -> None:
    for token in ("not-the-token", "Bearer"):
        response = sandbox.post({"language": "python", "code": "print(1)"}, token=token)
        assert response.status_code == 401 and response.json()["error"]["code"] == "UNAUTHENTICATED"
    assert httpx.post(f"{sandbox.url}/execute", json={}).status_code == 401


def test_a_limit_above_its_ceiling_is_422_never_lowered(sandbox: Sandbox) -> None:
    ceilings = SandboxSettings().ceilings
    response = sandbox.post({"language": "python", "code": "print(1)",
                             "limits": {"wall_s": ceilings.wall_s + 1, "memory_mb": ceilings.memory_mb * 2}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_FAILED" and set(error["details"]["fields"]) == {"limits.wall_s",
                                                                                       "limits.memory_mb"}


@pytest.mark.parametrize("body", [
    {"language": "ruby", "code": "puts 1"},
    {"language": "python"},
    {"language": "python", "code": "print(1)", "limits": {"wall_s": 0}},
    {"language": "python", "code": "print(1)", "limits": {"gpus": 1}},
    {"language": "python", "code": "print(1)", "files": {"a.txt": "%%% not base64"}},
])
def test_invalid_requests_are_422(sandbox: Sandbox, body: dict[str, Any]) -> None:
    response = sandbox.post(body)
    assert response.status_code == 422 and response.json()["error"]["code"] == "VALIDATION_FAILED"


def test_output_over_the_limit_is_cut_with_a_marker(sandbox: Sandbox) -> None:
    result = sandbox.execute("print('y' * 5000)", limits={"output_bytes": 300})
    assert result["truncated"] is True
    assert result["stdout"] == "y" * 300 + "\n…[truncated: output exceeded 300 bytes]\n"


def test_the_service_refuses_to_start_without_a_backend_binary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    env |= {"AGENTOS_SANDBOX__TOKEN": "t", "PATH": str(tmp_path)}  # nothing to find on this PATH
    done = subprocess.run([sys.executable, "-m", "agentos", "sandbox"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "bubblewrap not found: apt-get install bubblewrap, or set AGENTOS_SANDBOX__BACKEND" in done.stderr


def test_a_sandbox_only_host_in_production_needs_no_api_secrets(tmp_path: Path) -> None:
    """Regression: the service loaded every setting, so `AGENTOS_ENV=production` refused to start
    it over the API's development JWT secret, which a sandbox host neither has nor needs."""
    with running_sandbox(tmp_path, {"AGENTOS_ENV": "production"}) as production:
        assert production.execute("print(2 + 2)")["stdout"] == "4\n"


# --- quotas --------------------------------------------------------------------------------------

def _client(sandbox: Sandbox, stack: StackUrls, **quota: int) -> tuple[SandboxClient, aioredis.Redis]:
    redis = aioredis.from_url(stack.redis_url)
    settings = SandboxSettings(url=sandbox.url, token=sandbox.token, **quota)  # type: ignore[arg-type]
    return SandboxClient(settings, redis), redis


def test_an_org_over_its_concurrent_executions_gets_a_clear_error(sandbox: Sandbox, stack: StackUrls) -> None:
    org_id = f"org_quota_{time.time_ns()}"

    async def go() -> tuple[Any, Any, Any]:
        client, redis = _client(sandbox, stack, org_max_concurrent=1)
        try:
            slow = asyncio.create_task(client.execute(org_id, ExecuteRequest(language="bash", code="sleep 2; echo a")))
            await asyncio.sleep(0.5)
            with pytest.raises(SandboxError) as refused:
                await client.execute(org_id, ExecuteRequest(language="bash", code="echo b"))
            other_org = await client.execute(org_id + "_other", ExecuteRequest(language="bash", code="echo c"))
            first = await slow
            after = await client.execute(org_id, ExecuteRequest(language="bash", code="echo d"))
            return refused.value, (first.stdout, other_org.stdout), after.stdout
        finally:
            await client.aclose()
            await redis.aclose()

    refused, outputs, after = asyncio.run(go())
    assert "already runs 1 code execution(s) at once, its limit (1)" in str(refused)
    assert outputs == ("a\n", "c\n") and after == "d\n"  # other orgs are unaffected; the slot comes back


def test_an_org_over_its_daily_cpu_gets_a_clear_error(sandbox: Sandbox, stack: StackUrls) -> None:
    org_id = f"org_cpu_{time.time_ns()}"

    async def go() -> str:
        client, redis = _client(sandbox, stack, org_cpu_s_per_day=1)
        try:
            burn = "import time\nend = time.process_time() + 1.2\nwhile time.process_time() < end: pass\n"
            first = await client.execute(org_id, ExecuteRequest(language="python", code=burn))
            assert first.exit_code == 0 and first.cpu_ms >= 1000
            with pytest.raises(SandboxError) as refused:
                await client.execute(org_id, ExecuteRequest(language="python", code="print(1)"))
            return str(refused.value)
        finally:
            await client.aclose()
            await redis.aclose()

    assert "used its 1 CPU seconds of code execution for today" in asyncio.run(go())


# --- per-org quota overrides (orgs.limits, PATCH /v1/orgs/{id}) ------------------------------------

def _patch_org_limits(client: TestClient, org_id: str, **limits: int | None) -> dict[str, Any]:
    r = client.patch(f"/v1/orgs/{org_id}", json={"limits": limits}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_an_orgs_lower_concurrency_override_refuses_it_at_its_limit_while_another_org_is_not(
        sandbox: Sandbox, stack: StackUrls, rsa_keys: RsaKeys, org: Org, other_org: Org, client: TestClient,
        tmp_path: Path) -> None:
    body = _patch_org_limits(client, org.id, sandbox_max_concurrent=1)
    assert body["limits"]["sandbox_max_concurrent"] == 1 and body["limit_overrides"] == {"sandbox_max_concurrent": 1}
    settings = make_settings(stack, rsa_keys, sandbox={"url": sandbox.url, "token": sandbox.token},
                             worker={"workspace_root": str(tmp_path)}, limits={"cache_s": 0})

    async def go() -> tuple[str, list[str], list[str]]:
        svc = await Services.open(settings)
        assert svc.sandbox is not None
        box = svc.sandbox

        async def hold(org_id: str) -> asyncio.Task[Any]:
            """An execution of `org_id` that holds one of its slots for a while (returned once it has it)."""
            task = asyncio.create_task(box.execute(org_id, ExecuteRequest(language="bash", code="sleep 4; echo held")))
            while not await svc.redis.zcard(org_sandbox_running_key(org_id)):
                await asyncio.sleep(0.02)
            return task

        try:
            held = await hold(org.id)
            with pytest.raises(SandboxError) as refused:
                await box.execute(org.id, ExecuteRequest(language="bash", code="echo refused"))
            # Another org, with the default (4), runs two at once meanwhile.
            others = await asyncio.gather(*(box.execute(other_org.id, ExecuteRequest(language="bash", code="echo c"))
                                            for _ in range(2)))
            assert (await held).stdout == "held\n"
            # The override cleared, the same org runs a second execution next to a held one.
            _patch_org_limits(client, org.id, sandbox_max_concurrent=None)
            held = await hold(org.id)
            second = await box.execute(org.id, ExecuteRequest(language="bash", code="echo second"))
            await held
            return str(refused.value), [r.stdout for r in others], [second.stdout]
        finally:
            await svc.close()

    refused, others, after = asyncio.run(go())
    assert "already runs 1 code execution(s) at once, its limit (1)" in refused
    assert others == ["c\n", "c\n"] and after == ["second\n"]


def test_an_orgs_lower_cpu_override_reaches_the_model_and_the_run_continues_while_another_org_runs_code(
        sandbox: Sandbox, stack: StackUrls, rsa_keys: RsaKeys, org: Org, other_org: Org, client: TestClient,
        tmp_path: Path) -> None:
    _patch_org_limits(client, org.id, sandbox_cpu_s_per_day=2)

    async def charge_both() -> None:
        redis = aioredis.from_url(stack.redis_url)
        try:
            quota = SandboxQuota(SandboxSettings(), redis)
            for org_id in (org.id, other_org.id):
                await quota.charge(org_id, 2000)
        finally:
            await redis.aclose()

    asyncio.run(charge_both())
    settings = _settings(stack, rsa_keys, tmp_path, sandbox)
    outputs = []
    for tenant in (org, other_org):
        agent = tenant.create_agent(skills=["code_executor"], confirm="none")
        session = tenant.create_session(str(agent["id"]))
        script = 'call: code_executor {"language": "python", "code": "print(1)"}'
        run_id, _ = _execute(settings, tenant, session, script)
        results, last = _results(client, tenant, run_id)
        assert last == "run.succeeded"
        outputs.append(results[0])
    assert "used its 2 CPU seconds of code execution for today" in outputs[0]["error"]
    assert "sandbox_cpu_s_per_day" in outputs[0]["error"]
    assert outputs[1]["output"]["stdout"] == "1\n"  # the same usage is within the default 3600 s


# --- the skill in runs ----------------------------------------------------------------------------

def test_code_executor_is_sensitive_by_default() -> None:
    skill = default_registry().get("code_executor")
    assert skill.is_sensitive({"language": "python", "code": "print(1)"}) is True
    assert set(skill.parameters["required"]) == {"language", "code"}


def _settings(stack: StackUrls, rsa_keys: RsaKeys, workspaces: Path, sandbox: Sandbox | None,
              **extra: object) -> Settings:
    box = {"url": sandbox.url, "token": sandbox.token, **extra} if sandbox else {}
    return make_settings(stack, rsa_keys, sandbox=box, worker={"workspace_root": str(workspaces)})


async def _queued_run(svc: Services, org: Org, session: dict[str, Any], text: str) -> str:
    """A queued run stored without being sent to any worker (the suite's worker may be running)."""
    async with tenant_tx(svc.pool, org.id) as conn:
        await runs.lock_session(conn, str(session["id"]))
        agent = await agents.get(conn, str(session["agent_id"]))
        assert agent is not None
        created = await runs.create(conn, session_id=str(session["id"]), text=text, multitask="enqueue",
                                    metadata={}, idempotency_key=None, request_hash="-", created_by=None)
    return created.run["id"]


def _execute(settings: Settings, org: Org, session: dict[str, Any], script: str,
             during: Any = None) -> tuple[str, Any]:
    async def go() -> tuple[str, Any]:
        svc = await Services.open(settings)
        try:
            run_id = await _queued_run(svc, org, session, script)
            task = asyncio.create_task(execute_run(svc, run_id, org.id))
            if during is not None:
                await asyncio.to_thread(during)
            return run_id, await task
        finally:
            await svc.close()

    return asyncio.run(go())


def _results(client: TestClient, org: Org, run_id: str) -> tuple[list[dict[str, Any]], str]:
    events = read_events(client, f"/v1/runs/{run_id}/events", org.headers)
    return [e["data"] for e in events if e["type"] == "tool.result"], events[-1]["type"]


def test_a_run_executes_python_and_shares_the_workspace_with_file_manager(
        sandbox: Sandbox, stack: StackUrls, rsa_keys: RsaKeys, org: Org, client: TestClient, tmp_path: Path) -> None:
    agent = org.create_agent(skills=["code_executor", "file_manager"], confirm="none")
    session = org.create_session(str(agent["id"]))
    code = "print(sum(range(10)))\\nprint(open('notes/in.txt').read())\\nopen('out.txt', 'w').write('from code')"
    script = "\n".join([
        'call: code_executor {"language": "python", "code": "print(sum(range(10)))"}',
        'call: file_manager {"action": "write", "path": "notes/in.txt", "content": "from file_manager"}',
        'call: code_executor {"language": "python", "code": "' + code + '"}',
        'call: file_manager {"action": "read", "path": "out.txt"}',
        'call: code_executor {"language": "bash", "code": "env; ls -la /workspace"}',
    ])
    run_id, delivery = _execute(_settings(stack, rsa_keys, tmp_path, sandbox), org, session, script)
    results, last = _results(client, org, run_id)
    assert last == "run.succeeded", results
    assert results[0]["output"]["stdout"] == "45\n" and results[0]["output"]["exit_code"] == 0
    assert results[2]["output"]["stdout"] == "45\nfrom file_manager\n"
    assert results[2]["output"]["files_changed"] == [{"path": "out.txt", "change": "created", "size": 9}]
    assert results[3]["output"]["content"] == "from code"
    env = results[4]["output"]["stdout"]
    assert "AGENTOS" not in env and "postgresql" not in env and "redis://" not in env
    assert (tmp_path / org.id / str(session["id"]) / "out.txt").read_text() == "from code"


def test_in_service_mode_the_sessions_files_live_in_the_sandbox_service_and_file_manager_still_shares_them(
        stack: StackUrls, rsa_keys: RsaKeys, org: Org, client: TestClient, tmp_path: Path) -> None:
    agent = org.create_agent(skills=["code_executor", "file_manager"], confirm="none")
    session = org.create_session(str(agent["id"]))
    code = "print(open('notes/in.txt').read())\\nopen('out.txt', 'w').write('from code')"
    script = "\n".join([
        'call: file_manager {"action": "write", "path": "notes/in.txt", "content": "from file_manager"}',
        'call: code_executor {"language": "python", "code": "' + code + '"}',
        'call: file_manager {"action": "read", "path": "out.txt"}',
        'call: code_executor {"language": "bash", "code": "cat out.txt; echo; cat notes/in.txt"}',
    ])
    spaces = tmp_path / "spaces"
    with running_sandbox(tmp_path, WORKSPACES_DIR=str(spaces)) as service:
        settings = _settings(stack, rsa_keys, tmp_path / "ws", service, workspace_mode="service")
        run_id, _ = _execute(settings, org, session, script)
    results, last = _results(client, org, run_id)
    assert last == "run.succeeded", results
    assert results[1]["output"]["stdout"] == "from file_manager\n"
    assert results[2]["output"]["content"] == "from code"
    assert results[3]["output"]["stdout"] == "from code\nfrom file_manager"
    kept = spaces / org.id / str(session["id"])
    assert (kept / "out.txt").read_text() == "from code" and (kept / "notes/in.txt").read_text() == "from file_manager"


def test_a_workspace_symlink_to_the_host_is_not_followed_into_the_sandbox(
        sandbox: Sandbox, stack: StackUrls, rsa_keys: RsaKeys, org: Org, client: TestClient, tmp_path: Path) -> None:
    agent = org.create_agent(skills=["code_executor"], confirm="none")
    session = org.create_session(str(agent["id"]))
    workspace = tmp_path / org.id / str(session["id"])
    workspace.mkdir(parents=True)
    (workspace / "hostname").symlink_to("/etc/hostname")
    (workspace / "real.txt").write_text("real")
    script = 'call: code_executor {"language": "bash", "code": "ls; cat hostname"}'
    run_id, _ = _execute(_settings(stack, rsa_keys, tmp_path, sandbox), org, session, script)
    results, _ = _results(client, org, run_id)
    assert results[0]["output"]["stdout"] == "real.txt\n" and results[0]["output"]["exit_code"] == 1
    assert (workspace / "hostname").is_symlink()  # untouched


def test_without_a_sandbox_the_model_reads_a_clear_error_and_the_run_continues(
        stack: StackUrls, rsa_keys: RsaKeys, org: Org, client: TestClient, tmp_path: Path) -> None:
    agent = org.create_agent(skills=["code_executor"], confirm="none")
    session = org.create_session(str(agent["id"]))
    run_id, _ = _execute(_settings(stack, rsa_keys, tmp_path, None), org, session,
                         'call: code_executor {"language": "python", "code": "print(1)"}')
    results, last = _results(client, org, run_id)
    assert last == "run.succeeded"
    assert results[0]["error"].startswith("Code execution is not available on this platform")


def test_a_quota_refusal_reaches_the_model_and_the_run_continues(
        sandbox: Sandbox, stack: StackUrls, rsa_keys: RsaKeys, org: Org, client: TestClient, tmp_path: Path) -> None:
    async def use_up() -> None:
        redis = aioredis.from_url(stack.redis_url)
        try:
            from skills.sandbox.quota import SandboxQuota
            await SandboxQuota(SandboxSettings(org_cpu_s_per_day=5), redis).charge(org.id, 5000)
        finally:
            await redis.aclose()

    asyncio.run(use_up())
    agent = org.create_agent(skills=["code_executor"], confirm="none")
    session = org.create_session(str(agent["id"]))
    settings = _settings(stack, rsa_keys, tmp_path, sandbox, org_cpu_s_per_day=5)
    run_id, _ = _execute(settings, org, session, 'call: code_executor {"language": "python", "code": "print(1)"}')
    results, last = _results(client, org, run_id)
    assert last == "run.succeeded"
    assert "used its 5 CPU seconds of code execution for today" in results[0]["error"]


def test_killing_the_service_mid_execution_fails_the_call_cleanly_and_leaves_nothing_running(
        stack: StackUrls, rsa_keys: RsaKeys, org: Org, client: TestClient, tmp_path: Path) -> None:
    agent = org.create_agent(skills=["code_executor"], confirm="none")
    session = org.create_session(str(agent["id"]))
    script = 'call: code_executor {"language": "bash", "code": "sleep 300 & sleep 300"}'
    with running_sandbox(tmp_path, DEFAULTS__WALL_S="60") as doomed:
        def kill_when_running() -> None:
            deadline = time.monotonic() + 60
            while not sandbox_processes() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert doomed.process.pid is not None
            os.kill(doomed.process.pid, signal.SIGKILL)

        run_id, _ = _execute(_settings(stack, rsa_keys, tmp_path / "ws", doomed), org, session, script,
                             during=kill_when_running)
    results, last = _results(client, org, run_id)
    assert last == "run.succeeded"
    assert results[0]["error"].startswith("The sandbox service stopped answering during the execution")
    deadline = time.monotonic() + 20
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == []


class _ServiceGoneAtStart(BwrapBackend):
    """The launcher's guard reads end-of-file from the start: what the sandbox sees when the service
    died while bwrap was starting, before `--die-with-parent` took hold (a SIGKILL of the service
    timed into that window once left a sandbox running: the test above)."""

    def _guard_pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        os.close(write)
        return read, os.open(os.devnull, os.O_WRONLY)  # closed by `execute` like the real write end


def test_a_sandbox_whose_service_is_gone_kills_its_code_and_ends() -> None:
    require_bwrap()
    settings = SandboxSettings()
    backend = _ServiceGoneAtStart(settings)
    started = time.monotonic()
    try:
        code = "import time\ntime.sleep(30)\nprint('outlived the service')\n"
        result = backend.execute(ExecuteRequest(language="python", code=code),
                                 settings.defaults.model_copy(update={"wall_s": 25}))
    finally:
        backend.close()
    assert time.monotonic() - started < 10, "killed by the guard, not at the wall limit"
    # The launcher exited before any code ran to an end: no exit status reached the result pipe.
    assert (result.exit_code, result.timed_out, result.stdout) == (None, False, ""), result
    assert sandbox_processes() == []


def test_the_request_and_result_models_round_trip() -> None:
    request = ExecuteRequest(language="python", code="print(1)", files={"./a/../b.txt": b64("x")})
    assert list(request.files) == ["b.txt"]
    assert json.loads(request.model_dump_json())["limits"] == {
        "wall_s": None, "cpu_s": None, "memory_mb": None, "pids": None, "output_bytes": None, "disk_mb": None}


def test_an_operators_read_only_venv_provides_packages() -> None:
    require_bwrap()
    root = Path(tempfile.mkdtemp(prefix="agentos-venv-test-"))
    try:
        root.chmod(0o755)  # as an operator would prepare it: readable by the sandbox uid
        venv = root / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
        package = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "demo"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("VALUE = 42\n")
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        settings = SandboxSettings(venv=str(venv))
        backend = BwrapBackend(settings)
        try:
            backend.check()
            code = (f"import sys, demo\nprint(sys.prefix, demo.VALUE)\n"
                    f"try:\n    open({str(package / 'x.py')!r}, 'w')\nexcept OSError as e:\n    print(e.strerror)\n")
            result = backend.execute(ExecuteRequest(language="python", code=code), settings.defaults)
        finally:
            backend.close()
        assert result.stdout == f"{venv} 42\nRead-only file system\n"
    finally:
        shutil.rmtree(root)


@pytest.mark.timeout(180)
def test_agentos_dev_starts_a_sandbox_and_a_run_gets_45(stack: StackUrls, tmp_path: Path) -> None:
    """The acceptance run through the real CLI: `agentos dev` (on the suite's Postgres and Redis)
    starts the sandbox service next to its worker, `agentos run` streams the tool result, and
    Ctrl-C leaves nothing of it running. A Redis of its own keeps the suite's worker (which has
    no sandbox) from taking the run."""
    require_bwrap()
    port = free_port()
    redis = EmbeddedRedis(tmp_path / "redis", durable=False)
    redis.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    env |= {"PYTHONUNBUFFERED": "1", "AGENTOS_DATABASE_URL": stack.database_url, "AGENTOS_REDIS_URL": redis.url}
    agentos = [sys.executable, "-m", "agentos"]
    dev = subprocess.Popen([*agentos, "dev", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert dev.poll() is None and time.monotonic() < deadline, "agentos dev did not become ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        family = psutil.Process(dev.pid).children(recursive=True)
        assert any("sandbox" in p.cmdline() for p in family), "agentos dev runs the sandbox service"
        key = (tmp_path / ".agentos" / "owner_key").read_text().strip()
        created = httpx.post(f"http://127.0.0.1:{port}/v1/agents", headers={"Authorization": f"Bearer {key}"},
                             json={"name": "coder", "skills": ["code_executor"], "confirm": "none"})
        assert created.status_code == 201, created.text
        probe = (f"import socket\\ntry:\\n    socket.create_connection(('127.0.0.1', {port}), 2)\\n"
                 "except OSError as e:\\n    print(type(e).__name__)")
        script = ('call: code_executor {"language": "python", "code": "print(sum(range(10)))"}\n'
                  f'call: code_executor {{"language": "python", "code": "{probe}"}}')  # this API's port
        ran = subprocess.run([*agentos, "run", "coder", script], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=90)
        assert ran.returncode == 0, ran.stderr
        assert '← {"exit_code": 0, "stdout": "45\\n"' in ran.stderr
        assert '← {"exit_code": 0, "stdout": "ConnectionRefusedError\\n"' in ran.stderr
    finally:
        dev.send_signal(signal.SIGINT)
        out, _ = dev.communicate(timeout=60)
        redis.stop()
    assert "sandbox service (code_executor) on 127.0.0.1:" in out
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [] and sandbox_processes() == []


def test_files_and_directories_replacing_each_other_are_applied_to_the_workspace(
        sandbox: Sandbox, stack: StackUrls, rsa_keys: RsaKeys, org: Org, client: TestClient, tmp_path: Path) -> None:
    agent = org.create_agent(skills=["code_executor"], confirm="none")
    session = org.create_session(str(agent["id"]))
    workspace = tmp_path / org.id / str(session["id"])
    workspace.mkdir(parents=True)
    (workspace / "a").write_text("was a file")
    (workspace / "d").mkdir()
    (workspace / "d" / "x").write_text("in a directory")
    script = 'call: code_executor {"language": "bash", "code": "rm a; mkdir a; echo in > a/b; rm -r d; echo f > d"}'
    run_id, _ = _execute(_settings(stack, rsa_keys, tmp_path, sandbox), org, session, script)
    results, _ = _results(client, org, run_id)
    assert results[0]["output"]["files_changed"] == [
        {"path": "a", "change": "deleted", "size": None}, {"path": "d/x", "change": "deleted", "size": None},
        {"path": "a/b", "change": "created", "size": 3}, {"path": "d", "change": "created", "size": 2}]
    assert (workspace / "a" / "b").read_text() == "in\n" and (workspace / "d").read_text() == "f\n"
