"""`AGENTOS_DISPATCH=modal`, offline: the switch sends every run (from the API, and the next run
of a session from the executing call) to a Modal function instead of Celery's queue, and that
function's body (`runtime.per_run`) executes it with the same `execute_run` against the real
stack. Modal itself is not installed in the test extra: its function lookup is the one seam,
replaced by a stand-in that runs the function's body in a thread, as a Modal container would."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from api.app import create_app
from core import jobs, modal_dispatch
from core.settings import ModalDispatchSettings
from runtime.per_run import deliver_run
from runtime.services import RuntimeHolder
from tests.helpers import RsaKeys, make_settings, new_org, start_run, wait
from tests.sse import read_events

ROOT = Path(__file__).resolve().parent.parent


class LocalFunction:
    """A deployed function as the sender sees it: `spawn` returns at once; the body runs in a
    thread (a Modal container) and every call is recorded."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.calls: list[dict[str, str]] = []
        self.threads: list[threading.Thread] = []
        self.results: list[str] = []

    def spawn(self, **kwargs: str) -> None:
        self.calls.append(kwargs)
        thread = threading.Thread(target=lambda: self.results.append(self.body(**kwargs)), daemon=True)
        self.threads.append(thread)
        thread.start()


def test_modal_dispatch_without_the_modal_package_is_a_clear_start_up_error(stack: StackUrls, rsa_keys: RsaKeys):
    try:
        import modal  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the modal package is installed here")
    settings = make_settings(stack, rsa_keys, dispatch="modal")
    with pytest.raises(modal_dispatch.ModalUnavailable, match=r"pip install 'agentos\[modal\]'"):
        jobs.JobQueue(settings)


@pytest.fixture
def modal_functions(stack: StackUrls, rsa_keys: RsaKeys, monkeypatch: pytest.MonkeyPatch,
                    tmp_path: Path) -> Iterator[dict[str, LocalFunction]]:
    """The deployed functions, run locally: `execute_run` is infra/modal/app.py's body."""
    settings = make_settings(stack, rsa_keys, dispatch="modal", worker={"workspace_root": str(tmp_path / "ws")})
    holder = RuntimeHolder(settings)
    functions = {
        "execute_run": LocalFunction(lambda run_id, org_id: deliver_run(holder, run_id, org_id, max_wait_s=60)),
        "ingest_document": LocalFunction(lambda document_id, org_id: "not used here"),
    }

    def lookup(modal_settings: ModalDispatchSettings, name: str) -> LocalFunction:
        assert modal_settings.app_name == "agentos"
        return functions[name]

    monkeypatch.setattr(modal_dispatch, "lookup_function", lookup)
    try:
        yield functions
    finally:
        for function in functions.values():
            for thread in function.threads:
                thread.join(timeout=30)
        holder.close()


@pytest.mark.timeout(120)
def test_runs_dispatched_to_modal_execute_with_the_same_execute_run(
    stack: StackUrls, rsa_keys: RsaKeys, modal_functions: dict[str, LocalFunction]
):
    settings = make_settings(stack, rsa_keys, dispatch="modal")
    with TestClient(create_app(settings)) as client:
        org = new_org(client)
        agent = org.create_agent(skills=["file_manager"], confirm="none")
        session = org.create_session(str(agent["id"]))
        first = start_run(org, str(session["id"]),
                          'call: file_manager {"action": "write", "path": "a.txt", "content": "1"}')
        second = start_run(org, str(session["id"]), "wait: 0.1", multitask="enqueue")
        assert wait(org, first["id"], timeout=60)["status"] == "succeeded"
        assert wait(org, second["id"], timeout=60)["status"] == "succeeded"
        events = read_events(client, f"/v1/runs/{first['id']}/events", org.headers)
        later = read_events(client, f"/v1/runs/{second['id']}/events", org.headers)
    runs = modal_functions["execute_run"]
    # The API spawned the first run; the second was spawned when it reached the head of the
    # line (by the API, and again by the first run's ending): a repeat finds it finished.
    assert {c["run_id"] for c in runs.calls} == {first["id"], second["id"]}
    assert all(c["org_id"] == org.id for c in runs.calls)
    for thread in runs.threads:
        thread.join(timeout=30)
    assert "succeeded" in runs.results
    types = [e["type"] for e in events]
    assert types[0] == "run.queued" and types[-1] == "run.succeeded" and "tool.result" in types
    seqs = sorted(e["seq"] for e in events + later)  # the session's numbering, shared by both runs
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert [e["type"] for e in later][-1] == "run.succeeded"


def test_the_modal_app_runs_the_per_run_entry_points():
    """infra/modal/app.py is read by `modal deploy` only; check what it wires without Modal."""
    tree = ast.parse((ROOT / "infra/modal/app.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert set(modal_dispatch.FUNCTIONS.values()) <= set(functions), "every job has its function"
    assert "watchdog" in functions
    for name in modal_dispatch.FUNCTIONS.values():
        decorators = [ast.unparse(d) for d in functions[name].decorator_list]
        assert any(d.startswith("app.function(") and "retries=" in d for d in decorators), name
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "runtime.per_run" for alias in node.names}
    assert imported == {"deliver_run", "ingest_document"}
