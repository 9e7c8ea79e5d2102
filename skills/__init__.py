"""Skills: the tools an agent's model may call. `default_registry()` holds the built-ins."""

from skills.registry import Skill, SkillContext, SkillError, SkillRegistry, default_registry, skill

__all__ = ["Skill", "SkillContext", "SkillError", "SkillRegistry", "default_registry", "skill"]
