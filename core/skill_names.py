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

# Skills that exist only on a remote runner (docs/runners.md): an agent may list them only when
# it routes them to a runner (`runner` in its configuration).
RUNNER_SKILLS: tuple[str, ...] = ("git", "shell")
# Built-ins a runner can also execute on its own machine, when an agent routes them there.
RUNNER_CAPABLE: tuple[str, ...] = ("code_executor", "file_manager", *RUNNER_SKILLS)
