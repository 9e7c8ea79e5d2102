"""Sandboxed code execution: the `execute` interface and its backends (bwrap, gVisor), the
sandbox service that serves `POST /execute` (`agentos sandbox`), and the HTTP client with
per-org quotas that the `code_executor` skill uses. See docs/sandbox.md."""
