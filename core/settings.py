"""Settings, read from `AGENTOS_*` environment variables and built only in entry points.

Nested groups use a double underscore: `AGENTOS_DATABASE__URL`, `AGENTOS_AUTH__JWT_SECRET`.
The two most common ones also have flat aliases (`AGENTOS_DATABASE_URL`, `AGENTOS_REDIS_URL`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from decimal import Decimal
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that ship in this file. Outside development they are refused.
DEV_JWT_SECRET = "agentos-dev-jwt-secret-change-me-0123456789"
DEV_PLATFORM_ADMIN_TOKEN = "agentos-dev-admin-token"
# The development key-encryption key of org secrets (32 bytes, base64). Refused in production.
DEV_SECRETS_KEK = base64.b64encode(b"agentos-dev-secrets-kek-32bytes!").decode()
# A CORS origin pattern (`ApiSettings.cors_origins`): no path, no trailing slash.
ORIGIN_PATTERN = re.compile(r"https?://((\*\.)?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:([0-9]{1,5}|\*))?")


class DatabaseSettings(BaseModel):
    url: str = "postgresql://postgres@127.0.0.1:5432/agentos"
    # Role that every pooled connection switches to (`SET ROLE`): not owner, not superuser,
    # not BYPASSRLS, so row-level security applies to everything the application does.
    app_role: str = "agentos_app"
    pool_min: int = Field(default=1, ge=0)
    pool_max: int = Field(default=10, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    statement_timeout_ms: int = Field(default=15_000, ge=0)
    # In production a Postgres on another host must be reached over TLS (`sslmode=require`,
    # `verify-ca` or `verify-full`). False only on a private network you trust (a compose network,
    # Fly's private network): the start-up check then lets plaintext through.
    require_tls: bool = True

    @model_validator(mode="after")
    def _pool_bounds(self) -> DatabaseSettings:
        if self.pool_min > self.pool_max:
            raise ValueError(f"AGENTOS_DATABASE__POOL_MIN ({self.pool_min}) is above AGENTOS_DATABASE__POOL_MAX "
                             f"({self.pool_max})")
        return self


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout_s: float = Field(default=5.0, gt=0)
    # Connections a process's shared client may hold; a burst past it waits (up to the socket
    # timeout) for a free one instead of failing with "Too many connections".
    max_connections: int = Field(default=64, ge=2, le=10_000)
    # In production a Redis on another host must be reached over TLS (`rediss://`); see
    # DatabaseSettings.require_tls.
    require_tls: bool = True

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme in ("sentinel", "redis+sentinel", "rediss+sentinel"):
            raise ValueError("Redis Sentinel URLs are not supported; use the endpoint that always names the primary "
                             "(a managed Redis's primary endpoint, or a proxy in front of Sentinel), as redis:// or "
                             "rediss://")
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"the Redis URL must start with redis://, rediss:// or unix://, not {scheme or url!r}://")
        return url


class AuthSettings(BaseModel):
    # HS256 secret and platform admin token. Unset: the development values (refused in
    # production). Set to the empty string (`AGENTOS_AUTH__JWT_SECRET=`): disabled.
    jwt_secret: SecretStr | None = SecretStr(DEV_JWT_SECRET)
    jwt_public_key: str | None = None  # PEM, for RS256
    jwks_url: str | None = None  # for RS256 keys published by an identity provider
    jwt_audience: str = "agentos"
    jwt_issuer: str | None = None
    jwt_leeway_s: int = Field(default=30, ge=0)
    platform_admin_token: SecretStr | None = SecretStr(DEV_PLATFORM_ADMIN_TOKEN)
    # How long an API process trusts an API key it verified (core.auth_cache); revocations and
    # role changes reach every process over Redis at once. 0: look every key up on every request.
    key_cache_s: float = Field(default=5.0, ge=0, le=60)

    @field_validator("jwt_secret", "platform_admin_token", mode="before")
    @classmethod
    def _empty_disables(cls, value: object, info: ValidationInfo) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            return value
        if not text.strip():
            return None  # the one way to disable it: an empty value
        if text.strip().lower() in ("null", "none"):
            # An environment variable cannot be null; this would become the secret "null".
            env = f"AGENTOS_AUTH__{(info.field_name or '').upper()}"
            raise ValueError(f"{env}={text!r} is not a secret; to disable it, set it empty ({env}=)")
        return value


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # How deep a request body's arrays and objects may nest (the body itself is level 1). Stored
    # values come back inside list envelopes, and orjson renders at most 254 levels: keep it low.
    max_json_depth: int = Field(default=32, ge=2, le=128)
    public_url: str | None = None
    # Browser origins allowed to call the API (CORS), as JSON:
    # `AGENTOS_API__CORS_ORIGINS='["https://app.example.com", "http://localhost:*"]'`. An entry is
    # `scheme://host[:port]`, where the port may be `*` (any) and the host may start with `*.`
    # (any subdomain); `*` alone allows every origin. Empty (the default): no CORS headers, so
    # browsers refuse cross-origin calls. `agentos dev` allows http://localhost:* and 127.0.0.1:*.
    cors_origins: list[str] = Field(default_factory=list)
    # How long a stream token (`POST /v1/stream-tokens`) opens its SSE stream.
    stream_token_ttl_s: int = Field(default=300, ge=5, le=3600)
    # Serve the web console (a static page calling this API) at /console.
    console: bool = True
    # A trace UI the console's run page links to, with `{trace_id}` where the id goes, e.g.
    # `http://127.0.0.1:16686/trace/{trace_id}` (Jaeger). Unset: the id is shown as text.
    console_trace_url: str | None = None

    @field_validator("cors_origins")
    @classmethod
    def _origin_patterns(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not ORIGIN_PATTERN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: use scheme://host[:port], e.g. "
                                 "https://app.example.com, http://localhost:* (any port) or https://*.example.com "
                                 "(any subdomain)")
        return [origin.lower() for origin in origins]


class ModelSettings(BaseModel):
    """Provider credentials and call policy for `openai:` and `anthropic:` model specs."""

    openai_api_key: SecretStr | None = None
    # Any OpenAI-compatible server (vLLM, Ollama, llama.cpp): e.g. http://127.0.0.1:11434/v1
    openai_base_url: str | None = None
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    # How long `GET /v1/providers/{id}/models` keeps a provider's model list (Redis).
    provider_models_ttl_s: float = Field(default=300.0, gt=0)
    # The longest Retry-After a rate-limited call waits for before its next attempt; beyond it the
    # call counts as failed (and the agent's fallback model, if any, takes over).
    max_retry_after_s: float = Field(default=30.0, ge=0)


class WorkerSettings(BaseModel):
    """How workers execute runs."""

    concurrency: int = Field(default=2, ge=1, le=256)
    # The queues a worker consumes: `agentos.runs` (runs, documents) and/or `agentos.webhooks`
    # (deliveries). Separate workers for each keep a slow webhook receiver from delaying runs.
    queues: list[str] = Field(default_factory=lambda: ["agentos.runs"], min_length=1)
    # A claimed run's lease; a heartbeat renews it every `heartbeat_s` while the run executes.
    # A dead worker's run is taken over once its lease lapses, so keep it short (seconds).
    lease_s: float = Field(default=10.0, gt=0)
    heartbeat_s: float = Field(default=2.0, gt=0)
    # When the broker re-delivers a task whose worker host vanished without a word. The lease,
    # not this, protects against double execution; the watchdog usually acts long before.
    visibility_timeout_s: int = Field(default=3600, ge=1)
    # Per-session file workspaces for `file_manager` live under this directory.
    workspace_root: str = ".agentos/workspaces"
    # How deep sub-agents may delegate to further sub-agents.
    max_delegation_depth: int = Field(default=3, ge=1, le=10)
    # How often a running run checks its cancel flag (seconds).
    cancel_poll_s: float = Field(default=0.1, gt=0)
    # A run whose worker stopped this many times (its lease lapsed on every attempt) is failed
    # by the watchdog with ATTEMPTS_EXHAUSTED instead of being handed to another worker.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # How often `agentos watchdog` sweeps, and how long a queued run may wait for its worker
    # message before the watchdog sends another (the message may have been lost).
    watchdog_interval_s: float = Field(default=5.0, gt=0)
    requeue_after_s: float = Field(default=30.0, gt=0)
    # Liveness (runtime/liveness.py): every `probe_interval_s` the worker sends itself a probe
    # through the broker and writes `health_file`; a worker with a free slot whose probe waited
    # `stall_after_s` reconnects its consumer, and `agentos worker --check` fails after twice that.
    # Postgres connections each worker process (each prefork child) may hold for runs; LangGraph's
    # checkpoints take 2 more. Size: (API processes x DATABASE__POOL_MAX) + (worker processes x
    # concurrency x (POOL_MAX + 2)) + watchdogs must stay below the server's max_connections.
    pool_max: int = Field(default=4, ge=1, le=100)
    health_file: str = "/tmp/agentos-worker-health.json"
    # At SIGTERM a worker stops taking runs and gives the ones it executes this long to finish;
    # then it releases them to other workers (they resume from their last checkpoint). Keep it
    # below the platform's kill timeout (Fly `kill_timeout`, ECS `stopTimeout`, Kubernetes
    # `terminationGracePeriodSeconds`), leaving a few seconds for the release itself.
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    probe_interval_s: float = Field(default=2.0, gt=0)
    stall_after_s: float = Field(default=15.0, gt=0)
    # The event loop a worker process runs its runs on (runtime/services.py): `uvloop` (installed
    # with the project on Linux and macOS; about a fifth less CPU per run, docs/benchmarks.md),
    # or Python's own `asyncio` loop. `auto`: uvloop where it can be imported.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class EventSettings(BaseModel):
    """The live event bus (Redis Streams) and SSE delivery."""

    # Redis keeps about this many recent events per session; older ones are served from Postgres.
    stream_maxlen: int = Field(default=10_000, ge=100)
    stream_ttl_s: int = Field(default=86_400, ge=60)
    keepalive_s: float = Field(default=15.0, gt=0)
    # Followed sessions per blocking XREAD of an API process's event hub: each event delivered
    # waits for one read naming this many keys (core/event_hub.py).
    keys_per_read: int = Field(default=1000, ge=1)
    # The longest a client may hold `GET /v1/runs/{id}/wait`.
    max_wait_s: float = Field(default=300.0, gt=0)


class LimitSettings(BaseModel):
    """Admission control, per org: these are the defaults; an org may override each of them
    (`orgs.limits`, set with `PATCH /v1/orgs/{id}`)."""

    # Authenticated API requests: a token bucket refilled at this rate...
    requests_per_minute: int = Field(default=1200, ge=1)
    # ...holding at most this many tokens (the burst a client may send at once); None: the
    # per-minute figure.
    burst: int | None = Field(default=None, ge=1)
    # Runs that are queued, running or awaiting confirmation at the same time.
    max_active_runs: int = Field(default=50, ge=1)
    # An entry of the active-run set older than this is dropped (self-healing after a lost
    # release); keep it at least the longest run timeout.
    active_run_ttl_s: int = Field(default=86_400, ge=60)
    # How long an API process trusts an org's limits before reading them again.
    cache_s: float = Field(default=5.0, ge=0)
    # Budgets (core.budgets), per UTC calendar month and day; None: unlimited. A run that would
    # start over one is refused (429 QUOTA_EXCEEDED); one that crosses a monthly budget ends at its
    # next step (run.failed BUDGET_EXCEEDED).
    monthly_tokens: int | None = Field(default=None, ge=1)
    monthly_cost_usd: Decimal | None = Field(default=None, gt=0)
    max_runs_per_day: int | None = Field(default=None, ge=1)


class ModelPrice(BaseModel):
    """A model's price in US dollars per million tokens. Cached input tokens cost
    `cached_input` (the input price when unset)."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)


