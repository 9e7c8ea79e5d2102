"""First-run set-up of the local stack: a default org and an owner key, saved for reuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.db import open_pool
from core.settings import Settings
from core.store import api_keys, orgs

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
        org, created = await orgs.create_org(pool, "default", actor="agentos dev")
        org_id, key = org["id"], created["key"]
        _write_private(state_path, json.dumps({"org_id": org_id, "api_key": key}, indent=2))
        _write_private(data_dir / OWNER_KEY_FILE, key + "\n")
        return org_id, key, True
    finally:
        await pool.close()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
