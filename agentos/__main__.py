"""`python -m agentos` is the `agentos` command."""

from agentos.cli import main

main()