def _default_prices() -> dict[str, ModelPrice]:
    # List prices when this table was written (USD per million tokens); operators replace the
    # whole table with AGENTOS_USAGE__PRICES. `provider:*` prices every model of a provider that
    # has no entry of its own.
    table = {
        "offline:*": (0, 0, None),
        "openai:gpt-4o": (2.5, 10, 1.25),
        "openai:gpt-4o-mini": (0.15, 0.6, 0.075),
        "openai:gpt-4.1": (2, 8, 0.5),
        "openai:gpt-4.1-mini": (0.4, 1.6, 0.1),
        "anthropic:claude-sonnet-4-5": (3, 15, 0.3),
        "anthropic:claude-haiku-4-5": (1, 5, 0.1),
        "anthropic:claude-opus-4-1": (15, 75, 1.5),
    }
    return {model: ModelPrice(input=Decimal(str(i)), output=Decimal(str(o)),
                              cached_input=None if c is None else Decimal(str(c)))
            for model, (i, o, c) in table.items()}


class UsageSettings(BaseModel):
    """Usage metering (core.metering): the price table a model call's cost comes from, by model
    spec, e.g. `AGENTOS_USAGE__PRICES='{"openai:gpt-4o-mini": {"input": 0.15, "output": 0.6}}'`
    (replaces the default table). A model with no price costs 0 (logged once per process)."""

    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)
    # A budget warning (event `budget.warning` on the run, `warning` in GET /v1/usage) from this share.
    warn_at: float = Field(default=0.8, gt=0, le=1)


