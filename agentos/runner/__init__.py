"""`agentos runner`: executes an org's routed tool calls on this machine (docs/runners.md)."""
