"""The skills AgentOS ships. Keep BUILTINS in step with `core.skill_names.BUILTIN_SKILLS`."""

from skills.builtin.code_executor import code_executor
from skills.builtin.data_query import data_query
from skills.builtin.file_manager import file_manager
from skills.builtin.memory import recall, remember
from skills.builtin.web_fetch import web_fetch
from skills.builtin.web_search import web_search
from skills.skill import Skill

BUILTINS: tuple[Skill, ...] = (file_manager, remember, recall, code_executor, data_query, web_fetch, web_search)

__all__ = ["BUILTINS"]
