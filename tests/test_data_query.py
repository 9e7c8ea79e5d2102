"""`data_query` end to end through the suite's worker: a Postgres source (a second database on the
test server, its URL an org secret) read in a READ ONLY transaction with a timeout and a row cap,
and CSV/Parquet files of the session's workspace through DuckDB with no access beyond the file.
Every refusal reaches the model as text and the run goes on."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from skills import SkillContext, SkillError
from skills.builtin.data_query import data_query
from tests.helpers import Org, Worker, error_of, start_run, wait


def _database(stack: StackUrls, setup: str) -> Iterator[str]:
    """A fresh database on the test server, set up by `setup` (SQL); its URL."""
    admin_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    name = f"external_{os.urandom(4).hex()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = stack.database_url.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(setup)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def external_db(stack: StackUrls) -> Iterator[str]:
    yield from _database(stack, "CREATE TABLE customers (id int PRIMARY KEY, name text, joined date); "
                                "INSERT INTO customers SELECT i, 'customer ' || i, date '2026-01-01' + i "
                                "FROM generate_series(1, 30) i")


@pytest.fixture(scope="module")
def lookalike_db(stack: StackUrls) -> Iterator[str]:
    """A database holding AgentOS's migration table, as another platform database would."""
    yield from _database(stack, "CREATE TABLE agentos_schema_migrations (version int)")


def configure(stack: StackUrls, org: Org, **settings: Any) -> None:
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || %s::jsonb WHERE id = %s", (json.dumps(settings), org.id))


def put_secret(org: Org, name: str, value: str) -> None:
    r = org.client.put(f"/v1/secrets/{name}", json={"value": value}, headers=org.headers)
    assert r.status_code == 200, r.text


def register(org: Org, **fields: Any) -> Any:
    return org.client.post("/v1/data-sources", json={"name": "crm", "url": {"secret": "crm_url"}} | fields,
                           headers=org.headers)


