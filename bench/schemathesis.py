"""Schemathesis against a running stack: every operation of `/openapi.json`, all checks.

    .venv/bin/python -m bench.schemathesis [--max-examples N] [--seed S] [--keep] [-- extra schemathesis args]

Starts its own stack in a temp dir (embedded Postgres + Redis, non-durable), migrates, runs one
`agentos api` child process on a free 127.0.0.1 port (no worker: runs stay queued), creates an org
through the platform admin token and runs two passes:

    schemathesis run <api>/openapi.json --checks all -H 'Authorization: Bearer <owner key>'
        --exclude-path-regex '^/v1/orgs|/events$' --max-examples N --seed S --workers 1
    schemathesis run <api>/openapi.json --checks all -H 'Authorization: Bearer <platform admin token>'
        --include-path-regex '^/v1/orgs' --max-examples N --seed S --workers 1

The two SSE routes are left out: a session's stream never ends, so a fuzzer would wait on it
forever (tests/test_openapi.py and the suite's conformance check judge their events). Long polls
are capped at 2 s (`AGENTOS_EVENTS__MAX_WAIT_S`) and rate limits lifted so the run measures the
contract, not the clock; every outbound request is denied (`AGENTOS_OUTBOUND__DENY='["*"]'`) so
fuzzed URLs never leave the machine. Prints schemathesis's report and the API's ERROR lines (a 500 logs one);
exits with schemathesis's status. The figures of record are in docs/api.md ("Conformance").
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agentos.stack.local import LocalStack  # noqa: E402
from agentos.stack.process import ServerProcess, free_port  # noqa: E402
from bench.runs import _child_env, api_ready, create_org_and_agent  # noqa: E402
from core.migrations import migrate  # noqa: E402

APP_ROLE = "agentos_app"
CONFIG = Path(__file__).with_suffix(".toml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (API log, report)")
    parser.add_argument("extra", nargs="*", help="more schemathesis arguments (after --)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="agentos-schemathesis-"))
    stack = LocalStack(work / "stack", database="agentos_st", durable=False)
    api: ServerProcess | None = None
    try:
        urls = stack.start()
        migrate(urls.database_url, APP_ROLE)
        admin = "st-admin-" + secrets.token_hex(8)
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        # Deny every outbound request: fuzzed webhook, provider and skill URLs must never leave
        # the machine (the guard refuses before resolving a name).
        env = _child_env(urls, admin, "WARNING") | {"AGENTOS_EVENTS__MAX_WAIT_S": "2",
                                                    "AGENTOS_OUTBOUND__DENY": '["*"]'}
        api = ServerProcess("api", [sys.executable, "-m", "agentos", "api", "--host", "127.0.0.1", "--port",
                                    str(port)], work / "api.log", stop_signal=signal.SIGTERM, env=env)
        api.start()
        api.wait_until(lambda: api_ready(api_url), timeout_s=60)
        _, key, _ = create_org_and_agent(api_url, admin, "schemathesis", {"name": "fuzz"})
        status = 0
        for credential, name, select in ((key, "owner key", ["--exclude-path-regex", "^/v1/orgs|/events$"]),
                                         (admin, "platform admin token", ["--include-path-regex", "^/v1/orgs"])):
            argv = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(CONFIG), "run",
                    f"{api_url}/openapi.json",
                    "--checks", "all", "-H", f"Authorization: Bearer {credential}", *select,
                    "--max-examples", str(args.max_examples), "--seed", str(args.seed), "--workers", "1",
                    "--request-timeout", "30", *args.extra]
            print("\n$", " ".join(a if "Bearer" not in a else f"'Authorization: Bearer <{name}>'" for a in argv),
                  flush=True)
            status = max(status, subprocess.call(argv, cwd=work))
        errors = [line for line in (work / "api.log").read_text(errors="replace").splitlines() if "ERROR" in line]
        print(f"\nAPI log: {len(errors)} ERROR lines")
        for line in errors[:40]:
            print("  ", line[:300])
        return status
    finally:
        if api is not None:
            api.stop()
        stack.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
