"""Contract tests of the hosted backends (e2b, Modal): the same `POST /execute` request maps to
the same result as with the local backends, limits are mapped or refused with 422, hosted API
errors become clear sandbox errors, and every remote sandbox is destroyed. E2B is a local fake of
its HTTP API on 127.0.0.1 (tests/fake_e2b.py); Modal a fake of its SDK (tests/fake_modal.py).
No test leaves this machine."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from core.settings import E2BSettings, ModalSettings, SandboxSettings
from skills.sandbox.client import SandboxClient, SandboxError
from skills.sandbox.e2b import E2BProvider
from skills.sandbox.hosted import HostedBackend
from skills.sandbox.modal import ModalProvider
from skills.sandbox.protocol import ExecuteRequest
from skills.sandbox.service import create_sandbox_app
from tests.fake_e2b import API_KEY, RunningFake
from tests.fake_modal import AuthError, Calls, fake_sdk

TOKEN = "hosted-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def fake_e2b() -> Iterator[RunningFake]:
    fake = RunningFake()
    try:
        yield fake
    finally:
        fake.stop()


def e2b_settings(fake: RunningFake, **e2b: Any) -> SandboxSettings:
    values = {"api_url": fake.state.url, "api_key": API_KEY, "sandbox_url": fake.state.url, **e2b}
    return SandboxSettings(backend="e2b", token=TOKEN, e2b=E2BSettings(**values))  # type: ignore[arg-type]


@dataclass
class Hosted:
    """A sandbox service app over one hosted backend, and what its fake saw."""

    name: str
    client: TestClient
    created: list[dict[str, Any]]
    alive: Any  # () -> how many remote sandboxes were not destroyed

    def execute(self, code: str, language: str = "python", **body: Any) -> dict[str, Any]:
        response = self.client.post("/execute", json={"language": language, "code": code, **body}, headers=AUTH)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(params=["e2b", "modal"])
def hosted(request: pytest.FixtureRequest, fake_e2b: RunningFake) -> Iterator[Hosted]:
    if request.param == "e2b":
        settings = e2b_settings(fake_e2b)
        backend = HostedBackend(E2BProvider(settings.e2b))
        created = fake_e2b.state.created
        with TestClient(create_sandbox_app(settings, backend)) as client:
            yield Hosted("e2b", client, created, lambda: len(fake_e2b.state.alive))
    else:
        calls = Calls()
        settings = SandboxSettings(backend="modal", token=TOKEN)  # type: ignore[arg-type]
        backend = HostedBackend(ModalProvider(settings.modal, sdk=fake_sdk(calls)))
        with TestClient(create_sandbox_app(settings, backend)) as client:
            yield Hosted("modal", client, calls.created, lambda: len(calls.created) - calls.terminated)


# --- the same request -> result mapping as the local backends ----------------------------------------

def test_exit_code_streams_stdin_and_changed_files(hosted: Hosted) -> None:
    code = ("import os, sys\nprint(open('keep.txt').read() + sys.stdin.read())\nprint('oops', file=sys.stderr)\n"
            "open('edit.txt', 'a').write(' more')\nos.remove('gone.txt')\nos.makedirs('d/e')\n"
            "open('d/e/new.bin', 'wb').write(bytes([0, 255]))\nsys.exit(3)\n")
    files = {"keep.txt": b64("kept"), "edit.txt": b64("edit"), "gone.txt": b64("bye")}
    result = hosted.execute(code, files=files, stdin=" and stdin")
    assert (result["exit_code"], result["stdout"], result["stderr"]) == (3, "kept and stdin\n", "oops\n")
    assert (result["truncated"], result["timed_out"], result["killed_by"]) == (False, False, None)
    changes = {(c["path"], c["change"], c["size"], c["content"]) for c in result["files_changed"]}
    assert changes == {("d/e/new.bin", "created", 2, base64.b64encode(bytes([0, 255])).decode()),
                       ("edit.txt", "modified", 9, b64("edit more")), ("gone.txt", "deleted", None, None)}
    assert result["cpu_ms"] == result["duration_ms"] > 0  # charged by wall time: the box's report is untrusted
    assert hosted.alive() == 0


def test_bash_runs_with_an_empty_environment(hosted: Hosted) -> None:
    result = hosted.execute("echo $((6 * 7)); env | sort | cut -d= -f1 | tr '\\n' ' '", language="bash")
    assert result["exit_code"] == 0
    assert result["stdout"] == "42\nHOME LANG PATH PWD PYTHONDONTWRITEBYTECODE PYTHONUNBUFFERED SHLVL TMPDIR _ "


def test_output_over_the_limit_is_cut_with_a_marker(hosted: Hosted) -> None:
    result = hosted.execute("print('y' * 5000)", limits={"output_bytes": 300})
    assert result["truncated"] is True
    assert result["stdout"] == "y" * 300 + "\n…[truncated: output exceeded 300 bytes]\n"


def test_the_wall_limit_kills_the_code_and_changes_nothing(hosted: Hosted) -> None:
    result = hosted.execute("open('late.txt', 'w').write('x')\nimport time\ntime.sleep(30)",
                            limits={"wall_s": 1})
    assert (result["exit_code"], result["timed_out"], result["killed_by"]) == (None, True, "SIGKILL")
    assert result["files_changed"] == []
    assert hosted.alive() == 0


def test_the_cpu_limit_is_mapped_to_rlimit_cpu(hosted: Hosted) -> None:
    result = hosted.execute("while True: pass", limits={"cpu_s": 1, "wall_s": 20})
    assert (result["exit_code"], result["timed_out"], result["killed_by"]) == (None, False, "SIGXCPU")


def test_the_limits_reach_the_hosted_api(hosted: Hosted) -> None:
    hosted.execute("print(1)", limits={"wall_s": 5, "memory_mb": 256})
    created = hosted.created[-1]
    if hosted.name == "e2b":
        assert created["timeout"] == 35 and created["allow_internet_access"] is False
        assert created["templateID"] == "base"
    else:
        assert created["timeout"] == 35 and created["block_network"] is True
        assert created["memory"] == (256, 256) and created["cpu"] == (1.0, 1.0)


def test_a_limit_the_backend_cannot_enforce_is_422_not_ignored(hosted: Hosted) -> None:
    response = hosted.client.post("/execute", json={"language": "python", "code": "print(1)",
                                                    "limits": {"disk_mb": 8}}, headers=AUTH)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_FAILED"
    assert error["details"]["fields"] == {
        "limits.disk_mb": f"limits.disk_mb: the {hosted.name} backend cannot enforce it; leave it out"}
    above = hosted.client.post("/execute", json={"language": "python", "code": "print(1)",
                                                 "limits": {"wall_s": 600}}, headers=AUTH)
    assert above.status_code == 422 and "limits.wall_s" in above.json()["error"]["details"]["fields"]


# --- hosted API errors become clear sandbox errors ------------------------------------------------------

def _service_error(settings: SandboxSettings, backend: HostedBackend) -> dict[str, Any]:
    with TestClient(create_sandbox_app(settings, backend)) as client:
        response = client.post("/execute", json={"language": "bash", "code": "echo hi"}, headers=AUTH)
    assert response.status_code == 502, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "SANDBOX_BACKEND_FAILED"
    return error


@pytest.mark.parametrize(("e2b", "expected"), [
    ({"api_key": "e2b_wrong"}, "E2B refused the API key (AGENTOS_SANDBOX__E2B__API_KEY): Invalid API key"),
    ({"template": "missing"}, "E2B refused creating a sandbox from template 'missing'"),
    ({"template": "busy"}, "E2B is rate limiting or at the team's limit of concurrent sandboxes"),
    ({"template": "dies"}, "broke while the code ran (RemoteProtocolError); its result is lost"),
    ({"api_url": "http://127.0.0.1:9"}, "the E2B API at http://127.0.0.1:9 is unreachable (ConnectError)"),
])
def test_e2b_errors_are_clear_502s_and_no_sandbox_is_left(fake_e2b: RunningFake, e2b: dict[str, Any],
                                                          expected: str) -> None:
    settings = e2b_settings(fake_e2b, **e2b)
    error = _service_error(settings, HostedBackend(E2BProvider(settings.e2b)))
    assert error["message"].startswith("The e2b backend failed: ") and expected in error["message"]
    assert fake_e2b.state.alive == []


def test_modal_errors_are_clear_502s() -> None:
    calls = Calls(fail_create=AuthError("Token missing"))
    settings = SandboxSettings(backend="modal", token=TOKEN)  # type: ignore[arg-type]
    error = _service_error(settings, HostedBackend(ModalProvider(settings.modal, sdk=fake_sdk(calls))))
    assert error["message"] == "The modal backend failed: Modal could not create a sandbox (AuthError: Token missing)."


def test_a_worker_reads_a_hosted_failure_as_a_sentence(fake_e2b: RunningFake) -> None:
    """The whole chain: the worker's client -> the service -> E2B answering 429."""
    settings = e2b_settings(fake_e2b, template="busy")
    app = create_sandbox_app(settings, HostedBackend(E2BProvider(settings.e2b)))

    async def go() -> str:
        client = SandboxClient(SandboxSettings(url="http://sandbox", token=TOKEN),  # type: ignore[arg-type]
                               None, transport=httpx.ASGITransport(app))
        try:
            with pytest.raises(SandboxError) as failed:
                await client.execute("org_x", ExecuteRequest(language="python", code="print(1)"))
            return str(failed.value)
        finally:
            await client.aclose()

    message = asyncio.run(go())
    assert message.startswith("The sandbox service failed (HTTP 502: The e2b backend failed: E2B is rate limiting")


