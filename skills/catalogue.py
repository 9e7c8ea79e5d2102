"""`RunSkills`: the skills one run may use. The worker's built-ins, plus the org's own skills at
the versions the run resolved when it first started (`core.store.skills.resolve_run`) or that an
agent pins (`name@3`). Versions are immutable, so a skill changed mid-run changes nothing here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from core.skill_defs import parse_ref
from core.store import skills as skill_store
from core.tenancy import AsyncPool, tenant_tx
from skills.registry import SkillRegistry
from skills.skill import Skill

log = logging.getLogger("agentos.skills")

# Builds the Skill of one stored version of an org's skill: (name, version, definition) -> Skill.
SkillBuilder = Callable[[str, int, dict[str, Any]], Skill]


class RunSkills:
    """Skills by an agent's `skills` entries, for one run (shared by its sub-agents)."""

    def __init__(self, builtins: SkillRegistry, pool: AsyncPool, org_id: str, resolved: Mapping[str, int],
                 builders: Mapping[str, SkillBuilder]) -> None:
        self.builtins = builtins
        self.resolved = dict(resolved)  # {name: version} of the org's skills when the run started
        self._pool = pool
        self._org_id = org_id
        self._builders = builders
        self._custom: dict[tuple[str, int], Skill | None] = {}

    async def for_agent(self, entries: list[str]) -> dict[str, Skill]:
        """Tool name -> Skill for an agent's entries, in order. An entry naming nothing this run
        can use (a skill deleted before the run, a kind this worker lacks) is left out and logged."""
        found: dict[str, Skill] = {}
        for entry in entries:
            name, pinned = parse_ref(entry)
            if name in self.builtins:
                found[name] = self.builtins.get(name)
                continue
            version = pinned or self.resolved.get(name)
            skill = await self._load(name, version) if version is not None else None
            if skill is None:
                log.warning("run skills of org %s: %r names no skill this run can use", self._org_id, entry)
                continue
            found[name] = skill
        return found

    async def _load(self, name: str, version: int) -> Skill | None:
        key = (name, version)
        if key not in self._custom:
            async with tenant_tx(self._pool, self._org_id) as conn:
                row = await skill_store.get_version(conn, name, version)
            self._custom[key] = self._build(name, version, row["definition"]) if row is not None else None
        return self._custom[key]

    def _build(self, name: str, version: int, definition: dict[str, Any]) -> Skill | None:
        builder = self._builders.get(str(definition.get("kind")))
        if builder is None:
            return None
        try:
            return builder(name, version, definition)
        except Exception:  # a stored definition this code cannot use: leave the skill out
            log.exception("skill %s@%s of org %s could not be built", name, version, self._org_id)
            return None
