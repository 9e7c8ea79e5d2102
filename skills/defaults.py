"""`default_registry()`: a registry of the built-in skills, the one every worker starts from.

It lives apart from `skills.registry` because it imports the built-ins, which import
`skills.skill`; so the registry, the skill definition and the built-ins form no cycle."""

from __future__ import annotations

from core.skill_names import BUILTIN_SKILLS
from skills.builtin import BUILTINS
from skills.registry import SkillRegistry


def default_registry() -> SkillRegistry:
    """A new registry holding every built-in skill, checked against `core.skill_names`."""
    registry = SkillRegistry()
    for builtin in BUILTINS:
        registry.register(builtin)
    if registry.names() != sorted(BUILTIN_SKILLS):
        raise AssertionError(
            f"built-in skills {registry.names()} differ from core.skill_names.BUILTIN_SKILLS {sorted(BUILTIN_SKILLS)}"
        )
    return registry