# --- start-up ---------------------------------------------------------------------------------------------

def _start(backend: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTOS_", "MODAL_", "E2B_"))}
    clean |= {"AGENTOS_SANDBOX__TOKEN": "t", "AGENTOS_SANDBOX__BACKEND": backend, **env}
    # -S-like isolation from an installed modal: a sitecustomize-free path where `modal` cannot import.
    return subprocess.run([sys.executable, "-c", "import sys; sys.modules['modal'] = None; "
                           "from agentos.cli import main; sys.argv = ['agentos', 'sandbox']; main()"],
                          env=clean, capture_output=True, text=True, timeout=60)


def test_a_missing_modal_extra_is_one_clear_start_up_error() -> None:
    done = _start("modal")
    assert done.returncode == 2
    assert "sandbox backend modal unavailable: the modal backend needs the Modal SDK: pip install 'agentos[modal]'" \
        in done.stderr


def test_e2b_without_an_api_key_is_one_clear_start_up_error() -> None:
    done = _start("e2b")
    assert done.returncode == 2
    assert "sandbox backend e2b unavailable: the e2b backend needs an API key: set AGENTOS_SANDBOX__E2B__API_KEY" \
        in done.stderr


def test_the_start_up_check_runs_one_execution(fake_e2b: RunningFake) -> None:
    settings = e2b_settings(fake_e2b)
    HostedBackend(E2BProvider(settings.e2b)).check()  # raises BackendUnavailable unless `echo ok` ran
    modal = ModalProvider(ModalSettings(), sdk=fake_sdk(Calls(fail_lookup=AuthError("bad token"))))
    with pytest.raises(Exception, match=r"Modal refused or could not be reached \(AuthError: bad token\)"):
        HostedBackend(modal).check()


def test_the_modal_calls_match_the_installed_sdk() -> None:
    """Where the `modal` extra is installed, the adapter's calls bind to the real SDK's signatures
    (checked by hand against modal 1.6.4; CI installs no extra, so this skips there)."""
    modal = pytest.importorskip("modal")
    import inspect

    inspect.signature(modal.App.lookup).bind("agentos-sandbox", create_if_missing=True)
    inspect.signature(modal.Image.debian_slim).bind(python_version="3.12")
    inspect.signature(modal.Sandbox.create).bind(app=None, image=None, timeout=35, cpu=(1.0, 1.0),
                                                 memory=(512, 512), block_network=True)
    inspect.signature(modal.Sandbox.exec).bind(None, "bash", "run.sh", timeout=35, text=False)
    filesystem = modal.sandbox.sandbox.SandboxFilesystem
    inspect.signature(filesystem.write_bytes).bind(None, b"", "/tmp/agentos/x")
    inspect.signature(filesystem.read_bytes).bind(None, "/tmp/agentos/x")
    assert modal.exception.SandboxFilesystemNotFoundError.__name__ == "SandboxFilesystemNotFoundError"
