"""Composition root: the `agentos` CLI and the embedded local stack."""
