"""What an org's data source is (`PostgresSource`), shared by the API (registration) and the
`data_query` skill, and the check that a source is never the platform's own database."""

from __future__ import annotations

import ipaddress
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field

from core.skill_defs import SecretRef

SOURCE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# A table only an AgentOS platform database has: a source whose database holds it is refused,
# whatever host name or address its URL uses to reach it.
PLATFORM_MARKER_SQL = "SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'agentos_schema_migrations' LIMIT 1"


class PostgresSource(BaseModel):
    """A Postgres database of the org's, read in READ ONLY transactions."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["postgres"] = "postgres"
    url: SecretRef  # the connection URL, held as an org secret
    statement_timeout_ms: int = Field(default=5000, ge=100, le=60_000)
    max_rows: int = Field(default=1000, ge=1, le=10_000)


class NotASource(ValueError):
    """A URL that cannot be a data source (unparseable, a Unix socket, the platform's database)."""


def _endpoint(url: str) -> tuple[str, str, str]:
    """(host, port, database) of a Postgres URL, with local host names made one address."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise NotASource("the secret does not hold a Postgres connection URL") from None
    host = str(params.get("hostaddr") or params.get("host") or "")
    if not host or host.startswith("/") or "," in host:
        raise NotASource("the URL must name one TCP host (no Unix socket, no host list)")
    if host in ("localhost", "localhost.localdomain"):
        host = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        host = host.lower()
    return host, str(params.get("port") or "5432"), str(params.get("dbname") or params.get("user") or "")


def check_source_url(url: str, platform_url: str) -> None:
    """NotASource if `url` is unusable or names the platform's own database (same host, port and
    database; the worker also refuses any database holding AgentOS's tables)."""
    if _endpoint(url) == _endpoint(platform_url):
        raise NotASource("the URL points at the platform's own database; register a database of your own")
