"""The registry that an agent's `skills` list is resolved against: skills by name."""

from __future__ import annotations

from collections.abc import Iterable

from core.skill_names import DELEGATE_TOOL
from skills.skill import Skill


class SkillRegistry:
    """Skills by name. Agents name the skills they may use; `select` resolves that list."""

    def __init__(self) -> None:
        self._skills: dict[str, Skill] = {}

    def register(self, skill: Skill) -> None:
        if skill.name == DELEGATE_TOOL:
            raise ValueError(f"the skill name {DELEGATE_TOOL!r} is reserved for delegating to sub-agents")
        if skill.name in self._skills:
            raise ValueError(f"a skill named {skill.name!r} is already registered")
        self._skills[skill.name] = skill

    def get(self, name: str) -> Skill:
        try:
            return self._skills[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"unknown skill {name!r}; registered skills: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._skills)

    def __contains__(self, name: object) -> bool:
        return name in self._skills

    def select(self, names: Iterable[str]) -> list[Skill]:
        """The named skills in the given order; KeyError for a name that is not registered."""
        return [self.get(name) for name in names]
