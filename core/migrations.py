"""Ordered, append-only schema migrations. A migration's position in `MIGRATIONS` is its version.

Never edit or reorder a migration that has shipped: append a new one. `migrate()` applies the
missing ones in order, each in its own transaction, under an advisory lock so that several
processes starting at once do not race. It runs as the database login (the owner), not as the
application role; afterwards it (re)grants the application role its table privileges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

# The tenant tables of the initial schema (the shipped first migration secures exactly these).
_INITIAL_TENANT_TABLES: tuple[str, ...] = (
    "orgs",
    "users",
    "api_keys",
    "agents",
    "agent_versions",
    "sessions",
    "messages",
    "runs",
    "run_events",
    "tool_calls",
    "audit_logs",
)

# Every table that holds one organisation's data. RLS is ENABLEd and FORCEd on each, and the
# API refuses to start if any of them lacks it (see core.db.check_tenant_isolation).
TENANT_TABLES: tuple[str, ...] = (
    *(t for t in _INITIAL_TENANT_TABLES if t != "users"),
    "memories", "knowledge_documents", "org_secrets", "skills", "skill_versions",
    "data_sources", "mcp_servers", "usage_records", "usage_daily", "usage_months", "usage_run_days",
    "webhooks", "webhook_deliveries", "webhook_attempts",
    "files", "session_files", "org_exports", "model_providers", "runners", "runner_calls", "runner_runs",
    # `users` of the initial schema became `memberships`; `users` is now global (see _people).
    "memberships", "invitations", "memory_staged_embeddings",
)

_MIGRATION_LOCK_KEY = 0x6167656E746F73  # "agentos"

CREATE_VERSION_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS agentos_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

_INITIAL_SCHEMA_SQL = """
CREATE EXTENSION IF NOT EXISTS vector;

-- The organisation of the current unit of work, set with SET LOCAL by core.tenancy.
CREATE OR REPLACE FUNCTION agentos_current_org() RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting('app.org_id', true), '') $$;

CREATE TABLE orgs (
    id text PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    settings jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    id text NOT NULL,
    email text,
    name text,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id)
);

CREATE TABLE api_keys (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL,
    prefix text NOT NULL UNIQUE,
    secret_hash text NOT NULL,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id, id DESC);

CREATE TABLE agents (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL,
    version integer NOT NULL DEFAULT 1,
    config jsonb NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE UNIQUE INDEX agents_name_uq ON agents (org_id, name) WHERE deleted_at IS NULL;
CREATE INDEX agents_org_idx ON agents (org_id, id DESC) WHERE deleted_at IS NULL;

CREATE TABLE agent_versions (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    agent_id text NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    version integer NOT NULL,
    name text NOT NULL,
    config jsonb NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, version)
);

