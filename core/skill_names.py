"""Names of the skills AgentOS ships, so the API can validate an agent's `skills` without
importing the skill code (the API never loads `skills/`). `skills.default_registry()`
checks that its built-ins match this list exactly."""

from __future__ import annotations

BUILTIN_SKILLS: tuple[str, ...] = (
    "code_executor", "data_query", "file_manager", "recall", "remember", "web_fetch", "web_search",
)

# The tool through which a model hands work to one of its agent's sub-agents. No skill may
# take this name.
DELEGATE_TOOL = "delegate"
