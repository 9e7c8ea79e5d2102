"""The skills AgentOS ships. Keep BUILTINS in step with `core.skill_names.BUILTIN_SKILLS`."""

from skills.builtin.file_manager import file_manager
from skills.builtin.memory import recall, remember
from skills.skill import Skill

BUILTINS: tuple[Skill, ...] = (file_manager, remember, recall)

__all__ = ["BUILTINS"]