class MemorySettings(BaseModel):
    """Long-term memory and embeddings."""

    # `offline:hash` (deterministic, dependency-free, for trying things out) or `openai:<model>`
    # (key and base URL from `models`).
    embedding_model: str = "offline:hash"
    # The dimension to ask an `openai:` model for; None: the model's own (read from the first reply).
    embedding_dims: int | None = Field(default=None, ge=1, le=16_000)
    # A memory longer than this is refused with 413.
    max_content_chars: int = Field(default=8000, ge=1)
    # How many results a search returns by default.
    search_limit: int = Field(default=10, ge=1, le=200)
    # Short-term memory: how long a session's window and a run's scratch state stay in Redis
    # (a cache: a miss rebuilds the window from Postgres).
    short_term_ttl_s: int = Field(default=86_400, ge=60)
    # Recall at each run's first THINK: at most `recall_k` long-term items scoring at least
    # `recall_min_score` (cosine similarity) are given to the model.
    recall_k: int = Field(default=5, ge=0, le=50)
    recall_min_score: float = Field(default=0.15, ge=-1.0, le=1.0)
    # Knowledge base: a document larger than this (UTF-8 bytes) is refused with 413.
    max_document_bytes: int = Field(default=1_048_576, ge=1)
    # Chunks are packed up to about `chunk_chars`; a split inside a paragraph repeats the last
    # `chunk_overlap_chars` of the previous piece.
    chunk_chars: int = Field(default=1200, ge=100, le=100_000)
    chunk_overlap_chars: int = Field(default=150, ge=0, le=10_000)
    # Ingestion whose embedding fails is retried with exponential backoff (base * 2^(n-1), at
    # most `ingest_retry_max_s`) until it has been tried `ingest_max_attempts` times; then failed.
    ingest_max_attempts: int = Field(default=5, ge=1, le=100)
    ingest_retry_base_s: float = Field(default=2.0, ge=0)
    ingest_retry_max_s: float = Field(default=300.0, ge=0)
    # Per-org vector indexes (memory/index_maintenance.py, a maintenance job): an org gets its own
    # partial HNSW index once it holds `index_create_rows` items of the model, before search
    # switches from exact to HNSW at 10,000 (memory.long_term.EXACT_SCAN_MAX_ROWS); the index is
    # dropped only when the org falls below `index_drop_rows` (the gap is the hysteresis, so an
    # org hovering at the line is not rebuilt again and again).
    index_create_rows: int = Field(default=8_000, ge=1)
    index_drop_rows: int = Field(default=4_000, ge=0)
    # How often the job looks (seconds), how many builds run at once, and each build's memory and
    # parallel workers: bounded so that a build cannot starve the database's live traffic.
    index_interval_s: float = Field(default=300.0, ge=0)
    index_build_concurrency: int = Field(default=1, ge=1, le=16)
    index_maintenance_work_mem_mb: int = Field(default=256, ge=64, le=1_048_576)
    index_build_workers: int = Field(default=0, ge=0, le=64)

    @model_validator(mode="after")
    def _index_hysteresis(self) -> MemorySettings:
        if self.index_drop_rows >= self.index_create_rows:
            raise ValueError(f"AGENTOS_MEMORY__INDEX_DROP_ROWS ({self.index_drop_rows}) must be below "
                             f"AGENTOS_MEMORY__INDEX_CREATE_ROWS ({self.index_create_rows})")
        return self


