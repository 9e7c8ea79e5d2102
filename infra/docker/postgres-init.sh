#!/bin/sh
# First start of the compose Postgres: the database, its owner login (not a superuser; it may
# create the application role) and pgvector. `agentos migrate` does the rest (docs/operations.md,
# Bringing your own Postgres).
set -eu
psql -v ON_ERROR_STOP=1 --username postgres -v pw="$POSTGRES_AGENTOS_PASSWORD" <<'SQL'
CREATE ROLE agentos_owner LOGIN CREATEROLE PASSWORD :'pw';
CREATE DATABASE agentos OWNER agentos_owner;
\connect agentos
CREATE EXTENSION IF NOT EXISTS vector;
SQL
