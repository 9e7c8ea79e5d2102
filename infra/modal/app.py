"""AgentOS runs on Modal: one function call per run, autoscaled by Modal.

    pip install 'agentos[modal]' && modal token new
    modal secret create agentos AGENTOS_DATABASE_URL=... AGENTOS_REDIS_URL=... \\
        AGENTOS_SECRETS__KEYS=... AGENTOS_MODELS__OPENAI_API_KEY=... \\
        [AGENTOS_SANDBOX__URL=... AGENTOS_SANDBOX__TOKEN=...]
    modal deploy infra/modal/app.py
    # then run the API (anywhere) with AGENTOS_DISPATCH=modal and a Modal token

The API (and the watchdog, and a run that ends) spawns `execute_run(run_id, org_id)` for each run
to start (`core.modal_dispatch`); the call runs `runtime.executor.execute_run`, the same code a
Celery worker runs, so claims, leases, checkpoints, events and approvals behave the same. Why a
call per run rather than Celery workers in Modal containers: docs/deploy.md, "Modal".

This file is read by `modal deploy` only; nothing in AgentOS imports it.
"""

from __future__ import annotations

from pathlib import Path

import modal

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "agentos"  # AGENTOS_MODAL__APP_NAME on the API must match

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    .add_local_dir(str(ROOT), remote_path="/src", ignore=[".git", ".venv", ".agentos", "tests", "bench", "docs"],
                   copy=True)
    .run_commands("pip install --no-deps /src")
    .env({"AGENTOS_ENV": "production", "AGENTOS_DISPATCH": "modal", "AGENTOS_MODAL__APP_NAME": APP_NAME,
          "AGENTOS_WORKER__WORKSPACE_ROOT": "/workspaces"})
)
secrets = [modal.Secret.from_name("agentos")]
# Session files must be the same for every call of a session: one shared volume.
workspaces = modal.Volume.from_name("agentos-workspaces", create_if_missing=True)

app = modal.App(APP_NAME, image=image, secrets=secrets)

_holder = None


def _runtime():  # type: ignore[no-untyped-def]
    """The container's WorkerRuntime holder, made on the first call (settings from the secret)."""
    global _holder
    if _holder is None:
        from core.settings import load_settings
        from runtime.services import RuntimeHolder

        _holder = RuntimeHolder(load_settings())
    return _holder


@app.function(
    volumes={"/workspaces": workspaces},
    timeout=3600,  # the longest run's limits.timeout_s, plus the time to resume it
    retries=modal.Retries(max_retries=5, backoff_coefficient=2.0, initial_delay=1.0, max_delay=30.0),
    max_containers=50,  # the autoscaling ceiling: one run per container, at most this many at once
    scaledown_window=120,  # keep a warm container a while: opening pools and the graph takes seconds
)
def execute_run(run_id: str, org_id: str) -> str:
    from runtime.per_run import deliver_run

    workspaces.reload()
    try:
        return deliver_run(_runtime(), run_id, org_id)
    finally:
        workspaces.commit()


@app.function(timeout=1800, retries=modal.Retries(max_retries=5, initial_delay=1.0, max_delay=30.0))
def ingest_document(document_id: str, org_id: str) -> str:
    from runtime.per_run import ingest_document as ingest

    return ingest(_runtime(), document_id, org_id)


@app.function(schedule=modal.Period(minutes=1), timeout=90)
def watchdog() -> str:
    """The watchdog's passes for one minute (it re-sends stalled runs as Modal calls)."""
    import asyncio
    import time

    from core.settings import load_settings
    from runtime.watchdog import sweep_once

    settings = load_settings()
    done, until = [], time.monotonic() + 55
    while time.monotonic() < until:
        done.append(asyncio.run(sweep_once(settings)).summary())
        time.sleep(settings.worker.watchdog_interval_s)
    return "; ".join(done)