def run_script(org: Org, lines: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    agent = org.create_agent(skills=["data_query", "file_manager"], confirm="none")
    session = org.create_session(str(agent["id"]))
    run = wait(org, start_run(org, str(session["id"]), "\n".join(lines))["id"], timeout=60)
    calls = org.client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
    return run, calls


def call(skill: str, **args: Any) -> str:
    return f"call: {skill} {json.dumps(args)}"


def test_registering_a_source_checks_its_secret_and_refuses_the_platform_database(
        org: Org, other_org: Org, client: TestClient, external_db: str, stack: StackUrls):
    error = error_of(register(org), 422, "VALIDATION_FAILED")
    assert "no secret named 'crm_url'" in error["message"]
    put_secret(org, "platform", stack.database_url.replace("127.0.0.1", "localhost"))
    error = error_of(register(org, url={"secret": "platform"}), 422, "VALIDATION_FAILED")
    assert "platform's own database" in error["message"]
    put_secret(org, "crm_url", external_db)
    r = register(org, statement_timeout_ms=300, max_rows=5)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body == body | {"name": "crm", "kind": "postgres", "url": {"secret": "crm_url"},
                           "statement_timeout_ms": 300, "max_rows": 5}
    assert external_db not in r.text
    error_of(register(org), 409, "CONFLICT")
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    error_of(client.post("/v1/data-sources", json={"name": "x", "url": {"secret": "crm_url"}}, headers=viewer),
             403, "FORBIDDEN")
    assert [s["name"] for s in client.get("/v1/data-sources", headers=viewer).json()["data"]] == ["crm"]
    error_of(client.get("/v1/data-sources/crm", headers=other_org.headers), 404, "NOT_FOUND")
    error_of(client.delete("/v1/data-sources/crm", headers=other_org.headers), 404, "NOT_FOUND")
    assert client.get("/v1/data-sources", headers=other_org.headers).json()["data"] == []
    assert client.delete("/v1/data-sources/crm", headers=org.headers).status_code == 204


def test_a_postgres_source_is_read_only_bounded_and_every_refusal_is_text(
        org: Org, other_org: Org, stack: StackUrls, worker: Worker, external_db: str, lookalike_db: str):
    put_secret(org, "crm_url", external_db)
    assert register(org, statement_timeout_ms=300, max_rows=5).status_code == 201
    put_secret(org, "mirror_url", lookalike_db)
    assert register(org, name="mirror", url={"secret": "mirror_url"}).status_code == 201
    configure(stack, org, outbound_allow=["127.0.0.1"])  # the test's database is on loopback

    run, calls = run_script(org, [
        call("data_query", source="crm", sql="SELECT id, name, joined FROM customers ORDER BY id"),
        call("data_query", source="crm", sql="SELECT count(*) AS n FROM customers", max_rows=1),
        call("data_query", source="crm", sql="DELETE FROM customers"),
        call("data_query", source="crm", sql="COMMIT; SET default_transaction_read_only = off; DELETE FROM customers"),
        call("data_query", source="crm", sql="SELECT pg_sleep(3)"),
        call("data_query", source="crm", sql="SELECT nope FROM customers"),
        call("data_query", source="mirror", sql="SELECT 1"),
        call("data_query", source="nothing", sql="SELECT 1"),
    ])
    assert run["status"] == "succeeded", run
    first = calls[0]["output"]
    assert first["columns"] == ["id", "name", "joined"] and first["truncated"] is True
    assert first["rows"] == [[i, f"customer {i}", f"2026-01-{1 + i:02d}"] for i in range(1, 6)]
    assert calls[1]["output"] == {"columns": ["n"], "rows": [[30]], "truncated": False}
    errors = [c["error"]["message"] for c in calls[2:]]
    assert "read-only" in errors[0]
    assert "multiple commands" in errors[1]
    assert "300 ms" in errors[2]
    assert 'column "nope" does not exist' in errors[3]
    assert "AgentOS platform database" in errors[4]
    assert "no data source named 'nothing'" in errors[5]
    with psycopg.connect(external_db) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (30,)
    assert external_db not in json.dumps(calls) and external_db not in run["output"]["text"]

    # Without the org's allowlist, loopback is refused like any internal address; another org
    # has no such source at all.
    configure(stack, org, outbound_allow=[])
    run, calls = run_script(org, [call("data_query", source="crm", sql="SELECT 1")])
    assert run["status"] == "succeeded" and "cannot be reached" in calls[0]["error"]["message"]
    run, calls = run_script(other_org, [call("data_query", source="crm", sql="SELECT 1")])
    assert "no data source named 'crm'" in calls[0]["error"]["message"]


def test_a_csv_in_the_workspace_is_queried_with_duckdb(org: Org, worker: Worker):
    csv = "region,amount\nnorth,10\nsouth,5\nnorth,7\n"
    run, calls = run_script(org, [
        call("file_manager", action="write", path="sales.csv", content=csv),
        call("data_query", source="sales.csv",
             sql="SELECT region, sum(amount) AS total FROM data GROUP BY region ORDER BY region"),
        call("data_query", source="sales.csv", sql="SELECT * FROM read_csv('/etc/passwd')"),
        call("data_query", source="../outside.csv", sql="SELECT 1"),
        call("data_query", source="missing.parquet", sql="SELECT 1"),
    ])
    assert run["status"] == "succeeded"
    assert calls[1]["output"] == {"columns": ["region", "total"], "rows": [["north", 17], ["south", 5]],
                                  "truncated": False}
    errors = [c["error"]["message"] for c in calls[2:]]
    assert "file system operations are disabled" in errors[0]
    assert "outside the session workspace" in errors[1]
    assert "not a file" in errors[2]


def _ctx(workspace: Path) -> SkillContext:
    return SkillContext("org_1", "ses_1", "run_1", "agt_1", "call_1", workspace)


def test_file_queries_cannot_reach_the_network_write_files_or_load_extensions(tmp_path: Path):
    (tmp_path / "t.csv").write_text("a\n1\n2\n3\n")
    (tmp_path / "other.csv").write_text("secret\nx\n")

    def query(sql: str, **args: Any) -> Any:
        return asyncio.run(data_query.invoke(_ctx(tmp_path), {"source": "t.csv", "sql": sql, **args}))

    assert query("SELECT a FROM data ORDER BY a", max_rows=2) == {"columns": ["a"], "rows": [[1], [2]],
                                                                  "truncated": True}
    with pytest.raises(SkillError) as refused:
        query(f"SELECT * FROM read_csv('{tmp_path / 'other.csv'}')")
    assert "other.csv" in str(refused.value) and str(tmp_path) not in str(refused.value)
    for sql in [f"SELECT * FROM read_csv('{tmp_path / 'other.csv'}')", "SELECT * FROM read_csv('https://example.com/x.csv')",
                f"COPY data TO '{tmp_path / 'out.csv'}'", "INSTALL httpfs", "LOAD httpfs",
                "SET enable_external_access = true", f"ATTACH '{tmp_path / 'x.db'}'"]:
        with pytest.raises(SkillError):
            query(sql)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.csv", "t.csv"]


def test_a_file_query_past_its_time_is_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "t.csv").write_text("a\n1\n")
    # (the package exports the skill under the module's name, so the module comes by its path)
    monkeypatch.setattr(importlib.import_module("skills.builtin.data_query"), "FILE_TIMEOUT_S", 0.2)
    with pytest.raises(SkillError, match="ran longer than 0.2 s"):
        asyncio.run(data_query.invoke(_ctx(tmp_path), {
            "source": "t.csv", "sql": "SELECT count(*) FROM range(100000000000) a, range(100) b"}))


def test_a_parquet_file_is_read_as_the_table_data(tmp_path: Path):
    import duckdb

    with duckdb.connect(":memory:") as con:  # an unrestricted connection of the test writes the file
        con.execute(f"COPY (SELECT i AS n, i * i AS square FROM range(1, 5) t(i)) TO '{tmp_path / 'sq.parquet'}' "
                    "(FORMAT parquet)")
    result = asyncio.run(data_query.invoke(_ctx(tmp_path), {
        "source": "sq.parquet", "sql": "SELECT n, square FROM data WHERE n > 2 ORDER BY n"}))
    assert result == {"columns": ["n", "square"], "rows": [[3, 9], [4, 16]], "truncated": False}


def test_a_source_url_cannot_make_the_worker_read_its_files_or_lend_its_password():
    from psycopg.conninfo import conninfo_to_dict

    from skills.builtin.data_query import source_conninfo

    url = ("postgresql://ann@db.example:6543/sales?sslmode=require&service=platform&passfile=/root/.pgpass"
           "&sslkey=/etc/agentos/key.pem&options=-c%20default_transaction_read_only%3Doff")
    built = conninfo_to_dict(source_conninfo(conninfo_to_dict(url), "203.0.113.9", 500))
    assert built["host"] == "db.example" and built["hostaddr"] == "203.0.113.9" and built["port"] == "6543"
    assert built["passfile"] == os.devnull and built["password"] == ""  # never the worker's PGPASSWORD
    assert "service" not in built and "sslkey" not in built and built["sslmode"] == "require"
    assert built["options"] == "-c default_transaction_read_only=on -c statement_timeout=500"