CREATE TABLE sessions (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    agent_id text NOT NULL REFERENCES agents(id),
    user_id text,
    title text,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE INDEX sessions_org_idx ON sessions (org_id, id DESC) WHERE deleted_at IS NULL;

CREATE TABLE runs (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    session_id text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    agent_id text NOT NULL REFERENCES agents(id),
    agent_version integer NOT NULL,
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running',
        'awaiting_confirmation', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    multitask text NOT NULL DEFAULT 'enqueue' CHECK (multitask IN ('enqueue', 'reject')),
    input jsonb NOT NULL,
    output jsonb,
    error jsonb,
    usage jsonb NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    idempotency_key text,
    request_hash text,
    attempt integer NOT NULL DEFAULT 0,
    lease_owner text,
    lease_expires_at timestamptz,
    heartbeat_at timestamptz,
    deadline_at timestamptz,
    cancel_requested_at timestamptz,
    trace_id text NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE UNIQUE INDEX runs_idempotency_uq ON runs (org_id, session_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_session_idx ON runs (session_id, id DESC);
CREATE INDEX runs_active_idx ON runs (session_id, id)
    WHERE status IN ('queued', 'running', 'awaiting_confirmation');
CREATE INDEX runs_lease_idx ON runs (lease_expires_at) WHERE status = 'running';

CREATE TABLE messages (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    session_id text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run_id text REFERENCES runs(id) ON DELETE SET NULL,
    role text NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_idx ON messages (session_id, id);

CREATE TABLE run_events (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    session_id text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    type text NOT NULL,
    data jsonb NOT NULL DEFAULT '{}',
    ts timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX run_events_run_idx ON run_events (run_id, seq);

CREATE TABLE tool_calls (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    session_id text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    agent_id text NOT NULL,
    name text NOT NULL,
    args jsonb NOT NULL DEFAULT '{}',
    sensitive boolean NOT NULL DEFAULT false,
    status text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'running',
        'succeeded', 'failed')),
    output jsonb,
    error jsonb,
    decided_by text,
    decided_at timestamptz,
    decision_reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX tool_calls_run_idx ON tool_calls (run_id, id);
CREATE INDEX tool_calls_pending_idx ON tool_calls (org_id, id) WHERE status = 'pending';

CREATE TABLE audit_logs (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    actor text NOT NULL,
    action text NOT NULL,
    target_type text NOT NULL,
    target_id text,
    details jsonb NOT NULL DEFAULT '{}',
    trace_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_org_idx ON audit_logs (org_id, id DESC);
"""


def _tenant_policy(conn: psycopg.Connection, table: str) -> None:
    """ENABLE and FORCE row-level security on one tenant table, scoped to the current org."""
    column = "id" if table == "orgs" else "org_id"
    ident = sql.Identifier(table)
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(ident))
    conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(ident))
    conn.execute(
        sql.SQL(
            "CREATE POLICY tenant_isolation ON {} USING ({col} = agentos_current_org()) "
            "WITH CHECK ({col} = agentos_current_org())"
        ).format(ident, col=sql.Identifier(column))
    )


def _tenant_policies(conn: psycopg.Connection) -> None:
    """ENABLE and FORCE row-level security on every tenant table of the initial schema."""
    for table in _INITIAL_TENANT_TABLES:
        _tenant_policy(conn, table)
    # Authentication must find a key by its public prefix before the org is known. This policy
    # shows exactly the one row whose prefix the request named (set with SET LOCAL by
    # core.store.api_keys); the secret's hash is still checked in the application.
    conn.execute(
        "CREATE POLICY api_key_lookup ON api_keys FOR SELECT "
        "USING (prefix = nullif(current_setting('app.api_key_prefix', true), ''))"
    )


def _initial(conn: psycopg.Connection) -> None:
    conn.execute(_INITIAL_SCHEMA_SQL)
    _tenant_policies(conn)


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[psycopg.Connection], None]


_RUN_QUEUE_SQL = """
-- The last event sequence number handed out in each session; events take the next ones while
-- holding the session row, so ids increase with no gaps and no repeats.
ALTER TABLE sessions ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;
-- A run's place in its session's FIFO: the seq of its `run.queued` event.
ALTER TABLE runs ADD COLUMN queue_seq bigint;
CREATE INDEX runs_queue_idx ON runs (session_id, queue_seq)
    WHERE status IN ('queued', 'running', 'awaiting_confirmation');
"""


def _run_queue(conn: psycopg.Connection) -> None:
    conn.execute(_RUN_QUEUE_SQL)


_DURABILITY_SQL = """
-- Per-org overrides of admission limits (e.g. {"max_active_runs": 20, "requests_per_minute": 600}).
ALTER TABLE orgs ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
-- When a run started waiting for a human; the wait does not count against its deadline.
ALTER TABLE runs ADD COLUMN paused_at timestamptz;
-- A tool call's key within its run (the model's call id, prefixed by the delegation path), so a
-- replayed step finds the call it already made instead of making it again.
ALTER TABLE tool_calls ADD COLUMN call_key text;
-- What the model proposed, when a human approved different arguments.
ALTER TABLE tool_calls ADD COLUMN proposed_args jsonb;
-- 'tool': a skill call; 'plan': a plan-mode plan held for approval.
ALTER TABLE tool_calls ADD COLUMN kind text NOT NULL DEFAULT 'tool' CHECK (kind IN ('tool', 'plan'));
CREATE UNIQUE INDEX tool_calls_call_key_uq ON tool_calls (run_id, call_key) WHERE call_key IS NOT NULL;
-- The watchdog looks across orgs for runs that need it (lapsed leases, lost enqueues, deadlines).
-- Like api_key_lookup, it is read-only and must be switched on explicitly for one transaction
-- (core.tenancy.watchdog_scan_tx); every change it then makes goes through tenant_tx.
CREATE POLICY watchdog_scan ON runs FOR SELECT
    USING (current_setting('app.watchdog', true) = 'on');
CREATE INDEX runs_watchdog_idx ON runs (status, created_at)
    WHERE status IN ('queued', 'running', 'awaiting_confirmation');
"""


def _durability(conn: psycopg.Connection) -> None:
    conn.execute(_DURABILITY_SQL)


def _lapses(conn: psycopg.Connection) -> None:
    # How many times a worker holding the run stopped renewing its lease (died, hung); a resume
    # after a human's decision is a new claim (`attempt`) but not a lapse.
    conn.execute("ALTER TABLE runs ADD COLUMN lapses integer NOT NULL DEFAULT 0")


_MEMORIES_SQL = """
-- Long-term memory (issue #5). `embedding` has no fixed dimension: each row records the model
-- that made it (`embedding_model`, `dims`), and search only compares rows of the same model.
CREATE TABLE memories (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    scope text NOT NULL CHECK (scope IN ('org', 'agent', 'user', 'session')),
    agent_id text,
    user_id text,
    session_id text,
    kind text NOT NULL CHECK (kind IN ('summary', 'preference', 'fact', 'document')),
    content text NOT NULL,
    content_hash text NOT NULL,
    embedding vector NOT NULL,
    embedding_model text NOT NULL,
    dims integer NOT NULL CHECK (dims > 0),
    metadata jsonb NOT NULL DEFAULT '{}',
    source text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
-- One row per fact: concurrent writes of the same item meet here (INSERT ... ON CONFLICT).
CREATE UNIQUE INDEX memories_dedup_uq ON memories (org_id, scope, coalesce(agent_id, ''),
    coalesce(user_id, ''), coalesce(session_id, ''), kind, content_hash, embedding_model);
-- Approximate search for the default offline model (384-d); other models get their own
-- partial index when they are adopted.
CREATE INDEX memories_offline_hnsw ON memories USING hnsw ((embedding::vector(384)) vector_cosine_ops)
    WHERE embedding_model = 'offline:hash';
CREATE INDEX memories_org_model_idx ON memories (org_id, embedding_model, created_at);
CREATE INDEX memories_org_idx ON memories (org_id, id DESC);
CREATE INDEX memories_user_idx ON memories (org_id, user_id) WHERE user_id IS NOT NULL;
"""


def _memories(conn: psycopg.Connection) -> None:
    conn.execute(_MEMORIES_SQL)
    _tenant_policy(conn, "memories")


_KNOWLEDGE_SQL = """
-- The knowledge base (issue #5): uploaded text or markdown documents. Their chunks are memories
-- (kind 'document', scope 'org') pointing back here, so deleting a document deletes its chunks.
-- `content` is kept so that ingestion can be retried and a re-embedding can chunk it again.
CREATE TABLE knowledge_documents (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    content_type text NOT NULL CHECK (content_type IN ('text/plain', 'text/markdown')),
    content text NOT NULL,
    size_bytes integer NOT NULL CHECK (size_bytes >= 0),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready', 'failed')),
    error jsonb,
    chunks integer NOT NULL DEFAULT 0,
    embedding_model text,
    attempts integer NOT NULL DEFAULT 0,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX knowledge_documents_org_idx ON knowledge_documents (org_id, id DESC);
CREATE INDEX knowledge_documents_pending_idx ON knowledge_documents (updated_at) WHERE status = 'pending';
-- Like runs', a read-only view across orgs for the watchdog (core.tenancy.watchdog_scan_tx), so
-- that it can re-send documents whose ingestion message was lost.
CREATE POLICY watchdog_scan ON knowledge_documents FOR SELECT
    USING (current_setting('app.watchdog', true) = 'on');

ALTER TABLE memories ADD COLUMN document_id text REFERENCES knowledge_documents(id) ON DELETE CASCADE;
CREATE INDEX memories_document_idx ON memories (document_id) WHERE document_id IS NOT NULL;
-- Two documents holding the same paragraph each keep their own chunk.
DROP INDEX memories_dedup_uq;
CREATE UNIQUE INDEX memories_dedup_uq ON memories (org_id, scope, coalesce(agent_id, ''),
    coalesce(user_id, ''), coalesce(session_id, ''), kind, content_hash, embedding_model,
    coalesce(document_id, ''));
"""


def _knowledge(conn: psycopg.Connection) -> None:
    conn.execute(_KNOWLEDGE_SQL)
    _tenant_policy(conn, "knowledge_documents")


_MEMORY_SEARCH_SQL = """
-- Exact search (memory.long_term: orgs with few items of the offline model, and user or session
-- filters) reads the org's rows from this index alone: everything the filters and the distance
-- need is in it, packed by org, instead of one heap page per row. It costs a second copy of the
-- 384-d vectors (about 1.6 kB per item); bench/memory.py measured exact search 2-2.5x faster.
CREATE INDEX memories_offline_exact_idx ON memories (org_id)
    INCLUDE (id, scope, agent_id, user_id, session_id, kind, expires_at, embedding)
    WHERE embedding_model = 'offline:hash';
-- Search with a session filter is an exact search over that session's items: find them without
-- reading the whole org. (A user filter has memories_user_idx.)
CREATE INDEX memories_session_idx ON memories (org_id, session_id) WHERE session_id IS NOT NULL;
"""


def _memory_search(conn: psycopg.Connection) -> None:
    conn.execute(_MEMORY_SEARCH_SQL)


_MEMORY_EXACT_BY_USER_SQL = """
-- The exact-search index of migration 7, keyed by (org_id, user_id): a search filtered by end user
-- then reads only that user's entries, from the index alone (bench/memory.py: 7.3 ms instead of
-- 11.9 ms for 6,000 items of one user in a 300,000-item org).
DROP INDEX memories_offline_exact_idx;
CREATE INDEX memories_offline_exact_idx ON memories (org_id, user_id)
    INCLUDE (id, scope, agent_id, session_id, kind, expires_at, embedding)
    WHERE embedding_model = 'offline:hash';
"""


def _memory_exact_by_user(conn: psycopg.Connection) -> None:
    conn.execute(_MEMORY_EXACT_BY_USER_SQL)


_UNIQUE_ORG_NAMES_SQL = """
-- Org names become unique regardless of case (`agentos org create` and POST /v1/orgs answer a
-- taken name with a conflict). Names taken twice before this migration keep the oldest org's
-- name; each later one gets its id appended, "Acme (org_...)", cut to the 200-character limit.
-- FORCEd row-level security would hide every org from the owner login: lifted for this one
-- statement, inside the migration's transaction.
ALTER TABLE orgs NO FORCE ROW LEVEL SECURITY;
UPDATE orgs o SET name = left(o.name, 200 - length(o.id) - 3) || ' (' || o.id || ')'
FROM (SELECT id, row_number() OVER (PARTITION BY lower(name) ORDER BY created_at, id) AS n FROM orgs) d
WHERE d.id = o.id AND d.n > 1;
ALTER TABLE orgs FORCE ROW LEVEL SECURITY;
CREATE UNIQUE INDEX orgs_name_uq ON orgs (lower(name));
"""


def _unique_org_names(conn: psycopg.Connection) -> None:
    conn.execute(_UNIQUE_ORG_NAMES_SQL)


_ORG_SECRETS_SQL = """
-- Org secrets (issue #12), sealed by core.secrets: `wrapped_key` is the secret's own AES-256-GCM
-- data key wrapped by the key-encryption key of version `key_version`; `ciphertext` the value
-- sealed by the data key. Both bind the org id and the name, so a row moved elsewhere does not open.
CREATE TABLE org_secrets (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'),
    key_version integer NOT NULL CHECK (key_version >= 1),
    wrapped_key bytea NOT NULL,
    ciphertext bytea NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, name)
);
CREATE INDEX org_secrets_key_version_idx ON org_secrets (key_version, org_id, name);
-- `agentos secrets rotate` finds the envelopes to rewrap across orgs, read-only, when switched on
-- for one transaction (core.tenancy.secret_rotation_scan_tx); each rewrap goes through tenant_tx.
CREATE POLICY secret_rotation ON org_secrets FOR SELECT
    USING (current_setting('app.secret_rotation', true) = 'on');
"""


def _org_secrets(conn: psycopg.Connection) -> None:
    conn.execute(_ORG_SECRETS_SQL)
    _tenant_policy(conn, "org_secrets")


_SKILL_REGISTRY_SQL = """
-- An org's own skills (issue #12): a row per name with its current version, and every version
-- kept whole in skill_versions (never changed once written), so a run that resolved a version
-- at its start still finds it after the skill changed or was deleted.
CREATE TABLE skills (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    version integer NOT NULL DEFAULT 1,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE UNIQUE INDEX skills_name_uq ON skills (org_id, name) WHERE deleted_at IS NULL;
CREATE TABLE skill_versions (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    skill_id text NOT NULL REFERENCES skills(id) ON DELETE CASCADE,
    version integer NOT NULL CHECK (version >= 1),
    name text NOT NULL,
    -- {kind, description, parameters, sensitive, ...the kind's own fields}: core.skill_defs.SkillDefinition
    definition jsonb NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (skill_id, version)
);
-- A name's versions go on across a delete and a re-create, so (name, version) names one definition.
CREATE UNIQUE INDEX skill_versions_name_uq ON skill_versions (org_id, name, version);
-- The org's skill versions a run resolved when it first started ({name: version}); a resumed
-- or taken-over run reads them back instead of resolving again.
ALTER TABLE runs ADD COLUMN skill_versions jsonb;
"""


def _skill_registry(conn: psycopg.Connection) -> None:
    conn.execute(_SKILL_REGISTRY_SQL)
    _tenant_policy(conn, "skills")
    _tenant_policy(conn, "skill_versions")


_DATA_SOURCES_SQL = """
-- An org's registered data sources for the data_query skill (issue #12). `config` holds the
-- kind's settings: for 'postgres' {url: {secret: name}, statement_timeout_ms, max_rows}; the URL
-- itself lives only in the org's secrets.
CREATE TABLE data_sources (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    kind text NOT NULL CHECK (kind IN ('postgres')),
    config jsonb NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX data_sources_name_uq ON data_sources (org_id, name);
"""


def _data_sources(conn: psycopg.Connection) -> None:
    conn.execute(_DATA_SOURCES_SQL)
    _tenant_policy(conn, "data_sources")


_MCP_SERVERS_SQL = """
-- An org's MCP servers (issue #12), reached by streamable-HTTP URL only (never a command). Their
-- tools become skills named mcp_<server>_<tool>; `tools` caches the server's tool list
-- ([{name, description, input_schema}]) until an admin refreshes it.
CREATE TABLE mcp_servers (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9]{0,15}$'),
    url text NOT NULL CHECK (url ~ '^https?://'),
    headers jsonb NOT NULL DEFAULT '{}',
    timeout_s real NOT NULL DEFAULT 20,
    sensitive boolean NOT NULL DEFAULT false,
    tools jsonb NOT NULL DEFAULT '[]',
    tools_refreshed_at timestamptz,
    last_error text,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX mcp_servers_name_uq ON mcp_servers (org_id, name);
"""


def _mcp_servers(conn: psycopg.Connection) -> None:
    conn.execute(_MCP_SERVERS_SQL)
    _tenant_policy(conn, "mcp_servers")


def _trace_parent(conn: psycopg.Connection) -> None:
    # The W3C traceparent of the request that created a run (its trace id is `trace_id`): a
    # later delivery (after a human's decision, a crash) continues the run's trace under it.
    conn.execute("ALTER TABLE runs ADD COLUMN trace_parent text")


_USAGE_AND_AUDIT_SQL = """
-- Usage metering (issue #13): one row per metered call, keyed by its run and its place in the run
-- (`call_key`: the delegation path, the step and the call), so a step that runs again after a
-- crash or a resume inserts nothing twice (ON CONFLICT DO NOTHING). No foreign key to runs: usage
-- outlives a deleted session. `kind` 'model': a model call (tokens, cost from the price table);
-- 'sandbox': a code execution (CPU milliseconds; `model` is '').
CREATE TABLE usage_records (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    run_id text NOT NULL,
    call_key text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('model', 'sandbox')),
    agent_id text NOT NULL,
    model text NOT NULL DEFAULT '',
    day date NOT NULL,
    input_tokens bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cached_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0),
    cost_usd numeric NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    cpu_ms bigint NOT NULL DEFAULT 0 CHECK (cpu_ms >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, call_key)
);
CREATE INDEX usage_records_org_day_idx ON usage_records (org_id, day);
-- The records summed per org, UTC day, agent and model, in the statement that inserts a record
-- (core.store.usage.RECORD_SQL): what GET /v1/usage reads.
CREATE TABLE usage_daily (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    day date NOT NULL,
    agent_id text NOT NULL,
    model text NOT NULL,
    model_calls bigint NOT NULL DEFAULT 0,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    cost_usd numeric NOT NULL DEFAULT 0,
    sandbox_executions bigint NOT NULL DEFAULT 0,
    cpu_ms bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, day, agent_id, model)
);
-- An org's tokens and cost per UTC calendar month: the counter its monthly budgets are checked
-- against, updated (row lock) in the same statement as the record.
CREATE TABLE usage_months (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    month date NOT NULL,
    tokens bigint NOT NULL DEFAULT 0,
    cost_usd numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, month)
);
-- Runs created per UTC day, counted (under a row lock, in the run's creating transaction) only
-- for orgs with a `max_runs_per_day` limit.
CREATE TABLE usage_run_days (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    day date NOT NULL,
    runs integer NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, day)
);
-- The audit API (issue #13): where a change came from. The table is append-only for the
-- application role (core.migrations.ensure_app_role revokes UPDATE and DELETE).
ALTER TABLE audit_logs ADD COLUMN ip text;
ALTER TABLE audit_logs ADD COLUMN user_agent text;
ALTER TABLE audit_logs ADD COLUMN request_id text;
CREATE INDEX audit_logs_actor_idx ON audit_logs (org_id, actor, id DESC);
CREATE INDEX audit_logs_action_idx ON audit_logs (org_id, action, id DESC);
"""


def _usage_and_audit(conn: psycopg.Connection) -> None:
    conn.execute(_USAGE_AND_AUDIT_SQL)
    for table in ("usage_records", "usage_daily", "usage_months", "usage_run_days"):
        _tenant_policy(conn, table)


_WEBHOOKS_SQL = """
-- Signed webhooks (issue #14): an org's endpoints, their deliveries (one per webhook and event,
-- the id being the stable `webhook-id` header) and every attempt. Secrets live in org_secrets.
CREATE TABLE webhooks (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    url text NOT NULL CHECK (url ~ '^https?://'),
    events text[] NOT NULL,
    description text NOT NULL DEFAULT '',
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text,
    -- Since when no attempt succeeded (NULL: the last attempt did); disables the webhook after
    -- AGENTOS_WEBHOOKS__DISABLE_AFTER_DAYS.
    failing_since timestamptz,
    -- Until when the secret before the last rotation still signs.
    previous_secret_until timestamptz,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_org_idx ON webhooks (org_id, id);
CREATE TABLE webhook_deliveries (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    webhook_id text NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_type text NOT NULL,
    session_id text NOT NULL,
    seq bigint NOT NULL,
    run_id text,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- An attempt in progress holds the delivery until then (a duplicate message backs off).
    leased_until timestamptz,
    last_status integer,
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, session_id, seq)
);
CREATE INDEX webhook_deliveries_list_idx ON webhook_deliveries (webhook_id, id DESC);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (session_id, seq);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- The watchdog re-sends due deliveries whose message was lost or whose wait was too long for a
-- countdown: a read-only view across orgs (core.tenancy.watchdog_scan_tx), as for runs.
CREATE POLICY watchdog_scan ON webhook_deliveries FOR SELECT
    USING (current_setting('app.watchdog', true) = 'on');
CREATE TABLE webhook_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    delivery_id text NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    status integer,
    error text,
    duration_ms integer NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, attempt);
"""


def _webhooks(conn: psycopg.Connection) -> None:
    conn.execute(_WEBHOOKS_SQL)
    for table in ("webhooks", "webhook_deliveries", "webhook_attempts"):
        _tenant_policy(conn, table)


_FILES_SQL = """
-- Uploaded files (issue #14): metadata here, bytes in the file storage (core.file_storage) under
-- `storage_key`. A file attached to a session appears in its workspace as files/<name>.
CREATE TABLE files (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    content_type text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    sha256 text NOT NULL,
    storage_key text NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_org_idx ON files (org_id, id DESC);
CREATE TABLE session_files (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    session_id text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    file_id text NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    name text NOT NULL,
    attached_by text,
    attached_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, file_id),
    UNIQUE (session_id, name)
);
CREATE INDEX session_files_file_idx ON session_files (file_id);
"""


def _files(conn: psycopg.Connection) -> None:
    conn.execute(_FILES_SQL)
    for table in ("files", "session_files"):
        _tenant_policy(conn, table)


_RUNNERS_SQL = """
-- Remote runners (issue #19): a process on a user's machine that connects out to the API and
-- executes tool calls there. Its token is `aosr_<prefix>_<secret>`; only a SHA-256 of the
-- secret is stored. A revoked runner keeps its row (its calls' history names it).
CREATE TABLE runners (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    labels jsonb NOT NULL DEFAULT '{}',
    prefix text NOT NULL UNIQUE,
    secret_hash text NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX runners_live_name_idx ON runners (org_id, name) WHERE revoked_at IS NULL;
-- Tool calls routed to a runner, keyed by the tool call's id: Postgres is the truth of what
-- was sent and answered, Redis only wakes the API process holding the runner's connection.
-- `waiting`: the runner was offline and the run is paused for it; `queued`: to be delivered
-- (again on every reconnect) until the runner posts its result; `done`: answered (the ack).
CREATE TABLE runner_calls (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    runner_id text NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    session_id text NOT NULL,
    name text NOT NULL,
    args jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL CHECK (status IN ('waiting', 'queued', 'done')),
    output jsonb,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    waiting_since timestamptz,
    done_at timestamptz
);
CREATE INDEX runner_calls_open_idx ON runner_calls (runner_id, created_at) WHERE status <> 'done';
CREATE INDEX runner_calls_runner_run_idx ON runner_calls (runner_id, run_id);
-- What a runner did with a run's workspace once the run ended: its branch, the commit it made
-- (with the run id in the message) and the diff summary against where the worktree began.
CREATE TABLE runner_runs (
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    runner_id text NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
    branch text,
    commit text,
    diff_stat text NOT NULL DEFAULT '',
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, runner_id)
);
-- Authentication finds a runner by its token's public prefix before the org is known; like
-- api_key_lookup, this shows exactly that one row (core.tenancy.runner_lookup_batch).
CREATE POLICY runner_lookup ON runners FOR SELECT
    USING (prefix = nullif(current_setting('app.runner_prefix', true), ''));
-- The maintenance job that ends waits for an offline runner past their timeout looks across
-- orgs, read-only, like the watchdog does for runs (core.tenancy.watchdog_scan_tx).
CREATE POLICY watchdog_scan ON runner_calls FOR SELECT
    USING (current_setting('app.watchdog', true) = 'on');
"""


def _runners(conn: psycopg.Connection) -> None:
    conn.execute(_RUNNERS_SQL)
    for table in ("runners", "runner_calls", "runner_runs"):
        _tenant_policy(conn, table)


_ORG_DELETION_SQL = """
-- Org deletion (issue #23): the owner asks (`deletion_requested_at`); during the grace period the
-- org can be restored, after `purge_after` the maintenance job removes every row it owns.
ALTER TABLE orgs ADD COLUMN deletion_requested_at timestamptz;
ALTER TABLE orgs ADD COLUMN purge_after timestamptz;
CREATE INDEX orgs_purge_idx ON orgs (purge_after) WHERE purge_after IS NOT NULL;
-- The purge job looks across orgs for those due (core.tenancy.lifecycle_scan_tx): read-only, and
-- only `orgs` rows, like watchdog_scan; the purge itself goes through tenant_tx.
CREATE POLICY lifecycle_scan ON orgs FOR SELECT
    USING (current_setting('app.lifecycle', true) = 'on');
-- End-user erasure (DELETE /v1/users-data) finds one user's sessions.
CREATE INDEX sessions_user_idx ON sessions (org_id, user_id) WHERE user_id IS NOT NULL;
"""


def _org_deletion(conn: psycopg.Connection) -> None:
    conn.execute(_ORG_DELETION_SQL)


_RETENTION_SQL = """
-- Retention (issue #23, core.retention): the org's overrides of the operator's defaults
-- (AGENTOS_LIFECYCLE__*), e.g. {"events_days": 30}; like `limits`, only what the org changed.
ALTER TABLE orgs ADD COLUMN retention jsonb NOT NULL DEFAULT '{}';
-- The retention job walks an org's runs that ended before a cutoff.
CREATE INDEX runs_finished_idx ON runs (org_id, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX audit_logs_created_idx ON audit_logs (org_id, created_at);
-- The audit log is append-only for the application role; retention alone removes old entries,
-- through this function (run as its owner), only the current org's, only older than a day, and
-- a bounded batch per call. The operator's minimum age is applied by the caller (core.retention).
CREATE FUNCTION agentos_prune_audit(older_than timestamptz, max_rows integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    removed integer;
BEGIN
    IF older_than > now() - interval '1 day' THEN
        RAISE EXCEPTION 'audit entries younger than a day are never removed';
    END IF;
    DELETE FROM audit_logs WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM audit_logs WHERE org_id = agentos_current_org() AND created_at < older_than
        LIMIT max_rows));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END $$;
REVOKE ALL ON FUNCTION agentos_prune_audit(timestamptz, integer) FROM PUBLIC;
"""


def _retention(conn: psycopg.Connection) -> None:
    conn.execute(_RETENTION_SQL)


_ORG_EXPORTS_SQL = """
-- Org exports (issue #23, core.org_export): an archive of the org's data, built by a worker; its
-- bytes are in the file storage under `storage_key` (the org's prefix, so deleting the org takes it).
CREATE TABLE org_exports (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    progress jsonb NOT NULL DEFAULT '{}',
    storage_key text,
    size_bytes bigint,
    error text,
    requested_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX org_exports_org_idx ON org_exports (org_id, id DESC);
"""


def _org_exports(conn: psycopg.Connection) -> None:
    conn.execute(_ORG_EXPORTS_SQL)
    _tenant_policy(conn, "org_exports")


_MODEL_PROVIDERS_SQL = """
-- Model providers per org (issue #14): an agent's `model` names one as `<name>:<model>`. The API
-- key is never here: `api_key_secret` names the org secret (org_secrets) that holds it.
CREATE TABLE model_providers (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    kind text NOT NULL CHECK (kind IN ('openai', 'anthropic', 'openai_compatible', 'azure_openai')),
    base_url text CHECK (base_url ~ '^https?://'),
    api_version text,
    default_model text,
    headers jsonb NOT NULL DEFAULT '{}',
    api_key_secret text,
    -- Whether the key was given as `api_key` and stored by us (deleted with the provider), rather
    -- than naming a secret the org manages itself.
    owns_secret boolean NOT NULL DEFAULT false,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);
"""


def _model_providers(conn: psycopg.Connection) -> None:
    conn.execute(_MODEL_PROVIDERS_SQL)
    _tenant_policy(conn, "model_providers")


_KNOWLEDGE_FILES_SQL = """
-- A knowledge document made from an uploaded file (POST /v1/knowledge {file_id}) goes with it:
-- deleting the file deletes the document, and so its chunks (memories.document_id cascades).
ALTER TABLE knowledge_documents ADD COLUMN file_id text REFERENCES files(id) ON DELETE CASCADE;
CREATE INDEX knowledge_documents_file_idx ON knowledge_documents (file_id) WHERE file_id IS NOT NULL;
"""


def _knowledge_files(conn: psycopg.Connection) -> None:
    conn.execute(_KNOWLEDGE_FILES_SQL)


_MEMORY_INDEX_MAINTENANCE_SQL = """
-- The per-org vector index job (memory/index_maintenance.py) counts each org's items across
-- orgs, as the schema's owner (it builds the indexes too). A read-only view switched on for one
-- transaction, and only for the owner: a policy for the application role would be OR-ed into
-- every search's row filter, and the planner could no longer use the org as an index condition.
CREATE POLICY index_maintenance ON memories FOR SELECT TO CURRENT_USER
    USING (current_setting('app.index_maintenance', true) = 'on');
"""


def _memory_index_maintenance(conn: psycopg.Connection) -> None:
    conn.execute(_MEMORY_INDEX_MAINTENANCE_SQL)


_MEMORY_METADATA_SQL = """
-- Metadata filters on memory and knowledge search (`metadata @> '{"key": value}'`: equality, or
-- containment for arrays and objects, on top-level keys). jsonb_path_ops: smaller than the
-- default operator class, and containment is the only operator the filters use.
CREATE INDEX memories_metadata_idx ON memories USING gin (metadata jsonb_path_ops);
"""


def _memory_metadata(conn: psycopg.Connection) -> None:
    conn.execute(_MEMORY_METADATA_SQL)


_KNOWLEDGE_FULL_TEXT_SQL = """
-- Hybrid retrieval (memory/hybrid.py): full-text search over knowledge chunks, English stemming.
-- Only chunks: other memories are short and searched by vector alone.
CREATE INDEX memories_document_fts_idx ON memories USING gin (to_tsvector('english', content))
    WHERE kind = 'document';
"""


def _knowledge_full_text(conn: psycopg.Connection) -> None:
    conn.execute(_KNOWLEDGE_FULL_TEXT_SQL)


_KNOWLEDGE_CHUNKING_SQL = """
-- The chunking settings a document's chunks were made with ({"chars", "overlap"}); NULL: chunked
-- before they were recorded. `agentos memory reembed` chunks a document again when they differ.
ALTER TABLE knowledge_documents ADD COLUMN chunking jsonb;
"""


def _knowledge_chunking(conn: psycopg.Connection) -> None:
    conn.execute(_KNOWLEDGE_CHUNKING_SQL)


_MEMORY_STAGED_EMBEDDINGS_SQL = """
-- `agentos memory reembed` to another model writes each item's new embedding here first, while
-- the org keeps searching its items on the old model; once every item has one, a single
-- transaction moves them into `memories` and switches the org's model (memory.reembed), so a
-- search never misses an item during the move. One row per item (its latest target).
CREATE TABLE memory_staged_embeddings (
    memory_id text PRIMARY KEY REFERENCES memories(id) ON DELETE CASCADE,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    embedding_model text NOT NULL,
    dims integer NOT NULL CHECK (dims > 0),
    embedding vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memory_staged_embeddings_org_idx ON memory_staged_embeddings (org_id, embedding_model);
"""


def _memory_staged_embeddings(conn: psycopg.Connection) -> None:
    conn.execute(_MEMORY_STAGED_EMBEDDINGS_SQL)
    _tenant_policy(conn, "memory_staged_embeddings")


_PEOPLE_SQL = """
-- The per-org `users` of the initial schema were memberships all along (an org's role for a
-- subject): they keep their rows and their tenant policy under the right name.
ALTER TABLE users RENAME TO memberships;
ALTER TABLE memberships RENAME CONSTRAINT users_pkey TO memberships_pkey;
ALTER TABLE memberships RENAME COLUMN id TO user_id;
ALTER TABLE memberships DROP COLUMN email, DROP COLUMN name;
CREATE INDEX memberships_user_idx ON memberships (user_id);

-- People, global: one row per person across every org they belong to. Not tenant data: the API
-- reaches a user only through a membership of the request's org, or as the signed-in user.
CREATE TABLE users (
    id text PRIMARY KEY,
    email text CHECK (email = lower(email)),
    name text,
    email_verified boolean NOT NULL DEFAULT false,
    password_hash text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_uq ON users (email) WHERE email IS NOT NULL;

-- The subjects already recorded become users (the owner is not FORCEd for this one copy).
ALTER TABLE memberships NO FORCE ROW LEVEL SECURITY;
INSERT INTO users (id) SELECT DISTINCT user_id FROM memberships ON CONFLICT DO NOTHING;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
ALTER TABLE memberships ADD FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;
-- `GET /v1/me` lists the signed-in user's orgs: this read-only policy shows that one user's
-- memberships in every org, switched on for one transaction (core.tenancy.user_memberships_tx).
CREATE POLICY user_memberships ON memberships FOR SELECT
    USING (user_id = nullif(current_setting('app.user_id', true), ''));
-- ... and the names of those orgs (nothing else of them is read there).
CREATE POLICY user_member_orgs ON orgs FOR SELECT
    USING (id IN (SELECT org_id FROM memberships WHERE user_id = nullif(current_setting('app.user_id', true), '')));

-- Invitations to an org. Only a SHA-256 of the token is stored; accepting finds the row by it
-- before the org is known, through the read-only `invitation_lookup` policy.
CREATE TABLE invitations (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    email text NOT NULL CHECK (email = lower(email)),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    token_hash text NOT NULL UNIQUE,
    invited_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by text,
    revoked_at timestamptz
);
CREATE INDEX invitations_org_idx ON invitations (org_id, id DESC);
CREATE UNIQUE INDEX invitations_open_uq ON invitations (org_id, email)
    WHERE accepted_at IS NULL AND revoked_at IS NULL;
CREATE POLICY invitation_lookup ON invitations FOR SELECT
    USING (token_hash = nullif(current_setting('app.invitation_token_hash', true), ''));

-- Sign-in sessions (global, like users): one per sign-in to one org. Access tokens name their
-- session (`agentos_sid`), so revoking it (logout, removal from the org, refresh-token reuse)
-- stops them at the next request. Refresh tokens rotate: each is used once, then replaced.
CREATE TABLE login_sessions (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id text NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    method text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_reason text
);
CREATE INDEX login_sessions_user_idx ON login_sessions (user_id, org_id) WHERE revoked_at IS NULL;
CREATE TABLE refresh_tokens (
    token_hash text PRIMARY KEY,
    session_id text NOT NULL REFERENCES login_sessions(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
-- Password reset tokens: single use, short-lived, hashed at rest.
CREATE TABLE password_resets (
    token_hash text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
"""


def _people(conn: psycopg.Connection) -> None:
    conn.execute(_PEOPLE_SQL)
    _tenant_policy(conn, "invitations")


_PARTITIONED_EVENTS_SQL = """
-- The event log partitioned by time (issue #23): one partition per ISO week (UTC, Monday 00:00),
-- so retention drops a whole week's file instead of deleting row by row (docs/operations.md,
-- "Event log partitions"). Weekly: retention is counted in days (90 by default), and a week keeps
-- a drop at most 7 days behind the policy while a 90-day log has ~15 partitions, few enough that a
-- replay (by session and seq, not by time) probes every partition's index cheaply.
ALTER TABLE run_events RENAME TO run_events_unpartitioned;
ALTER INDEX run_events_pkey RENAME TO run_events_unpartitioned_pkey;
ALTER INDEX run_events_run_idx RENAME TO run_events_unpartitioned_run_idx;

-- Its key and foreign keys come after the copy (_PARTITIONED_EVENTS_KEYS_SQL).
CREATE TABLE run_events (
    org_id text NOT NULL,
    session_id text NOT NULL,
    seq bigint NOT NULL,
    run_id text NOT NULL,
    type text NOT NULL,
    data jsonb NOT NULL DEFAULT '{}',
    ts timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (ts);
-- Whatever no weekly partition covers (the job that creates them ahead did not run) lands here:
-- an insert never fails for a missing partition. Creating the week's partition moves them.
CREATE TABLE run_events_default PARTITION OF run_events DEFAULT;
ALTER TABLE run_events_default ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON run_events_default USING (org_id = agentos_current_org())
    WITH CHECK (org_id = agentos_current_org());

-- One week's partition (the week holding `week`, UTC), created by its owner: the schema's owner
-- (called by the migration and by agentos_create_event_partitions, never by the application).
-- Rows the default partition took for that week move into it. A partition is reached only
-- through `run_events`, whose policy applies there; the application role has no privilege on
-- a partition itself (core.migrations.ensure_app_role revokes, core.db checks), and each still
-- ENABLEs row-level security with the tenant policy, should anyone grant one.
CREATE FUNCTION agentos_add_event_partition(week timestamptz) RETURNS boolean
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    lo timestamptz := date_trunc('week', week, 'UTC');
    hi timestamptz := date_trunc('week', week, 'UTC') + interval '7 days';
    name text := 'run_events_p' || to_char(date_trunc('week', week, 'UTC') AT TIME ZONE 'UTC', 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM run_events_default WHERE ts >= lo AND ts < hi) THEN
        EXECUTE format('CREATE TABLE %I (LIKE run_events INCLUDING DEFAULTS)', name);
        EXECUTE format('WITH moved AS (DELETE FROM run_events_default WHERE ts >= $1 AND ts < $2 RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved', name) USING lo, hi;
        EXECUTE format('ALTER TABLE run_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF run_events FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    END IF;
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (org_id = agentos_current_org()) '
                   'WITH CHECK (org_id = agentos_current_org())', name);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION agentos_add_event_partition(timestamptz) FROM PUBLIC;

-- The maintenance job (core.event_partitions) creates this week's partition and the next
-- `weeks_ahead` ones. Run as the owner (the application role has no DDL rights); a lock it
-- cannot get soon fails this call, and the job tries again at its next interval.
CREATE FUNCTION agentos_create_event_partitions(weeks_ahead integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    created integer := 0;
BEGIN
    IF weeks_ahead IS NULL OR weeks_ahead < 0 OR weeks_ahead > 52 THEN
        RAISE EXCEPTION 'weeks_ahead must be between 0 and 52';
    END IF;
    FOR w IN 0..weeks_ahead LOOP
        IF agentos_add_event_partition(now() + make_interval(weeks => w)) THEN
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;
REVOKE ALL ON FUNCTION agentos_create_event_partitions(integer) FROM PUBLIC;

-- Retention (core.retention) drops a weekly partition whole once every row in it is past every
-- org's retention: its week ended more than `events_days` ago (the longest events retention of
-- any org, computed by the caller; no org's own override in `orgs.retention` is shortened by
-- it, and an org keeping events for ever means no drop at all) and every run with an event in it
-- ended before that cutoff (a run that ran long, or waits for a human, keeps its partition).
-- Owner's rights, so it reads `orgs` and `runs` across orgs through their scan policies (switched
-- on for the call only). One partition per call, the oldest droppable one named after `after`: the
-- drop locks `run_events` until the caller commits, so each drop is its own short transaction.
-- A lock not had within `lock_timeout` leaves it for the next pass. Returns what went.
CREATE FUNCTION agentos_drop_event_partition(events_days integer, after text)
    RETURNS TABLE (dropped text, row_count bigint, byte_count bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    horizon integer := events_days;
    cutoff timestamptz;
    p record;
    kept boolean;
    -- The scan policies are switched on for this call and back as they were (a SET clause on a
    -- placeholder setting needs a superuser to create the function).
    was_lifecycle text := coalesce(current_setting('app.lifecycle', true), '');
    was_watchdog text := coalesce(current_setting('app.watchdog', true), '');
BEGIN
    IF events_days IS NULL OR events_days < 1 THEN
        RETURN;  -- 0: some org keeps its events for ever
    END IF;
    PERFORM set_config('app.lifecycle', 'on', true), set_config('app.watchdog', 'on', true);
    IF EXISTS (SELECT 1 FROM orgs WHERE retention->>'events_days' = '0') THEN
        PERFORM set_config('app.lifecycle', was_lifecycle, true), set_config('app.watchdog', was_watchdog, true);
        RETURN;
    END IF;
    SELECT greatest(horizon, max((retention->>'events_days')::integer)) INTO horizon
    FROM orgs WHERE retention->>'events_days' ~ '^[0-9]{1,6}$';
    cutoff := now() - make_interval(days => horizon);
    FOR p IN
        SELECT c.oid, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'run_events'::regclass AND c.relname ~ '^run_events_p[0-9]{8}$'
          AND c.relname > coalesce(after, '')
          AND to_date(substr(c.relname, 13), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC' + interval '7 days' <= cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I e WHERE NOT EXISTS '
                       '(SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.finished_at < $1))', p.relname)
            USING cutoff INTO kept;
        CONTINUE WHEN kept;
        dropped := p.relname;
        EXECUTE format('SELECT count(*) FROM %I', p.relname) INTO row_count;
        byte_count := pg_total_relation_size(p.oid);
        BEGIN
            EXECUTE format('DROP TABLE %I', p.relname);
        EXCEPTION WHEN lock_not_available THEN
            CONTINUE;
        END;
        RETURN NEXT;
        EXIT;
    END LOOP;
    PERFORM set_config('app.lifecycle', was_lifecycle, true), set_config('app.watchdog', was_watchdog, true);
END $$;
REVOKE ALL ON FUNCTION agentos_drop_event_partition(integer, text) FROM PUBLIC;
"""
# After the copy: building an index once, and checking each foreign key with one join, is
# several times faster than maintaining them row by row while a big log is copied.
_PARTITIONED_EVENTS_KEYS_SQL = """
-- The key must hold the partition key; (session_id, seq) stays unique by construction (a
-- session's seqs come from its counter, core.events).
ALTER TABLE run_events ADD PRIMARY KEY (session_id, seq, ts);
CREATE INDEX run_events_run_idx ON run_events (run_id, seq);
ALTER TABLE run_events ADD FOREIGN KEY (org_id) REFERENCES orgs(id) ON DELETE CASCADE;
ALTER TABLE run_events ADD FOREIGN KEY (session_id) REFERENCES sessions(id) ON DELETE CASCADE;
ALTER TABLE run_events ADD FOREIGN KEY (run_id) REFERENCES runs(id) ON DELETE CASCADE;
"""


def _partitioned_events(conn: psycopg.Connection) -> None:
    """The controlled cut-over of the event log to weekly partitions, in this one transaction:
    the old table is renamed, the partitions its rows need are created, the rows copied, the old
    table dropped. Writers wait on the renamed table's lock meanwhile, so on a big log stop the
    API and workers first (docs/operations.md, "Event log partitions", gives the time per million
    rows and the operator's path)."""
    conn.execute(_PARTITIONED_EVENTS_SQL)
    # Every week that holds an event, and this one and the next four.
    conn.execute("""
        SELECT agentos_add_event_partition(w) FROM generate_series(
            date_trunc('week', coalesce((SELECT min(ts) FROM run_events_unpartitioned), now()), 'UTC'),
            now() + interval '4 weeks', interval '1 week') AS w
    """)
    # The owner copies before the new table FORCEs row-level security (the old one stops
    # forcing it for this copy, as in the _people migration).
    conn.execute("ALTER TABLE run_events_unpartitioned NO FORCE ROW LEVEL SECURITY")
    conn.execute("INSERT INTO run_events SELECT * FROM run_events_unpartitioned")
    conn.execute("DROP TABLE run_events_unpartitioned")
    conn.execute(_PARTITIONED_EVENTS_KEYS_SQL)
    _tenant_policy(conn, "run_events")


_RUNNER_CALLS_SENT_SQL = """
-- When the worker sent a routed call to its runner (its `tool.call` event was emitted then): a call
-- sent once may have run on that runner, so it stays with it (only that runner's journal knows),
-- a wait for it that times out says its outcome is unknown, and a replayed step does not announce
-- it again. A call never sent (it waited for an offline runner) did not run anywhere.
ALTER TABLE runner_calls ADD COLUMN sent_at timestamptz;
UPDATE runner_calls SET sent_at = created_at WHERE status <> 'waiting';
"""


def _runner_calls_sent(conn: psycopg.Connection) -> None:
    conn.execute(_RUNNER_CALLS_SENT_SQL)


def _email_verification(conn: psycopg.Connection) -> None:
    # A verification link (open registration) is a mailed single-use token like a reset link, but
    # it only marks the email verified: the purpose keeps one from being used as the other.
    conn.execute("ALTER TABLE password_resets ADD COLUMN purpose text NOT NULL DEFAULT 'reset' "
                 "CHECK (purpose IN ('reset', 'verify'))")


# Raised by the event batch that goes with a usage record (core.events.EventBatch, strict) when
# its session is gone, so the record's transaction rolls back in the same round trip. VOLATILE:
# the planner never evaluates it ahead of the COALESCE that calls it only when needed.
_SESSION_GONE_SQL = """
CREATE FUNCTION agentos_session_gone(session text) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'session % is gone', session USING ERRCODE = 'no_data_found';
END
$$;
"""


def _session_gone(conn: psycopg.Connection) -> None:
    conn.execute(_SESSION_GONE_SQL)


# An export whose message was lost (the broker was away when it was asked for) stays queued: the
# watchdog sends it again, reading across orgs as it does for runs (core.tenancy.watchdog_scan_tx).
_EXPORTS_WATCHDOG_SQL = """
CREATE POLICY watchdog_scan ON org_exports FOR SELECT
    USING (current_setting('app.watchdog', true) = 'on');
CREATE INDEX org_exports_queued_idx ON org_exports (created_at) WHERE status = 'queued';
"""


def _exports_watchdog(conn: psycopg.Connection) -> None:
    conn.execute(_EXPORTS_WATCHDOG_SQL)


# An export whose worker stopped mid-way (killed, out of memory) stays `running` until the broker
# hands its message out again, an hour later: a worker building one beats (`heartbeat_at`), and the
# watchdog sends again a running export whose beat stopped.
_EXPORTS_HEARTBEAT_SQL = """
ALTER TABLE org_exports ADD COLUMN heartbeat_at timestamptz;
CREATE INDEX org_exports_running_idx ON org_exports ((coalesce(heartbeat_at, created_at))) WHERE status = 'running';
"""


def _exports_heartbeat(conn: psycopg.Connection) -> None:
    conn.execute(_EXPORTS_HEARTBEAT_SQL)


MIGRATIONS: tuple[Migration, ...] = (
    Migration("initial schema with row-level security", _initial),
    Migration("per-session event sequence and run queue order", _run_queue),
    Migration("approvals, side-effect keys, org limits, watchdog scan", _durability),
    Migration("count lease lapses apart from claims", _lapses),
    Migration("long-term memories with embeddings", _memories),
    Migration("knowledge base documents, chunks as memories", _knowledge),
    Migration("memory search: session index", _memory_search),
    Migration("memory search: exact-search index keyed by org and end user", _memory_exact_by_user),
    Migration("organisation names unique regardless of case", _unique_org_names),
    Migration("org secrets with envelope encryption", _org_secrets),
    Migration("versioned skill registry per org, skill versions resolved per run", _skill_registry),
    Migration("data sources for data_query", _data_sources),
    Migration("MCP servers and their cached tool lists", _mcp_servers),
    Migration("runs keep the trace context they were created in", _trace_parent),
    Migration("usage metering, budgets counters, audit log origin", _usage_and_audit),
    Migration("signed webhooks, their deliveries and attempts", _webhooks),
    Migration("uploaded files and their attachment to sessions", _files),
    Migration("remote runners and the tool calls routed to them", _runners),
    Migration("org deletion with a grace period, the purge job's scan, sessions by end user", _org_deletion),
    Migration("retention: per-org overrides, finished-runs index, audit pruning function", _retention),
    Migration("org exports built by a worker", _org_exports),
    Migration("model providers per org", _model_providers),
    Migration("knowledge documents made from uploaded files", _knowledge_files),
    Migration("per-org vector indexes: the maintenance job's count across orgs", _memory_index_maintenance),
    Migration("memory metadata filters: a GIN index on metadata", _memory_metadata),
    Migration("hybrid retrieval: full-text index over knowledge chunks", _knowledge_full_text),
    Migration("knowledge documents record their chunking settings", _knowledge_chunking),
    Migration("people: global users, org memberships, invitations, sign-in sessions", _people),
    Migration("reembed: new embeddings staged beside the items until the org switches", _memory_staged_embeddings),
    Migration("run events partitioned by week; functions to create and drop partitions", _partitioned_events),
    Migration("runner calls record when the worker sent them", _runner_calls_sent),
    Migration("people: email verification tokens beside password reset tokens", _email_verification),
    Migration("an event batch can roll back its transaction when its session is gone", _session_gone),
    Migration("the watchdog sends again an export whose message was lost", _exports_watchdog),
    Migration("an export's worker beats; the watchdog sends again one whose worker stopped", _exports_heartbeat),
)


def setup_checkpoints(conninfo: str) -> None:
    """Create or upgrade LangGraph's checkpoint tables (the library versions its own schema).

    Imported lazily: only `agentos migrate` and the test fixtures need langgraph here, never the API.
    """
    from langgraph.checkpoint.postgres import PostgresSaver

    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as conn:
        PostgresSaver(conn).setup()  # type: ignore[arg-type]


PARTITIONS_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relispartition AND c.relkind IN ('r', 'p') ORDER BY 1
"""


def ensure_app_role(conn: psycopg.Connection, role: str) -> None:
    """Create the application role (no login, no superuser, no BYPASSRLS) and let the
    current login switch to it; grant it DML on every table but the version table, and only
    SELECT and INSERT on the audit log."""
    ident = sql.Identifier(role)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS").format(ident))
    member = conn.execute(
        "SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)
    ).fetchone()
    if not (member and member[0]):
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
    conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(
            ident
        )
    )
    conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))
    conn.execute(sql.SQL("REVOKE ALL ON agentos_schema_migrations FROM {}").format(ident))
    # The audit log is append-only for the application: what happened stays as it was written.
    # (Deleting an org still removes its rows: the cascade runs as the table owner.)
    conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON audit_logs FROM {}").format(ident))
    # ...except through retention's bounded function (core.retention), when it exists; the event
    # log's partitions are created and dropped only through the owner's functions too.
    for function in ("agentos_prune_audit(timestamptz, integer)", "agentos_create_event_partitions(integer)",
                     "agentos_drop_event_partition(integer, text)"):
        if conn.execute("SELECT to_regprocedure(%s)", (function,)).fetchone() not in (None, (None,)):
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(function), ident))
    # A partition is reached through its partitioned table, whose policies apply there; read
    # directly it would show every org's rows to whoever may read it (core.db checks none can).
    for (partition,) in conn.execute(PARTITIONS_SQL).fetchall():
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(partition), ident))


def migrate(
    conninfo: str, app_role: str, *, log: Callable[[str], None] = lambda _: None, target: int | None = None
) -> int:
    """Apply missing migrations (up to version `target`, default all); return how many were applied."""
    applied = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            conn.execute(CREATE_VERSION_TABLE_SQL)
            row = conn.execute("SELECT coalesce(max(version), 0) FROM agentos_schema_migrations").fetchone()
            current = int(row[0]) if row else 0
            for version, migration in enumerate(MIGRATIONS, start=1):
                if version <= current or (target is not None and version > target):
                    continue
                log(f"applying migration {version}: {migration.name}")
                with conn.transaction():
                    migration.apply(conn)
                    conn.execute(
                        "INSERT INTO agentos_schema_migrations (version, name) VALUES (%s, %s)",
                        (version, migration.name),
                    )
                applied += 1
            setup_checkpoints(conninfo)
            with conn.transaction():
                ensure_app_role(conn, app_role)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied


def current_version(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('agentos_schema_migrations')").fetchone()
        if not exists or exists[0] is None:
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM agentos_schema_migrations").fetchone()
        return int(row[0]) if row else 0