class SandboxLimits(BaseModel):
    """Resource limits of one execution (a request may lower or raise each, up to the ceiling)."""

    wall_s: float = Field(default=10.0, gt=0)
    cpu_s: int = Field(default=10, ge=1)
    memory_mb: int = Field(default=512, ge=16)  # address space (RLIMIT_AS)
    pids: int = Field(default=64, ge=4)  # processes of the sandbox uid (RLIMIT_NPROC)
    output_bytes: int = Field(default=65_536, ge=256)  # each of stdout and stderr
    disk_mb: int = Field(default=64, ge=1)  # the workdir tmpfs


class E2BSettings(BaseModel):
    """The `e2b` hosted backend: a fresh E2B sandbox per execution, over E2B's HTTP APIs."""

    # The control-plane API (`POST /sandboxes`, `DELETE /sandboxes/{id}`).
    api_url: str = "https://api.e2b.app"
    api_key: SecretStr | None = None
    # The template each sandbox starts from; it needs bash, tar, coreutils' timeout and python3.
    template: str = "base"
    # envd, the agent inside each sandbox (files, processes). None: `https://sandbox.<domain>`
    # with the domain the API answers, the sandbox named by the E2b-Sandbox-Id header.
    sandbox_url: str | None = None
    # Each HTTP call but the running process (which has the execution's wall limit).
    request_timeout_s: float = Field(default=30.0, gt=0)


class ModalSettings(BaseModel):
    """The `modal` hosted backend: a fresh `modal.Sandbox` per execution (pip extra `modal`;
    credentials are Modal's own: MODAL_TOKEN_ID / MODAL_TOKEN_SECRET or ~/.modal.toml)."""

    app_name: str = "agentos-sandbox"
    # The image: Modal's Debian slim with this Python.
    python_version: str = "3.12"
    # Where each execution's files live inside its sandbox.
    workdir: str = "/tmp/agentos"
    # CPU cores (request and hard limit).
    cpu: float = Field(default=1.0, gt=0)


class SandboxSettings(BaseModel):
    """The sandbox service (`agentos sandbox`) and how workers reach it (docs/sandbox.md)."""

    # bwrap (bubblewrap, default), gvisor (runsc), or a hosted one: e2b, modal; checked when the service starts.
    backend: Literal["bwrap", "gvisor", "e2b", "modal"] = "bwrap"
    e2b: E2BSettings = E2BSettings()
    modal: ModalSettings = ModalSettings()
    # Where workers send `POST /execute`; None: code_executor answers that no sandbox is configured.
    url: str | None = None
    # Shared by the service and its callers (Bearer). The service refuses to start without one.
    token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8300, ge=0, le=65535)
    # The unprivileged uid/gid that sandboxed code runs as (the service itself runs as root).
    uid: int = Field(default=65534, ge=1)
    gid: int = Field(default=65534, ge=1)
    # The interpreter inside the sandbox: must be readable by `uid` (not under /root or a home).
    python: str = "/usr/bin/python3"
    # A prepared virtualenv, mounted read-only at the same path inside the sandbox; its python
    # then runs Python code. How an operator adds packages. None: the system python only.
    venv: str | None = None
    # Executions the service runs at once (more wait); keep at most the cores you give it.
    max_concurrent: int = Field(default=4, ge=1, le=256)
    defaults: SandboxLimits = SandboxLimits()
    ceilings: SandboxLimits = SandboxLimits(wall_s=60.0, cpu_s=60, memory_mb=2048, pids=256,
                                            output_bytes=1_048_576, disk_mb=512)
    # Per-org quotas, enforced by the caller (the worker) in Redis.
    org_max_concurrent: int = Field(default=4, ge=1)
    org_cpu_s_per_day: int = Field(default=3600, ge=1)
    # How long the skill waits for the service beyond the wall limit before giving up.
    request_slack_s: float = Field(default=15.0, gt=0)
    # Service-side workspaces (a request's `workspace`): where they live (None: a fresh directory
    # under the system temp dir, removed when the service stops) and how long an unused one is kept.
    workspaces_dir: str | None = None
    workspace_ttl_s: int = Field(default=86_400, ge=60)
    # How code_executor gives code the session's files: `copy` (send them, apply changes back) or
    # `service` (the session's workspace lives in the service; only newer local files are sent).
    workspace_mode: Literal["copy", "service"] = "copy"


