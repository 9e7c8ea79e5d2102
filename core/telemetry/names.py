"""Span names and attribute keys, in one place so dashboards and tests agree with the code.

GenAI keys follow the OpenTelemetry semantic conventions for generative AI; ours are
prefixed `agentos.`."""

from __future__ import annotations

# Ours: on every span of a run (`tracing.ScopeProcessor` copies them from `scope`).
ORG_ID = "agentos.org_id"
RUN_ID = "agentos.run_id"
SESSION_ID = "agentos.session_id"
AGENT_ID = "agentos.agent_id"
ATTEMPT = "agentos.run.attempt"
NODE = "agentos.node"

# GenAI semantic conventions.
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_AGENT_ID = "gen_ai.agent.id"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"  # only with capture_content
GEN_AI_TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"  # only with capture_content
ERROR_TYPE = "error.type"

# Messaging (the run's trip through the queue).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_OPERATION = "messaging.operation.type"

# Span names.
RUN_EXECUTE = "process agentos.runs"  # the worker's delivery of a run (consumer)
RUN_SEND = "send agentos.runs"  # enqueueing a run (producer)
RUN_RESUMED = "agentos.run.resumed"  # a later delivery's work, back in the run's own trace


def step(node: str) -> str:
    return f"agentos.step {node}"


def chat(model: str) -> str:
    return f"chat {model}"


def tool(name: str) -> str:
    return f"execute_tool {name}"
