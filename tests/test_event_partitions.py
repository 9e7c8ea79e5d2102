"""The event log partitioned by week (core.event_partitions, the migration `_partitioned_events`):
the replay query still reads each partition's index, row-level security holds through the parent
and no partition can be used directly, an insert past the created partitions still lands (and
the job moves it into its week), retention drops a partition only when every row in it is past
every org's retention, and an event log at the previous version migrates and replays the same."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from core import retention
from core.db import isolation_problems, open_pool
from core.event_reader import LIST_EVENTS_SQL, from_postgres, replay_params
from core.events import Event
from core.ids import new_id
from core.infra import Infra
from core.migrations import MIGRATIONS, _partitioned_events, migrate
from core.settings import Settings
from core.tenancy import tenant_tx
from runtime.maintenance import JOBS, run_job
from tests.helpers import Org, database_with_owner_login, scratch_database, stored_run

T = TypeVar("T")
APP_ROLE = "agentos_app"


def _with_infra(settings: Settings, use: Callable[[Infra], Awaitable[T]]) -> T:
    async def go() -> T:
        infra = await Infra.open(settings, name="test-event-partitions", pool_min=0, pool_max=3)
        try:
            return await use(infra)
        finally:
            await infra.close()

    return asyncio.run(go())


def _on(settings: Settings, url: str, **lifecycle: Any) -> Settings:
    """`settings` on another database (a scratch one), with lifecycle settings changed."""
    return settings.model_copy(update={
        "database": settings.database.model_copy(update={"url": url}),
        "lifecycle": settings.lifecycle.model_copy(update=lifecycle),
    })


def _partitions(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {r[0]: r[1] for r in conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'run_events'::regclass").fetchall()}


def _replay(settings: Settings, org_id: str, session_id: str) -> list[Event]:
    async def go(infra: Infra) -> list[Event]:
        return await from_postgres(infra.pool, org_id, session_id, 0)

    return _with_infra(settings, go)


def test_the_event_log_is_partitioned_by_week_with_a_default_and_the_key_holds_the_time(stack: Any) -> None:
    with psycopg.connect(stack.database_url) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'run_events'::regclass").fetchone()
        key = conn.execute("SELECT pg_get_partkeydef('run_events'::regclass)").fetchone()
        pkey = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                            "WHERE conrelid = 'run_events'::regclass AND contype = 'p'").fetchone()
        this_week = conn.execute(
            "SELECT 'run_events_p' || to_char(date_trunc('week', now(), 'UTC') AT TIME ZONE 'UTC', 'YYYYMMDD')"
        ).fetchone()
    assert kind == ("p",) and key == ("RANGE (ts)",) and pkey == ("PRIMARY KEY (session_id, seq, ts)",)
    partitions = _partitions(stack.database_url)
    assert partitions["run_events_default"] == "DEFAULT"
    assert this_week is not None and this_week[0] in partitions
    # This week and the next four at least (the migration's; the job keeps them ahead).
    assert len([p for p in partitions if p >= this_week[0]]) >= 5


def test_a_replay_reads_each_partitions_index_never_a_sequential_scan(settings: Settings, org: Org) -> None:
    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    stored_run(settings, org.id, str(agent["id"]), session)

    async def explain(infra: Infra) -> list[str]:
        async with tenant_tx(infra.pool, org.id) as conn:
            # As the API runs it: a prepared statement with parameters, on the application role.
            rows = await (await conn.execute("EXPLAIN (COSTS OFF) " + LIST_EVENTS_SQL,
                                             replay_params(session, 0, limit=500))).fetchall()
        return [str(r["QUERY PLAN"]) for r in rows]

    plan = _with_infra(settings, explain)
    print("\n" + "\n".join(plan))
    # Each partition's primary key (session_id, seq, ts) read in seq order, merged; a partition the
    # planner knows to be empty may be "scanned" sequentially instead: zero pages, no cost.
    assert any("Merge Append" in line for line in plan), plan
    scanned = {line.split(" on ")[1].split()[0]: line.strip() for line in plan
               if " on run_events_" in line and "Bitmap Index Scan" not in line}
    assert set(scanned) == set(_partitions(settings.database.url)), scanned
    with psycopg.connect(settings.database.url) as conn:
        for partition, scan in scanned.items():
            if "Seq Scan" in scan:
                pages = conn.execute("SELECT relpages FROM pg_class WHERE relname = %s", (partition,)).fetchone()
                assert pages == (0,), (scan, pages)
            else:  # by its key, or a bitmap of its key's matches
                assert f"{partition}_pkey" in scan or "Bitmap Heap Scan" in scan, scan


def test_the_application_role_reaches_partitions_only_through_the_parent(
        settings: Settings, stack: Any, org: Org, other_org: Org) -> None:
    for owner in (org, other_org):
        agent = owner.create_agent()
        stored_run(settings, owner.id, str(agent["id"]), str(owner.create_session(str(agent["id"]))["id"]))
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT tableoid::regclass::text FROM run_events WHERE org_id = %s LIMIT 1",
                           (org.id,)).fetchone()
    assert row is not None
    partition = row[0]

    async def scenario() -> tuple[int, set[str], type[BaseException] | None, list[str]]:
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org.id) as conn:
                seen = {r["org_id"] for r in await (await conn.execute("SELECT org_id FROM run_events")).fetchall()}
                unscoped = 0
            async with pool.connection() as conn:  # no org set: nothing through the parent
                unscoped = (await (await conn.execute("SELECT count(*) AS n FROM run_events")).fetchone() or {})["n"]
            denied: type[BaseException] | None = None
            try:
                async with tenant_tx(pool, org.id) as conn:
                    await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partition)))
            except psycopg.errors.InsufficientPrivilege as exc:
                denied = type(exc)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # partitions come only from the job
                async with pool.connection() as conn:
                    await conn.execute("SELECT agentos_add_event_partition(now() + interval '60 weeks')")
            async with pool.connection() as conn:
                problems = await isolation_problems(conn)
            return unscoped, seen, denied, problems
        finally:
            await pool.close()

    unscoped, seen, denied, problems = asyncio.run(scenario())
    assert unscoped == 0 and seen == {org.id}
    assert denied is psycopg.errors.InsufficientPrivilege
    assert problems == []


def test_the_start_up_check_refuses_a_partition_the_application_role_may_read(stack: Any, settings: Settings) -> None:
    async def scenario() -> list[str]:
        conn = await psycopg.AsyncConnection.connect(stack.database_url, row_factory=psycopg.rows.dict_row)
        try:
            await conn.execute(sql.SQL("GRANT SELECT ON run_events_default TO {}").format(
                sql.Identifier(settings.database.app_role)))  # inside a transaction, rolled back
            await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(settings.database.app_role)))
            return await isolation_problems(conn)
        finally:
            await conn.rollback()
            await conn.close()

    assert asyncio.run(scenario()) == [
        f"partition run_events_default of table run_events can be used directly by role {settings.database.app_role}"]


def test_an_event_past_the_created_partitions_is_stored_and_the_job_moves_it_into_its_week(
        settings: Settings, stack: Any) -> None:
    with scratch_database(stack, "partitions_ahead") as url:
        migrate(url, APP_ROLE)
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO orgs (id, name) VALUES ('org_a', 'A')")
            conn.execute("INSERT INTO agents (id, org_id, name, config) VALUES ('agt_a', 'org_a', 'a', '{}')")
            conn.execute("INSERT INTO sessions (id, org_id, agent_id) VALUES ('ses_a', 'org_a', 'agt_a')")
            conn.execute("INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, input, trace_id) "
                         "VALUES ('run_a', 'org_a', 'ses_a', 'agt_a', 1, '{}', 't')")
            far = conn.execute("SELECT now() + interval '20 weeks'").fetchone()
        assert far is not None
        before = _partitions(url)

        async def insert(infra: Infra) -> None:  # through the parent, as the application role
            async with tenant_tx(infra.pool, "org_a") as conn:
                await conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts) "
                                   "VALUES ('org_a', 'ses_a', 1, 'run_a', 'run.queued', '{}', %s)", (far[0],))

        scratch = _on(settings, url, event_partitions_ahead_weeks=21)
        _with_infra(scratch, insert)
        with psycopg.connect(url) as conn:
            where = conn.execute("SELECT tableoid::regclass::text FROM run_events").fetchone()
        assert where == ("run_events_default",)

        job = next(j for j in JOBS if j.name == "event-partitions")
        report = _with_infra(scratch, lambda infra: run_job(infra, job))

        created = set(_partitions(url)) - set(before)
        # Weeks 0..21 from now, less the 5 the migration made.
        assert report == f"created {len(created)} event partitions" and len(created) == 22 - 5
        with psycopg.connect(url) as conn:
            where = conn.execute("SELECT tableoid::regclass::text FROM run_events").fetchone()
            default_rows = conn.execute("SELECT count(*) FROM run_events_default").fetchone()
        assert where is not None and where[0] in created and default_rows == (0,)
        assert [e.seq for e in _replay(scratch, "org_a", "ses_a")] == [1]
        assert _with_infra(scratch, lambda infra: run_job(infra, job)) is None  # nothing left to create


OLD_WEEK = "now() - interval '200 days'"


def _org_with_session(conn: psycopg.Connection[Any], o: str, event_seq: int = 0) -> None:
    """Org `org_<o>` with agent `agt_<o>` and session `ses_<o>` (its seqs handed out up to `event_seq`)."""
    conn.execute("INSERT INTO orgs (id, name) VALUES (%s, %s)", (f"org_{o}", o))
    conn.execute("INSERT INTO agents (id, org_id, name, config) VALUES (%s, %s, 'a', '{}')", (f"agt_{o}", f"org_{o}"))
    conn.execute("INSERT INTO sessions (id, org_id, agent_id, event_seq) VALUES (%s, %s, %s, %s)",
                 (f"ses_{o}", f"org_{o}", f"agt_{o}", event_seq))


def _old_events(url: str) -> None:
    """Orgs A and B, each with a run whose events are 200 days old (one old weekly partition)."""
    with psycopg.connect(url) as conn:
        conn.execute(f"SELECT agentos_add_event_partition({OLD_WEEK})")
        for o in ("a", "b"):
            _org_with_session(conn, o)
            conn.execute("INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, status, input, trace_id, "
                         f"created_at, finished_at) VALUES (%s, %s, %s, %s, 1, 'succeeded', '{{}}', 't', {OLD_WEEK}, "
                         f"{OLD_WEEK})", (f"run_{o}", f"org_{o}", f"ses_{o}", f"agt_{o}"))
            conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts) "
                         f"SELECT %s, %s, s, %s, 'message.delta', '{{}}', {OLD_WEEK} FROM generate_series(1, 5) s",
                         (f"org_{o}", f"ses_{o}", f"run_{o}"))


def _count(url: str, query: str, *args: Any) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, args).fetchone()
    return int(row[0]) if row else -1


def test_retention_drops_a_partition_only_once_every_row_in_it_is_past_every_orgs_retention(
        settings: Settings, stack: Any) -> None:
    with scratch_database(stack, "partitions_drop") as url:
        migrate(url, APP_ROLE)
        _old_events(url)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM run_events").fetchone()
        assert row is not None and row[0] != "run_events_default"
        old = row[0]
        scratch = _on(settings, url, events_days=90)

        def drop_directly(days: int) -> list[Any]:
            with psycopg.connect(url) as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
                return conn.execute("SELECT * FROM agentos_drop_event_partition(%s, '')", (days,)).fetchall()

        # An org keeping its events for ever, or longer than the partition's age, keeps it: the
        # function itself reads the orgs' overrides, whatever horizon its caller names.
        for kept, horizon in (('{"events_days": 0}', 0), ('{"events_days": 400}', 400)):
            with psycopg.connect(url) as conn:
                conn.execute("UPDATE orgs SET retention = %s WHERE id = 'org_b'", (kept,))
            assert drop_directly(90) == [] and old in _partitions(url), kept
            assert _with_infra(scratch, retention.events_horizon) == horizon  # 0, for ever: no drops at all
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE orgs SET retention = '{}' WHERE id = 'org_b'")

        # B's run ran long: it ended 10 days ago, so its events stay, and so does the partition.
        # A's (at the longest retention, left to the drop) go in batches once the drop is late.
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE runs SET finished_at = now() - interval '10 days' WHERE id = 'run_b'")
        report = _with_infra(scratch, retention.enforce)
        assert old in _partitions(url) and report is not None and "partitions dropped" not in report
        assert _count(url, "SELECT count(*) FROM run_events WHERE run_id = 'run_a'") == 0
        assert _count(url, "SELECT count(*) FROM run_events WHERE run_id = 'run_b'") == 5

        # Once B's run too ended before the cutoff, the partition goes whole: rows and file.
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE runs SET finished_at = now() - interval '100 days' WHERE id = 'run_b'")
        report = _with_infra(scratch, retention.enforce)
        assert report is not None and report.startswith("event partitions dropped: 1 (5 rows, "), report
        assert old not in _partitions(url) and "run_events_default" in _partitions(url)
        assert _count(url, "SELECT count(*) FROM run_events") == 0
        assert _count(url, "SELECT count(*) FROM runs") == 2  # the runs themselves stay
        assert _with_infra(scratch, retention.enforce) is None  # a second pass finds nothing


def test_an_event_log_at_the_previous_version_migrates_and_replays_the_same(settings: Settings, stack: Any) -> None:
    version = next(v for v, m in enumerate(MIGRATIONS, start=1) if m.apply is _partitioned_events)
    with scratch_database(stack, "partitions_migrate") as url:
        migrate(url, APP_ROLE, target=version - 1)
        with psycopg.connect(url) as conn:
            for o in ("a", "b"):
                _org_with_session(conn, o, event_seq=30)
                conn.execute("INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, input, trace_id) "
                             "VALUES (%s, %s, %s, %s, 1, '{}', 't')", (f"run_{o}", f"org_{o}", f"ses_{o}", f"agt_{o}"))
                # 30 events spread over the last ten weeks, in a session created before them
                # (the replay reads from the session's creation on).
                conn.execute("UPDATE sessions SET created_at = now() - interval '71 days' WHERE id = %s", (f"ses_{o}",))
                conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts) "
                             "SELECT %s, %s, s, %s, 'message.delta', jsonb_build_object('text', 'e' || s), "
                             "now() - make_interval(days => 70 - s * 2) FROM generate_series(1, 30) s",
                             (f"org_{o}", f"ses_{o}", f"run_{o}"))
        old = _on(settings, url)
        before = {o: _replay(old, f"org_{o}", f"ses_{o}") for o in ("a", "b")}
        assert [len(events) for events in before.values()] == [30, 30]

        assert migrate(url, APP_ROLE) == len(MIGRATIONS) - version + 1

        after = {o: _replay(old, f"org_{o}", f"ses_{o}") for o in ("a", "b")}
        assert after == before
        partitions = _partitions(url)
        with psycopg.connect(url) as conn:
            per_partition = conn.execute("SELECT count(DISTINCT tableoid), count(*) FILTER "
                                         "(WHERE tableoid = 'run_events_default'::regclass) FROM run_events").fetchone()
            leftover = conn.execute("SELECT to_regclass('run_events_unpartitioned')").fetchone()
            forced = conn.execute("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
                                  "WHERE oid = 'run_events'::regclass").fetchone()
        assert per_partition is not None and per_partition[0] >= 9 and per_partition[1] == 0  # to their weeks
        assert len(partitions) >= 15 and leftover == (None,) and forced == (True,)

        async def problems(infra: Infra) -> list[str]:
            async with infra.pool.connection() as conn:
                return await isolation_problems(conn)

        assert _with_infra(old, problems) == []


def test_org_rows_in_several_partitions_are_deleted_in_batches_each_once(settings: Settings, stack: Any) -> None:
    from core.tenant_data import Removed, delete_in_batches

    with scratch_database(stack, "partitions_purge") as url:
        migrate(url, APP_ROLE)
        _old_events(url)
        with psycopg.connect(url) as conn:  # and 5 more of each org's in this week's partition
            conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data) "
                         "SELECT o, 'ses_' || right(o, 1), 10 + s, 'run_' || right(o, 1), 'message.delta', '{}' "
                         "FROM unnest(ARRAY['org_a', 'org_b']) o, generate_series(1, 5) s")
        removed = Removed()

        async def purge(infra: Infra) -> None:
            await delete_in_batches(infra.pool, "org_a", "run_events", 3, removed)

        _with_infra(_on(settings, url), purge)
        assert removed.rows == {"run_events": 10}
        assert _count(url, "SELECT count(*) FROM run_events WHERE org_id = 'org_a'") == 0
        assert _count(url, "SELECT count(*) FROM run_events WHERE org_id = 'org_b'") == 10


def test_the_drop_sees_every_orgs_runs_when_the_owner_is_no_superuser(stack: Any) -> None:
    """In production the migrating login owns the tables but, not being superuser, is subject to
    their FORCEd row-level security: the drop function must still see every org's runs (or it
    would find every partition "kept" — never unsafe, but never dropping)."""
    with database_with_owner_login(stack, "partowner") as (url, owner, owner_url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} OWNER TO {owner}")
            conn.execute(f"GRANT {APP_ROLE} TO {owner}")
            conn.execute("CREATE EXTENSION vector")  # not a trusted extension: the service's admin makes it
        migrate(owner_url, APP_ROLE)
        with psycopg.connect(owner_url) as conn:  # the owner makes partitions (as the job does)
            conn.execute(f"SELECT agentos_add_event_partition({OLD_WEEK})")
        _old_events(url)  # the test's rows, written as superuser

        def drop() -> list[Any]:
            with psycopg.connect(owner_url) as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
                return conn.execute("SELECT dropped, row_count FROM agentos_drop_event_partition(90, '')").fetchall()

        with psycopg.connect(url) as conn:
            conn.execute("UPDATE runs SET finished_at = now() - interval '10 days' WHERE id = 'run_b'")
        assert drop() == []  # B's run ended recently: kept
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE runs SET finished_at = now() - interval '100 days' WHERE id = 'run_b'")
        dropped = drop()
        assert len(dropped) == 1 and dropped[0][1] == 10, dropped  # both orgs' rows, seen across orgs


def _partitions_read(settings: Settings, org_id: str, session_id: str) -> set[str]:
    """The partitions the replay query reads (EXPLAIN ANALYZE as the application role): those
    pruned at planning are not in the plan, those pruned once the time bound is known show as
    never executed."""
    async def explain(infra: Infra) -> list[str]:
        async with tenant_tx(infra.pool, org_id) as conn:
            query = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + LIST_EVENTS_SQL
            rows = await (await conn.execute(query, replay_params(session_id, 0, limit=500))).fetchall()
        return [str(r["QUERY PLAN"]) for r in rows]

    plan = _with_infra(settings, explain)
    return {line.split(" on ")[1].split()[0] for line in plan
            if " on run_events_" in line and "Bitmap Index Scan" not in line and "never executed" not in line}


def test_a_replay_reads_only_the_partitions_since_its_session_was_created(settings: Settings, stack: Any) -> None:
    """Regression: the replay (by session and seq) probed every weekly partition, back to the
    oldest kept; bounded below by the session's creation it reads only the weeks since."""
    with scratch_database(stack, "partitions_replay") as url:
        migrate(url, APP_ROLE)
        with psycopg.connect(url) as conn:
            for days in (200, 100):
                conn.execute("SELECT agentos_add_event_partition(now() - make_interval(days => %s))", (days,))
            _org_with_session(conn, "a", event_seq=3)
            conn.execute("INSERT INTO sessions (id, org_id, agent_id, event_seq, created_at) "
                         "VALUES ('ses_old', 'org_a', 'agt_a', 3, now() - interval '201 days')")
            for session in ("ses_a", "ses_old"):
                conn.execute("INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, input, trace_id) "
                             "VALUES (%s, 'org_a', %s, 'agt_a', 1, '{}', 't')", (session.replace("ses_", "run_"),
                                                                                session))
            # The old session's events 200 and 100 days ago and now; the new one's now.
            conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts) "
                         "SELECT 'org_a', 'ses_old', s, 'run_old', 'message.delta', '{}', "
                         "now() - make_interval(days => (ARRAY[200, 100, 0])[s]) FROM generate_series(1, 3) s")
            conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data) "
                         "SELECT 'org_a', 'ses_a', s, 'run_a', 'message.delta', '{}' FROM generate_series(1, 3) s")
            created = conn.execute("SELECT created_at FROM sessions WHERE id = 'ses_a'").fetchone()
        assert created is not None
        scratch = _on(settings, url)
        partitions = _partitions(url)
        old = {p for p in partitions if p != "run_events_default"
               and datetime.strptime(p.removeprefix("run_events_p"), "%Y%m%d").replace(tzinfo=UTC)
               + timedelta(days=7) <= created[0] - timedelta(days=1)}
        assert len(old) >= 2  # the two old weeks at least (and any the migration made before this one)

        read = _partitions_read(scratch, "org_a", "ses_a")
        assert read == set(partitions) - old, (read, old)  # this week's on, and the default
        assert [e.seq for e in _replay(scratch, "org_a", "ses_a")] == [1, 2, 3]
        # A session created long ago still replays whole, from every week since.
        assert [e.seq for e in _replay(scratch, "org_a", "ses_old")] == [1, 2, 3]
        assert old <= _partitions_read(scratch, "org_a", "ses_old")