class SecretsSettings(BaseModel):
    """Key-encryption keys (KEKs) of org secrets (`core.secrets`), by version.

    Each value is 32 random bytes in base64 (`python -c "import os,base64;print(base64.b64encode(
    os.urandom(32)).decode())"`). New secrets are sealed under `active_key_version`; older
    versions stay listed until `agentos secrets rotate` has rewrapped every data key, e.g.
    `AGENTOS_SECRETS__KEYS='{"1": "...", "2": "..."}' AGENTOS_SECRETS__ACTIVE_KEY_VERSION=2`."""

    keys: dict[int, SecretStr] = Field(default_factory=lambda: {1: SecretStr(DEV_SECRETS_KEK)})
    active_key_version: int = Field(default=1, ge=1)
    # The longest value `PUT /v1/secrets/{name}` accepts (characters).
    max_value_chars: int = Field(default=16_384, ge=1, le=1_048_576)

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: dict[int, SecretStr]) -> dict[int, SecretStr]:
        for version, key in keys.items():
            if version < 1:
                raise ValueError(f"key version {version} must be 1 or more")
            try:
                raw = base64.b64decode(key.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"key version {version} is not base64") from None
            if len(raw) != 32:
                raise ValueError(f"key version {version} must be 32 bytes (AES-256), not {len(raw)}")
        return keys

    @model_validator(mode="after")
    def _active_is_configured(self) -> SecretsSettings:
        if self.active_key_version not in self.keys:
            raise ValueError(f"active_key_version {self.active_key_version} is not among the configured keys "
                             f"{sorted(self.keys)}")
        return self


