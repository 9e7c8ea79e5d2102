"""`default_registry()`: a registry of the built-in skills, the one every worker starts from.

It lives apart from `skills.registry` because it imports the built-ins, which import
`skills.skill`; so the registry, the skill definition and the built-ins form no cycle.

`python -m skills` rewrites `core/builtin_skills.json` (what the API lists) from them."""

from __future__ import annotations

import json
from typing import Literal

from core.builtin_catalogue import CATALOGUE_PATH, BuiltinSkill, builtin_catalogue
from core.skill_names import BUILTIN_SKILLS
from skills.builtin import BUILTINS
from skills.registry import SkillRegistry


def default_registry() -> SkillRegistry:
    """A new registry holding every built-in skill, checked against `core.skill_names` and the
    catalogue the API shows (`core/builtin_skills.json`)."""
    registry = SkillRegistry()
    for builtin in BUILTINS:
        registry.register(builtin)
    if registry.names() != sorted(BUILTIN_SKILLS):
        raise AssertionError(
            f"built-in skills {registry.names()} differ from core.skill_names.BUILTIN_SKILLS {sorted(BUILTIN_SKILLS)}"
        )
    if describe(registry) != builtin_catalogue():
        raise AssertionError(f"{CATALOGUE_PATH} is out of date; run `python -m skills` to rewrite it")
    return registry


def describe(registry: SkillRegistry) -> dict[str, BuiltinSkill]:
    """The catalogue entries of the registry's skills."""
    out: dict[str, BuiltinSkill] = {}
    for name in registry.names():
        skill = registry.get(name)
        sensitive: bool | Literal["by_arguments"] = (
            "by_arguments" if callable(skill.sensitive) else bool(skill.sensitive))
        out[name] = {"description": skill.description, "parameters": skill.parameters, "sensitive": sensitive}
    return out


def write_catalogue() -> None:
    registry = SkillRegistry()
    for builtin in BUILTINS:
        registry.register(builtin)
    text = json.dumps(describe(registry), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    CATALOGUE_PATH.write_text(text, encoding="utf-8")
