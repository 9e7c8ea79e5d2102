"""First-run set-up of the local stack: a default org and an owner key, saved for reuse."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from core.db import open_pool
from core.settings import Settings
from core.store import agents, api_keys, orgs
from core.tenancy import tenant_tx

DEV_STATE_FILE = "dev.json"
OWNER_KEY_FILE = "owner_key"


async def ensure_default_org(settings: Settings, data_dir: Path) -> tuple[str, str, bool]:
    """Return (org id, owner key, created?) for the dev stack, reusing what `data_dir` saved."""
    pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 2}))
    try:
        state_path = data_dir / DEV_STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        org_id, key = state.get("org_id"), state.get("api_key")
        if org_id and key and await orgs.get_org(pool, org_id) and await api_keys.verify(pool, key):
            return org_id, key, False
        try:
            org, created = await orgs.create_org(pool, "default", actor="agentos dev")
        except orgs.OrgNameTaken:  # the saved key is gone or revoked, the org itself is still there
            org, created = await orgs.create_org(pool, f"default {secrets.token_hex(3)}", actor="agentos dev")
        org_id, key = org["id"], created["key"]
        _write_private(state_path, json.dumps({"org_id": org_id, "api_key": key}, indent=2))
        _write_private(data_dir / OWNER_KEY_FILE, key + "\n")
        return org_id, key, True
    finally:
        await pool.close()


DEFAULT_AGENT = "assistant"
HELPER_AGENT = "helper"


async def ensure_default_agents(settings: Settings, org_id: str) -> str | None:
    """When the org has no agents, create `assistant` (offline model, `file_manager`, `remember`,
    `recall` and `web_search` (the worker's provider: `offline:` unless configured), knowledge-base
    recall, with the sub-agent `helper`, which has `file_manager` too) so that a first
    `agentos run assistant "hi"` and the README's examples work. Returns what it made."""
    pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
    try:
        async with tenant_tx(pool, org_id) as conn:
            if await agents.list_agents(conn, None, 1):
                return None
            helper = await agents.create(conn, HELPER_AGENT, _offline_config(
                "You are a careful helper. Do the task you are given, using file_manager for the session's "
                "files, and answer briefly.", skills=["file_manager"]), "agentos dev")
            assistant = await agents.create(conn, DEFAULT_AGENT, _offline_config(
                "You are a helpful assistant. Use file_manager for files, remember what the user asks you to "
                "remember, web_search to look things up, and hand research tasks to the helper sub-agent.",
                skills=["file_manager", "remember", "recall", "web_search"], subagents=[helper["id"]],
                memory={"knowledge": True}), "agentos dev")
            return str(assistant["id"])
    finally:
        await pool.close()


def _offline_config(instructions: str, **fields: object) -> dict[str, object]:
    from core.agent_config import AgentConfig

    config = AgentConfig.model_validate({"instructions": instructions, "model": "offline:default", **fields})
    return config.model_dump(mode="json")


def record_api_url(data_dir: Path, api_url: str) -> None:
    """Remember where the dev API listens, for `agentos run`."""
    state_path = data_dir / DEV_STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    state["api_url"] = api_url
    _write_private(state_path, json.dumps(state, indent=2))


def forget_api_url(data_dir: Path, api_url: str) -> None:
    """`agentos dev` stopped: `agentos run` must not send a stranger's stack (or nothing) our key."""
    state_path = data_dir / DEV_STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return
    if state.get("api_url") == api_url:
        del state["api_url"]
        _write_private(state_path, json.dumps(state, indent=2))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