class OutboundSettings(BaseModel):
    """Every outbound HTTP request of skills and providers (`core.outbound`): the SSRF guard's
    operator lists, timeouts and size limits.

    `allow` and `deny` hold host names (`searx.internal`, `*.corp.example`) and addresses or CIDRs
    (`10.1.2.3`, `10.0.0.0/8`, `fd00::/8`), as JSON: `AGENTOS_OUTBOUND__ALLOW='["10.0.0.0/8"]'`.
    Loopback, private, link-local, multicast, unspecified, reserved and cloud metadata addresses
    are refused unless allowed; `deny` wins over everything, and `deny=["*"]` refuses every
    outbound request before any name is resolved."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # The whole request, from connecting to the last byte read.
    timeout_s: float = Field(default=20.0, gt=0)
    max_response_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_redirects: int = Field(default=5, ge=0, le=20)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    user_agent: str = "AgentOS/0.1"


class PeopleSettings(BaseModel):
    """Users, invitations and sign-in (`AGENTOS_PEOPLE__*`; docs/operations.md, "People")."""

    access_token_ttl_s: int = Field(default=900, ge=60, le=86_400)
    session_ttl_s: int = Field(default=30 * 86_400, ge=3600)  # how long a refresh token chain lives
    invitation_ttl_s: int = Field(default=7 * 86_400, ge=300)
    reset_ttl_s: int = Field(default=3600, ge=300, le=86_400)
    password_min_length: int = Field(default=12, ge=8, le=128)
    # Failed sign-ins: after `lockout_after` failures for one account, each further failure locks
    # it for twice as long as the last (1 s, 2 s, 4 s … up to `lockout_max_s`); one IP may fail
    # `ip_failures_per_window` times per `failure_window_s`.
    lockout_after: int = Field(default=5, ge=1)
    lockout_max_s: int = Field(default=900, ge=1)
    ip_failures_per_window: int = Field(default=50, ge=1)
    failure_window_s: int = Field(default=900, ge=60)
    # Open self-registration (POST /v1/auth/register): off, people join by invitation only. On,
    # anyone may make an account and an org of their own, `signups_per_ip` per window per IP.
    open_signup: bool = False
    signups_per_ip: int = Field(default=10, ge=1)
    verify_ttl_s: int = Field(default=3 * 86_400, ge=300)
    # The other doors without a credential, per window (`failure_window_s`): reset mails per email
    # and requests per IP; failed invitation acceptances per IP and attempts per token.
    reset_mails_per_email: int = Field(default=3, ge=1)
    reset_requests_per_ip: int = Field(default=20, ge=1)
    accept_failures_per_ip: int = Field(default=20, ge=1)
    accept_attempts_per_token: int = Field(default=10, ge=1)
    # The console's cookie session (docs/api.md, "Cookie sessions"): the cookies are `Secure`
    # unless `AGENTOS_ENV` is development or test; unset `cookie_secure` follows that rule.
    cookie_secure: bool | None = None
    # How invitation and reset links are sent: "log" (development: the dev mailer writes the link
    # to the log; refused in production), "smtp", or "none". Unset: "log", or "none" in production.
    mailer: Literal["log", "smtp", "none"] | None = None
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    smtp_from: str = "AgentOS <no-reply@localhost>"
    # Sign-in with an identity provider (OIDC: any standards-compliant issuer, found by discovery;
    # GitHub OAuth). Each is on when its client id is set. `oauth_redirect_url` is the page the
    # provider sends the browser back to (the console's, which POSTs the code and state to
    # /v1/auth/{provider}/callback); `{provider}` is filled in.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid email profile"
    github_client_id: str | None = None
    github_client_secret: SecretStr | None = None
    github_authorize_url: str = "https://github.com/login/oauth/authorize"
    github_token_url: str = "https://github.com/login/oauth/access_token"
    github_api_url: str = "https://api.github.com"
    oauth_redirect_url: str = "http://localhost:3000/auth/{provider}/callback"
    oauth_state_ttl_s: int = Field(default=600, ge=60, le=3600)
    # Where links in mails point (the console's accept and reset pages); `{token}` is filled in.
    invitation_url: str = "http://localhost:3000/invitations/accept?token={token}"
    reset_url: str = "http://localhost:3000/password-reset?token={token}"
    verify_url: str = "http://localhost:3000/verify-email?token={token}"


class WebhookSettings(BaseModel):
    """Signed webhook deliveries (docs/integrations.md): how long one attempt may take, how
    retries back off, when a delivery is given up and a failing webhook disabled."""

    timeout_s: float = Field(default=10.0, gt=0)  # one attempt, connect to last byte
    max_response_bytes: int = Field(default=65_536, ge=1024)  # a receiver's answer read at most
    retry_base_s: float = Field(default=5.0, gt=0)  # the first retry's wait, doubling per attempt ...
    retry_max_s: float = Field(default=3600.0, gt=0)  # ... up to this
    max_age_s: float = Field(default=86_400.0, gt=0)  # after this long since the event, a delivery is given up
    # A webhook none of whose attempts succeeded for this long is disabled (with an audit entry).
    disable_after_days: float = Field(default=5.0, gt=0)
    # After `rotate-secret` the previous secret still signs (a second signature) for this long.
    rotation_grace_s: float = Field(default=86_400.0, ge=0)
    # Waits up to this long are a countdown on the delivery's own message; longer ones, and
    # messages lost with the broker, are sent again by the watchdog once due.
    max_countdown_s: float = Field(default=300.0, ge=0)
    requeue_after_s: float = Field(default=30.0, gt=0)
    max_per_org: int = Field(default=50, ge=1)


class FileSettings(BaseModel):
    """Uploaded files (docs/integrations.md, "Files"): limits and where their bytes are kept."""

    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)  # one file; over it: 413, nothing stored
    org_quota_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)  # every file of an org together
    backend: Literal["local", "s3"] = "local"
    data_dir: str = ".agentos/files"  # the local backend's root
    # The S3-compatible backend (AWS S3, MinIO, Ceph, ...): objects `<prefix><org>/<file id>`.
    s3_bucket: str = "agentos-files"
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None


class WebSettings(BaseModel):
    """The `web_search` and `web_fetch` skills."""

    # `offline:` (deterministic fixture results), `searxng:<base URL>` (a SearXNG instance with
    # the JSON format enabled), `brave:` or `tavily:` (their APIs; key below or the org secret).
    search_provider: str = "offline:"
    # The Brave or Tavily key for every org; an org may use its own instead: the org secret named
    # `search_api_key_secret`, when it exists, wins.
    search_api_key: SecretStr | None = None
    search_api_key_secret: str = "web_search_api_key"
    brave_url: str = "https://api.search.brave.com/res/v1/web/search"
    tavily_url: str = "https://api.tavily.com/search"
    search_timeout_s: float = Field(default=10.0, gt=0)
    # Retries of a provider answering 429 or 5xx (or not answering), with exponential backoff.
    search_retries: int = Field(default=2, ge=0, le=10)
    # Results are cached per org and query in Redis this long (0: no cache).
    search_cache_ttl_s: int = Field(default=3600, ge=0)
    # web_fetch: the readable text handed to the model is cut at this many characters.
    fetch_max_chars: int = Field(default=20_000, ge=100)


class StdioMcpServer(BaseModel):
    """An MCP server the operator runs as a local process (stdio) for every org."""

    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=20.0, gt=0, le=120)
    sensitive: bool = False


class McpSettings(BaseModel):
    """MCP servers for all orgs, configured by the operator only: stdio servers by name (no `_`),
    e.g. `AGENTOS_MCP__STDIO='{"clock": {"command": "uvx", "args": ["mcp-server-time"]}}'`. Their
    tools are the skills `mcp_<name>_<tool>` of every org. Tenants can register HTTP servers only."""

    stdio: dict[str, StdioMcpServer] = Field(default_factory=dict)


class TelemetrySettings(BaseModel):
    """Traces, metrics and logs (docs/operations.md, "Telemetry"). Tracing is off unless an OTLP
    endpoint is set here or in the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`."""

    # OTLP/HTTP endpoint (`http://collector:4318`; `/v1/traces` is appended unless the path ends
    # in it). The standard OTEL_* variables (headers, sampler, service name, ...) apply too.
    otlp_endpoint: str | None = None
    service_name: str = "agentos"
    # Message content (prompts, answers, tool arguments and results) never goes into spans
    # unless this is set; secrets never do.
    capture_content: bool = False
    # Postgres, Redis and outbound HTTP spans (the contrib instrumentations) inside run traces:
    # most of tracing's cost per run (docs/benchmarks.md, Tracing); false keeps ours only.
    library_spans: bool = True
    # `/metrics` on the API's port answers only with `Authorization: Bearer <token>`; unset: 404.
    metrics_token: SecretStr | None = None
    # A side port where a worker's parent process (or the watchdog) serves `/metrics` for all
    # its prefork children (multiprocess mode); unset: none.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Label metrics with the org id (cardinality grows with the number of orgs).
    metrics_org_label: bool = False
    # `json` (one JSON object per line) or `text` (human-readable; `agentos dev` uses it).
    log_format: Literal["json", "text"] = "json"


