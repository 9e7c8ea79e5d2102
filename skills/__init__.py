"""Skills: the tools an agent's model may call. `default_registry()` holds the built-ins."""

from skills.defaults import default_registry
from skills.registry import SkillRegistry
from skills.skill import Skill, SkillContext, SkillError, skill

__all__ = ["Skill", "SkillContext", "SkillError", "SkillRegistry", "default_registry", "skill"]
