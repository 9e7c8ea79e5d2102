"""Settings, read from `AGENTOS_*` environment variables and built only in entry points.

Nested groups use a double underscore: `AGENTOS_DATABASE__URL`, `AGENTOS_AUTH__JWT_SECRET`.
The two most common ones also have flat aliases (`AGENTOS_DATABASE_URL`, `AGENTOS_REDIS_URL`).
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that ship in this file. Outside development they are refused.
DEV_JWT_SECRET = "agentos-dev-jwt-secret-change-me-0123456789"
DEV_PLATFORM_ADMIN_TOKEN = "agentos-dev-admin-token"
# The development key-encryption key of org secrets (32 bytes, base64). Refused in production.
DEV_SECRETS_KEK = base64.b64encode(b"agentos-dev-secrets-kek-32bytes!").decode()


class DatabaseSettings(BaseModel):
    url: str = "postgresql://postgres@127.0.0.1:5432/agentos"
    # Role that every pooled connection switches to (`SET ROLE`): not owner, not superuser,
    # not BYPASSRLS, so row-level security applies to everything the application does.
    app_role: str = "agentos_app"
    pool_min: int = Field(default=1, ge=0)
    pool_max: int = Field(default=10, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    statement_timeout_ms: int = Field(default=15_000, ge=0)


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout_s: float = Field(default=5.0, gt=0)
    # Connections a process's shared client may hold; a burst past it waits (up to the socket
    # timeout) for a free one instead of failing with "Too many connections".
    max_connections: int = Field(default=64, ge=2, le=10_000)


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
    health_file: str = "/tmp/agentos-worker-health.json"
    probe_interval_s: float = Field(default=2.0, gt=0)
    stall_after_s: float = Field(default=15.0, gt=0)


class EventSettings(BaseModel):
    """The live event bus (Redis Streams) and SSE delivery."""

    # Redis keeps about this many recent events per session; older ones are served from Postgres.
    stream_maxlen: int = Field(default=10_000, ge=100)
    stream_ttl_s: int = Field(default=86_400, ge=60)
    keepalive_s: float = Field(default=15.0, gt=0)
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


class SandboxLimits(BaseModel):
    """Resource limits of one execution (a request may lower or raise each, up to the ceiling)."""

    wall_s: float = Field(default=10.0, gt=0)
    cpu_s: int = Field(default=10, ge=1)
    memory_mb: int = Field(default=512, ge=16)  # address space (RLIMIT_AS)
    pids: int = Field(default=64, ge=4)  # processes of the sandbox uid (RLIMIT_NPROC)
    output_bytes: int = Field(default=65_536, ge=256)  # each of stdout and stderr
    disk_mb: int = Field(default=64, ge=1)  # the workdir tmpfs


class SandboxSettings(BaseModel):
    """The sandbox service (`agentos sandbox`) and how workers reach it (docs/sandbox.md)."""

    # bwrap (bubblewrap, default) or gvisor (runsc); checked when the service starts.
    backend: Literal["bwrap", "gvisor"] = "bwrap"
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
    are refused unless allowed; `deny` wins over everything."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # The whole request, from connecting to the last byte read.
    timeout_s: float = Field(default=20.0, gt=0)
    max_response_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_redirects: int = Field(default=5, ge=0, le=20)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    user_agent: str = "AgentOS/0.1"


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENTOS_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    env: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    models: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    events: EventSettings = EventSettings()
    limits: LimitSettings = LimitSettings()
    memory: MemorySettings = MemorySettings()
    sandbox: SandboxSettings = SandboxSettings()
    secrets: SecretsSettings = SecretsSettings()
    outbound: OutboundSettings = OutboundSettings()
    web: WebSettings = WebSettings()
    mcp: McpSettings = McpSettings()
    webhooks: WebhookSettings = WebhookSettings()
    files: FileSettings = FileSettings()

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        secret = self.auth.jwt_secret
        if secret is not None and secret.get_secret_value() == DEV_JWT_SECRET:
            problems.append("AGENTOS_AUTH__JWT_SECRET is the development default")
        if secret is not None and len(secret.get_secret_value()) < 32:
            problems.append("AGENTOS_AUTH__JWT_SECRET must be at least 32 characters")
        admin = self.auth.platform_admin_token
        if admin is not None and admin.get_secret_value() == DEV_PLATFORM_ADMIN_TOKEN:
            problems.append("AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN is the development default")
        if any(key.get_secret_value() == DEV_SECRETS_KEK for key in self.secrets.keys.values()):
            problems.append("AGENTOS_SECRETS__KEYS holds the development key-encryption key (set your own "
                            "32 random bytes in base64, see docs/operations.md, Org secrets)")
        if problems:
            raise ValueError(
                "refusing to start in production with default secrets: "
                + "; ".join(problems)
                + " (set your own, or set the HS256 secret / admin token empty to disable it, e.g. "
                "AGENTOS_AUTH__JWT_SECRET=)"
            )
        return self


class SandboxServiceSettings(BaseSettings):
    """All that `agentos sandbox` reads: it holds no database, Redis, auth or provider settings,
    so a sandbox-only host needs (and is checked for) nothing else."""

    model_config = SettingsConfigDict(env_prefix="AGENTOS_", env_nested_delimiter="__", extra="ignore", frozen=True)

    log_level: str = "INFO"
    sandbox: SandboxSettings = SandboxSettings()


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