class ModalDispatchSettings(BaseModel):
    """Where runs go with `AGENTOS_DISPATCH=modal`: the functions of the Modal app deployed from
    infra/modal/app.py (docs/deploy.md, Modal)."""

    app_name: str = "agentos"
    environment: str | None = None  # Modal environment; None: the workspace's default


class MaintenanceSettings(BaseModel):
    """Periodic housekeeping jobs run by the watchdog (runtime/maintenance.py)."""

    enabled: bool = True


class RunnerSettings(BaseModel):
    """Remote runners (docs/runners.md): the link's heartbeat and how long calls wait for them."""

    # The API sends a heartbeat event this often on a runner's stream; the runner treats three
    # missed ones as a dead link, and the runner counts as offline once its presence expires.
    heartbeat_s: float = Field(default=5.0, gt=0, le=300)
    # A run whose runner is offline waits (paused, no worker held) this long, then the call fails.
    offline_timeout_s: float = Field(default=600.0, gt=0, le=7 * 86_400)
    # How long a worker waits for a connected runner's result (also bounded by the run's deadline).
    call_timeout_s: float = Field(default=300.0, gt=0, le=86_400)
    # A worker waiting for a call whose runner went offline (its link dropped, or its heartbeats
    # stopped) holds its slot this long, in case it comes straight back; then the run waits for it
    # like an approval, holding no worker.
    offline_grace_s: float = Field(default=5.0, ge=0, le=3600)


class LifecycleSettings(BaseModel):
    """Data lifecycle (docs/operations.md, "Data lifecycle"): org deletion, erasure, retention."""

    # How long a deleted org can still be restored (POST /v1/orgs/{id}/restore) before the purge
    # job removes its data for good.
    org_deletion_grace_s: int = Field(default=7 * 86400, ge=0)
    # How often the maintenance job looks for orgs whose grace period is over.
    purge_interval_s: float = Field(default=300.0, gt=0)
    # Rows per statement when a job removes data: small, so no statement holds locks for long.
    batch_rows: int = Field(default=1000, ge=1, le=100_000)
    # Retention (core.retention): the operator's defaults, in days (0: kept for ever); an org may
    # override each (PATCH /v1/orgs/{id} `retention`). Events and tool-call records count from
    # the end of their run.
    retention_interval_s: float = Field(default=3600.0, gt=0)
    events_days: int = Field(default=90, ge=0)
    tool_calls_days: int = Field(default=90, ge=0)
    messages_days: int = Field(default=0, ge=0)
    # Checkpoints of a session whose runs all ended this long ago are pruned to its final state
    # (`final_checkpoint: keep`, what its next run continues from) or removed (`drop`: the next
    # run starts without the graph's memory of the conversation). A run waiting for a human keeps
    # them all; a running one keeps the latest per namespace.
    checkpoints_days: int = Field(default=7, ge=0)
    final_checkpoint: Literal["keep", "drop"] = "keep"
    audit_days: int = Field(default=365, ge=0)
    # The event log's weekly partitions (core.event_partitions): the maintenance job keeps this
    # week's and this many more created ahead; retention drops a partition whole once every row
    # in it is past every org's events retention (false: rows are only ever deleted in batches).
    event_partitions_ahead_weeks: int = Field(default=4, ge=0, le=52)
    event_partitions_interval_s: float = Field(default=3600.0, gt=0)
    drop_event_partitions: bool = True
    # No org keeps its audit log for less (an override below it is raised to it); 0 = forever.
    audit_min_days: int = Field(default=365, ge=1)
    # How long an org export's download link works (a fresh one comes with each GET).
    export_link_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENTOS_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    env: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    # Who executes runs and ingestion: Celery workers on the Redis queue, or one Modal function
    # call per job (the same `execute_run`; needs `pip install 'agentos[modal]'`).
    dispatch: Literal["celery", "modal"] = "celery"
    modal: ModalDispatchSettings = ModalDispatchSettings()
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    models: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    events: EventSettings = EventSettings()
    limits: LimitSettings = LimitSettings()
    usage: UsageSettings = UsageSettings()
    memory: MemorySettings = MemorySettings()
    sandbox: SandboxSettings = SandboxSettings()
    secrets: SecretsSettings = SecretsSettings()
    outbound: OutboundSettings = OutboundSettings()
    web: WebSettings = WebSettings()
    mcp: McpSettings = McpSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    webhooks: WebhookSettings = WebhookSettings()
    files: FileSettings = FileSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    runners: RunnerSettings = RunnerSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    people: PeopleSettings = PeopleSettings()

    @model_validator(mode="after")
    def _production_ready(self) -> Settings:
        if self.env != "production":
            return self
        problems = production_problems(self)
        if problems:
            raise ValueError("refusing to start in production (AGENTOS_ENV=production):\n"
                             + "\n".join(f"  - {p}" for p in problems))
        return self