def test_a_sessions_id_bounds_its_replay_when_the_query_is_planned(settings: Settings, stack: Any) -> None:
    """The bound from a session's id is a parameter, so the weeks before it are pruned while the
    query is planned (absent from the plan) rather than only skipped at execution; a session
    whose id says it is old still replays whole."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    fresh, old = new_id("session"), f"ses_{now_ms - 201 * 86_400_000:012x}{1:016x}"
    with scratch_database(stack, "partitions_id_bound") as url:
        migrate(url, APP_ROLE)
        with psycopg.connect(url) as conn:
            for days in (200, 100):
                conn.execute("SELECT agentos_add_event_partition(now() - make_interval(days => %s))", (days,))
            _org_with_session(conn, "a")
            for session, run in ((fresh, "run_fresh"), (old, "run_old")):
                conn.execute("INSERT INTO sessions (id, org_id, agent_id, event_seq) VALUES (%s, 'org_a', 'agt_a', 3)",
                             (session,))
                conn.execute("INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, input, trace_id) "
                             "VALUES (%s, 'org_a', %s, 'agt_a', 1, '{}', 't')", (run, session))
            # The old session's events 200 and 100 days ago and now (its row's created_at is now:
            # only its id knows its age); the fresh one's now.
            conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts) "
                         "SELECT 'org_a', %s, s, 'run_old', 'message.delta', '{}', "
                         "now() - make_interval(days => (ARRAY[200, 100, 0])[s]) FROM generate_series(1, 3) s", (old,))
            conn.execute("INSERT INTO run_events (org_id, session_id, seq, run_id, type, data) "
                         "SELECT 'org_a', %s, s, 'run_fresh', 'message.delta', '{}' FROM generate_series(1, 3) s",
                         (fresh,))
        scratch = _on(settings, url)

        async def planned(infra: Infra, session: str) -> list[str]:
            async with tenant_tx(infra.pool, "org_a") as conn:
                rows = await (await conn.execute("EXPLAIN (COSTS OFF) " + LIST_EVENTS_SQL,
                                                 replay_params(session, 0, limit=500))).fetchall()
            return [str(r["QUERY PLAN"]) for r in rows]

        def in_plan(session: str) -> set[str]:
            plan = _with_infra(scratch, lambda infra: planned(infra, session))
            return {line.split(" on ")[1].split()[0] for line in plan if " on run_events_" in line}

        oldest = {p for p in _partitions(url) if p != "run_events_default"
                  and datetime.strptime(p.removeprefix("run_events_p"), "%Y%m%d").replace(tzinfo=UTC)
                  < datetime.now(UTC) - timedelta(days=90)}
        assert len(oldest) >= 2
        assert not oldest & in_plan(fresh)  # not planned at all
        assert oldest <= in_plan(old)
        assert [e.seq for e in _replay(scratch, "org_a", fresh)] == [1, 2, 3]
        assert [e.seq for e in _replay(scratch, "org_a", old)] == [1, 2, 3]
