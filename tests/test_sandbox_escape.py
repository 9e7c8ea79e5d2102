"""The escape suite: snippets a model could send to `code_executor`, each run by the real
sandbox service (bwrap backend) and each asserting the exact safe outcome. After every probe
the service still serves and no process of the sandbox uid is left on the host.

Network probes target 127.0.0.1 only."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from agentos.stack.local import StackUrls
from tests.sandbox_service import CANARY, Sandbox, running_sandbox, sandbox_processes

MARKER = "…[truncated: output exceeded"
# What the service sets, plus what the bash launcher adds.
SANDBOX_ENV_KEYS = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PWD", "OLDPWD",
                    "SHLVL", "_"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), DEFAULTS__WALL_S="10") as running:
        yield running


@pytest.fixture(autouse=True)
def nothing_left_behind(sandbox: Sandbox) -> Iterator[None]:
    """After each probe: the service answers, and no process of the sandbox uid exists."""
    yield
    assert sandbox.process.alive(), sandbox.process.log_tail()
    assert httpx.get(f"{sandbox.url}/health", timeout=10).json() == {"status": "ok", "backend": "bwrap"}
    assert sandbox_processes() == []


def run(sandbox: Sandbox, code: str, language: str = "python", **limits: Any) -> dict[str, Any]:
    return sandbox.execute(code, language, limits=limits)


def out(sandbox: Sandbox, code: str, language: str = "python", **limits: Any) -> str:
    """stdout of a probe that must exit 0."""
    result = run(sandbox, code, language, **limits)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


def errno_of(path_op: str) -> str:
    """Python that prints the errno name an operation fails with (or OK)."""
    return (f"import errno, os\ntry:\n    {path_op}\n    print('OK')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\n")


# --- reading what is not the sandbox's ----------------------------------------------------------

def test_etc_shadow_does_not_exist(sandbox: Sandbox) -> None:
    assert out(sandbox, errno_of("open('/etc/shadow').read()")) == "ENOENT\n"


def test_etc_holds_only_the_synthetic_passwd_and_group(sandbox: Sandbox) -> None:
    assert out(sandbox, "import os; print(sorted(os.listdir('/etc')))") == "['group', 'passwd']\n"


def test_pid1_environ_is_the_sandbox_environment(sandbox: Sandbox) -> None:
    text = out(sandbox, "print(open('/proc/1/environ').read())")
    assert CANARY not in text and "AGENTOS" not in text
    assert {item.split("=", 1)[0] for item in text.strip().split("\0") if item} <= SANDBOX_ENV_KEYS


def test_own_environment_holds_no_secret(sandbox: Sandbox) -> None:
    text = out(sandbox, "import os, json; print(json.dumps(dict(os.environ)))")
    assert CANARY not in text and "AGENTOS" not in text
    assert set(json.loads(text)) <= SANDBOX_ENV_KEYS


def test_no_process_environment_inside_holds_the_services_secrets(sandbox: Sandbox) -> None:
    code = ("import glob\nfor p in glob.glob('/proc/[0-9]*/environ'):\n"
            "    try:\n        print(open(p, 'rb').read())\n    except OSError:\n        pass\n")
    text = out(sandbox, code)
    assert CANARY not in text and "AGENTOS" not in text and "postgresql://" not in text


def test_only_the_sandboxs_own_processes_are_visible(sandbox: Sandbox) -> None:
    pids = out(sandbox, "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    # The launcher (pid 1), its guard's watcher (2) and this interpreter (3 was `cp` of the staged files).
    assert pids == "[1, 2, 4]\n"


def test_host_directories_are_absent(sandbox: Sandbox) -> None:
    code = "import os; print([os.path.exists(p) for p in ('/work', '/root', '/home', '/var', '/srv', '/opt')])"
    assert out(sandbox, code) == "[False, False, False, False, False, False]\n"


def test_host_tmp_is_not_the_sandboxs_tmp(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = Path("/tmp") / f"agentos-probe-{CANARY}"
    secret.write_text("host secret")
    try:
        assert out(sandbox, f"import os; print(os.listdir('/tmp'), os.path.exists({str(secret)!r}))") == "[] False\n"
    finally:
        secret.unlink()


# Walks the sandbox's whole tree, but not the read-only binds of the host's system files (/usr, the
# merged-/usr directories, the interpreter's prefix): another execution's files cannot be there, and
# walking /usr with a cold page cache outlasts the wall limit on a fresh machine. The probe's own
# copy in /tmp shows the walk reaches the writable places.
SEARCH_ALL_BUT_SYSTEM = """import os, sys, time
time.sleep(1)
open("/tmp/" + {name!r}, "w").close()
system = {{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", os.path.realpath(sys.prefix)}}
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in system]
    for entry in dirs + files:
        if entry == {name!r}:
            print(os.path.join(root, entry))
"""


def test_another_executions_workdir_is_out_of_reach(sandbox: Sandbox) -> None:
    name = f"secret-{CANARY}"
    other: dict[str, Any] = {}

    def holder() -> None:  # another session's execution, holding a file while the probe looks for it
        other.update(run(sandbox, f"open({name!r}, 'w').write('x'); import time; time.sleep(3)"))

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        found = out(sandbox, SEARCH_ALL_BUT_SYSTEM.format(name=name))
    finally:
        thread.join(30)
    assert found == f"/tmp/{name}\n"
    assert other["exit_code"] == 0 and [f["path"] for f in other["files_changed"]] == [name]


def test_staged_input_files_are_read_only(sandbox: Sandbox) -> None:
    files = {"data.txt": base64.b64encode(b"given").decode()}
    result = sandbox.execute(errno_of("open('/in/data.txt', 'w').write('x')") + "print(open('data.txt').read())",
                             files=files)
    assert result["stdout"] == "EROFS\ngiven\n"


# --- writing outside the workdir ----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/usr/evil", "/etc/evil", "/code/evil", "/evil", "/dev/evil", "/proc/evil",
                                  "/proc/sys/kernel/hostname"])
def test_writing_outside_the_workdir_fails(sandbox: Sandbox, path: str) -> None:
    expected = {"/proc/evil": "ENOENT", "/proc/sys/kernel/hostname": "EACCES"}.get(path, "EROFS")
    assert out(sandbox, errno_of(f"open({path!r}, 'w').write('x')")) == f"{expected}\n"


def test_hard_link_to_a_host_file_fails(sandbox: Sandbox) -> None:
    assert out(sandbox, errno_of("os.link('/usr/bin/python3', 'py')")) == "EXDEV\n"


def test_symlinks_into_the_host_are_not_returned(sandbox: Sandbox) -> None:
    result = run(sandbox, "ln -s /etc/passwd passwd; ln -s /work work; ln -s / root; echo ok > real.txt", "bash")
    assert result["exit_code"] == 0
    assert [(f["path"], f["change"]) for f in result["files_changed"]] == [("real.txt", "created")]


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/cron.d/evil", "a/../../escape.txt"])
def test_request_file_paths_outside_the_workdir_are_refused(sandbox: Sandbox, path: str) -> None:
    response = sandbox.post({"language": "python", "code": "print(1)", "files": {path: "eA=="}})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_FAILED"


# --- the network ------------------------------------------------------------------------------

def test_only_loopback_is_visible(sandbox: Sandbox) -> None:
    assert out(sandbox, "import socket; print(socket.if_nameindex())") == "[(1, 'lo')]\n"


def test_tcp_to_host_services_on_loopback_is_refused(sandbox: Sandbox, stack: StackUrls) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    ports = [listener.getsockname()[1], urlsplit(stack.database_url).port, urlsplit(stack.redis_url).port]
    code = (f"import socket\nfor port in {ports!r}:\n    try:\n"
            "        socket.create_connection(('127.0.0.1', port), 2)\n"
            "        print('connected')\n    except OSError as e:\n        print(type(e).__name__)\n")
    try:
        assert out(sandbox, code) == "ConnectionRefusedError\n" * 3
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing reached the host's listener
    finally:
        listener.close()


def test_udp_to_a_host_listener_never_arrives(sandbox: Sandbox) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    port = receiver.getsockname()[1]
    try:
        out(sandbox, "import socket\n"
                     f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))")
        with pytest.raises(BlockingIOError):
            receiver.recv(16)
    finally:
        receiver.close()


# --- resources ---------------------------------------------------------------------------------

def test_fork_bomb_is_contained_and_killed_at_the_wall_limit(sandbox: Sandbox) -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run(sandbox, code, wall_s=2, pids=16)
    assert (result["timed_out"], result["killed_by"], result["exit_code"]) == (True, "SIGKILL", None)


def test_shell_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    result = run(sandbox, ":(){ :|:& };:; sleep 30", "bash", wall_s=2, pids=16)
    assert (result["timed_out"], result["killed_by"]) == (True, "SIGKILL")


def test_memory_bomb_gets_memory_error(sandbox: Sandbox) -> None:
    code = "try:\n    x = bytearray(4 * 1024**3)\nexcept MemoryError:\n    print('MemoryError')\n"
    assert out(sandbox, code, memory_mb=256) == "MemoryError\n"


def test_growing_memory_gets_memory_error(sandbox: Sandbox) -> None:
    code = ("blocks = []\ntry:\n    while True:\n        blocks.append(b'x' * 10**7)\n"
            "except MemoryError:\n    print('MemoryError', len(blocks) < 30)\n")
    assert out(sandbox, code, memory_mb=256) == "MemoryError True\n"


def test_cpu_loop_is_killed_at_the_cpu_limit(sandbox: Sandbox) -> None:
    result = run(sandbox, "while True: pass", cpu_s=1, wall_s=20)
    assert (result["timed_out"], result["killed_by"], result["exit_code"]) == (False, "SIGXCPU", None)


def test_raising_a_limit_is_refused(sandbox: Sandbox) -> None:
    code = ("import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY,) * 2)\n"
            "except ValueError as e:\n    print(e)\n")
    assert out(sandbox, code) == "not allowed to raise maximum limit\n"


@pytest.mark.parametrize("directory", ["/workspace", "/tmp", "/dev/shm"])
def test_filling_a_writable_directory_stops_at_its_size(sandbox: Sandbox, directory: str) -> None:
    code = (f"import errno, os\nos.chdir({directory!r})\nchunk = b'0' * 2**20\ni = 0\ntry:\n    while True:\n"
            "        open(f'f{i}', 'wb').write(chunk)\n        i += 1\nexcept OSError as e:\n"
            "    print(errno.errorcode[e.errno], i <= 8)\nfor name in os.listdir('.'):\n    os.remove(name)\n")
    assert out(sandbox, code, disk_mb=8) == "ENOSPC True\n"


@pytest.mark.parametrize("path", ["/dev/shm/fill", "/workspace/fill"])
def test_one_file_larger_than_the_disk_limit_gets_sigxfsz(sandbox: Sandbox, path: str) -> None:
    result = run(sandbox, f"head -c 20M /dev/zero > {path}", "bash", disk_mb=8)
    assert (result["exit_code"], result["killed_by"]) == (None, "SIGXFSZ")


def test_100_mb_of_stdout_is_truncated_with_a_marker(sandbox: Sandbox) -> None:
    code = "import sys\nfor _ in range(100):\n    sys.stdout.buffer.write(b'x' * 2**20)\n"
    result = run(sandbox, code, output_bytes=1000)
    assert (result["exit_code"], result["truncated"]) == (0, True)
    assert result["stdout"].startswith("x" * 1000 + "\n" + MARKER)


def test_stderr_flood_is_truncated_too(sandbox: Sandbox) -> None:
    result = run(sandbox, "head -c 50M /dev/zero | tr '\\0' 'e' >&2", "bash", output_bytes=500)
    assert result["truncated"] is True and result["stderr"].startswith("e" * 500 + "\n" + MARKER)


def test_sleep_past_the_wall_limit_is_killed(sandbox: Sandbox) -> None:
    result = run(sandbox, "import time; print('start', flush=True); time.sleep(60)", wall_s=1)
    assert (result["timed_out"], result["killed_by"], result["stdout"]) == (True, "SIGKILL", "start\n")


def test_background_process_does_not_outlive_the_execution(sandbox: Sandbox) -> None:
    assert out(sandbox, "(sleep 300 &) ; nohup sleep 300 >/dev/null 2>&1 & echo started", "bash") == "started\n"


def test_daemonised_orphan_is_killed_with_the_sandbox(sandbox: Sandbox) -> None:
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n"
            "    os._exit(0)\nprint('parent done')\n")
    assert out(sandbox, code) == "parent done\n"


def test_zombies_and_sleepers_are_gone_after_a_wall_kill(sandbox: Sandbox) -> None:
    code = ("import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        os._exit(0)\n"
            "if os.fork() == 0:\n    time.sleep(300)\ntime.sleep(300)\n")
    assert run(sandbox, code, wall_s=1)["timed_out"] is True


# --- privileges ---------------------------------------------------------------------------------

def test_runs_unprivileged_without_capabilities(sandbox: Sandbox) -> None:
    code = ("import os\nstatus = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
            "print(os.getuid(), os.getgid(), os.getgroups(), status['CapEff'], status['CapBnd'], "
            "status['NoNewPrivs'], status['Seccomp'])\n")
    assert out(sandbox, code) == "65534 65534 [] 0000000000000000 0000000000000000 1 2\n"


@pytest.mark.parametrize("command", ["unshare -U true", "unshare -r true", "unshare -n true", "unshare -m true"])
def test_new_namespaces_are_refused(sandbox: Sandbox, command: str) -> None:
    result = run(sandbox, command, "bash")
    assert result["exit_code"] == 1 and result["stderr"] == "unshare: unshare failed: Operation not permitted\n"


@pytest.mark.parametrize("call, expected", [
    ("libc.ptrace(16, 1, 0, 0)", "-1 EPERM"),  # PTRACE_ATTACH to the launcher
    ("libc.ptrace(0, 0, 0, 0)", "-1 EPERM"),  # PTRACE_TRACEME
    ("libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)", "-1 EPERM"),
    ("libc.syscall(250, 0, 0, 0, 0, 0)", "-1 EPERM"),  # keyctl
    ("libc.syscall(321, 0, 0, 0)", "-1 EPERM"),  # bpf
    ("libc.setns(0, 0)", "-1 EPERM"),
])
def test_dangerous_system_calls_fail_with_eperm(sandbox: Sandbox, call: str, expected: str) -> None:
    code = ("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print({call}, errno.errorcode[ctypes.get_errno()])\n")
    assert out(sandbox, code) == f"{expected}\n"


def test_setuid_binaries_grant_nothing(sandbox: Sandbox) -> None:
    result = run(sandbox, "mount -t tmpfs none /tmp", "bash")
    assert result["exit_code"] == 32 and result["stderr"].startswith("mount: /tmp: must be superuser to use mount.")


def test_hostname_cannot_be_changed(sandbox: Sandbox) -> None:
    code = "import socket\nprint(socket.gethostname())\n" + errno_of("socket.sethostname('x')").replace(
        "import errno, os", "import errno, os, socket")
    assert out(sandbox, code) == "sandbox\nEPERM\n"


def test_signals_reach_nothing_outside(sandbox: Sandbox) -> None:
    pid = sandbox.process.pid
    code = (f"import os, signal\nos.kill(1, signal.SIGKILL)\nprint('pid 1 ignored SIGKILL')\n"
            f"for target in ({pid}, -1, {pid} * -1):\n    try:\n        os.kill(target, signal.SIGKILL)\n"
            "        print('sent')\n    except ProcessLookupError:\n        print('ESRCH')\n")
    # -1 reaches the sandbox's own processes only (here the launcher's guard watcher); the service
    # lives on (`nothing_left_behind` checks it after every probe).
    assert out(sandbox, code) == "pid 1 ignored SIGKILL\nESRCH\nsent\nESRCH\n"


def test_devices_are_the_minimal_set(sandbox: Sandbox) -> None:
    expected = "['core', 'fd', 'full', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', " \
               "'urandom', 'zero']\n"
    assert out(sandbox, "import os; print(sorted(os.listdir('/dev')))") == expected


def test_service_still_runs_code_after_the_probes(sandbox: Sandbox) -> None:
    assert out(sandbox, "print(sum(range(10)))") == "45\n"