def production_problems(settings: Settings) -> list[str]:
    """Every reason `settings` are unfit for production, one sentence each, naming the variable
    and what to do: development secrets, and Postgres or Redis reached in plaintext."""
    problems = []
    if settings.people.mailer == "log":
        problems.append("AGENTOS_PEOPLE__MAILER=log writes invitation and reset links to the log: set it to smtp "
                        "(AGENTOS_PEOPLE__SMTP_*) or none")
    secret = settings.auth.jwt_secret
    if secret is not None and secret.get_secret_value() == DEV_JWT_SECRET:
        problems.append("AGENTOS_AUTH__JWT_SECRET is the development default: set your own, or set it empty to "
                        "disable HS256 (AGENTOS_AUTH__JWT_SECRET=)")
    elif secret is not None and len(secret.get_secret_value()) < 32:
        problems.append("AGENTOS_AUTH__JWT_SECRET must be at least 32 characters")
    admin = settings.auth.platform_admin_token
    if admin is not None and admin.get_secret_value() == DEV_PLATFORM_ADMIN_TOKEN:
        problems.append("AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN is the development default: set your own, or set it "
                        "empty to disable the org admin routes (AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN=)")
    if any(key.get_secret_value() == DEV_SECRETS_KEK for key in settings.secrets.keys.values()):
        problems.append("AGENTOS_SECRETS__KEYS holds the development key-encryption key (set your own "
                        "32 random bytes in base64, see docs/operations.md, Org secrets)")
    if settings.database.require_tls:
        problems += _postgres_tls_problems(settings.database.url)
    if settings.redis.require_tls:
        problems += _redis_tls_problems(settings.redis.url)
    return problems


TLS_SSLMODES = ("require", "verify-ca", "verify-full")


def _is_local(host: str) -> bool:
    """A Unix socket or a loopback address: traffic that never leaves the machine."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _postgres_tls_problems(url: str) -> list[str]:
    try:
        params = conninfo_to_dict(url)
    except Exception:  # psycopg says what is wrong when the pool connects; nothing to judge here
        return []
    hosts = [h for h in str(params.get("host") or "").split(",") if not _is_local(h)]
    mode = str(params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer")
    if hosts and mode not in TLS_SSLMODES:
        return [f"AGENTOS_DATABASE_URL reaches Postgres at {', '.join(hosts)} without TLS (sslmode={mode}): add "
                "?sslmode=verify-full (or require) to the URL, or set AGENTOS_DATABASE__REQUIRE_TLS=false if the "
                "network is private"]
    return []


def _redis_tls_problems(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "redis" and not _is_local(host):
        return [f"AGENTOS_REDIS_URL reaches Redis at {host} without TLS: use rediss://, or set "
                "AGENTOS_REDIS__REQUIRE_TLS=false if the network is private"]
    cert_reqs = [v.lower() for v in parse_qs(parts.query).get("ssl_cert_reqs", [])]
    if parts.scheme == "rediss" and any(v in ("none", "cert_none") for v in cert_reqs):
        return ["AGENTOS_REDIS_URL turns off the check of Redis's certificate (ssl_cert_reqs=none): drop it, or "
                "give ssl_ca_certs=<path> for a private CA"]
    return []


class SandboxServiceSettings(BaseSettings):
    """All that `agentos sandbox` reads: it holds no database, Redis, auth or provider settings,
    so a sandbox-only host needs (and is checked for) nothing else."""

    model_config = SettingsConfigDict(env_prefix="AGENTOS_", env_nested_delimiter="__", extra="ignore", frozen=True)

    log_level: str = "INFO"
    sandbox: SandboxSettings = SandboxSettings()
    telemetry: TelemetrySettings = TelemetrySettings()


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment; flat aliases fill in when nested keys are absent."""
    data: dict[str, object] = {}
    flat = {"AGENTOS_DATABASE_URL": "database", "AGENTOS_REDIS_URL": "redis"}
    for env_name, group in flat.items():
        nested = f"AGENTOS_{group.upper()}__URL"
        if os.environ.get(env_name) and not os.environ.get(nested):
            data[group] = {"url": os.environ[env_name]}
    data.update(overrides)
    return Settings(**data)  # type: ignore[arg-type]
