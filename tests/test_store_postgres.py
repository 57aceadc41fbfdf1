"""What only the PostgreSQL backend has: its migrations, its connection, its driver's errors.

The behaviour every backend shares is in tests/store_contract.py (run against
PostgreSQL by tests/test_store_contract.py).
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from navi_actor.store import StoreError, StoreFailure, open_store
from navi_actor.store.postgres import PG_SCHEMA_VERSION, PostgresStore
from tests.pgserver import _free_port


@pytest.fixture
def store(pg_url):
    s = open_store("/nonexistent", pg_url)
    yield s
    s.close()


def test_the_schema_is_created_at_the_first_open_and_versioned(store, pg_url):
    """The first open creates the tables and records the schema version; a second open changes nothing."""
    with psycopg.connect(pg_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"navi_schema", "sessions", "runs", "messages"} <= tables
        assert conn.execute("SELECT version FROM navi_schema").fetchall() == [(PG_SCHEMA_VERSION,)]
    sid = store.create_session("kept")["id"]
    again = open_store("/nonexistent", pg_url)
    try:
        assert again.get_session(sid)["title"] == "kept"
    finally:
        again.close()


def test_nodes_opening_a_new_database_together_migrate_it_once(pg_url):
    """Stores opened at once on an empty database all succeed; the schema is made once (an advisory lock)."""
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresStore(pg_url))
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in opened:
        s.close()
    assert not errors and len(opened) == 4
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM navi_schema").fetchone() == (1,)


def test_a_database_newer_than_the_code_is_refused(store, pg_url):
    store.close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE navi_schema SET version = %s", (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {PG_SCHEMA_VERSION + 1}.*upgrade navi_actor"):
        open_store("/nonexistent", pg_url)


def test_a_database_that_cannot_be_reached_is_a_store_failure():
    """Nothing listens: open_store raises StoreFailure naming the URL (without a password) and the reason."""
    url = f"postgresql://navi:secret@127.0.0.1:{_free_port()}/navi"
    with pytest.raises(StoreFailure) as exc:
        open_store("/nonexistent", url)
    assert exc.value.op == "open" and "navi:***@127.0.0.1" in str(exc.value) and "secret" not in str(exc.value)


def test_a_lost_connection_fails_one_call_then_is_opened_again(store, pg_url):
    """The server ends our connection: the next call fails with StoreFailure, the one after reconnects."""
    sid = store.create_session("before")["id"]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        pids = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'navi-actor'"
                             " AND datname = current_database()").fetchall()
        assert len(pids) == 1
        admin.execute("SELECT pg_terminate_backend(%s)", pids[0])
    with pytest.raises(StoreFailure) as exc:
        store.get_session(sid)
    assert exc.value.op == "get_session"
    assert store.get_session(sid)["title"] == "before"
    assert store.batch([lambda: store.get_session(sid), store.running_runs])[0] == (True, store.get_session(sid))


def test_a_batch_whose_connection_is_lost_runs_each_call_again(store, pg_url):
    """The connection dies inside a group commit: nothing of the batch is kept, each call runs again alone."""
    sid = store.create_session()["id"]

    def kill_my_connection() -> None:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'navi-actor' AND datname = current_database()")

    calls_made = []

    def begin() -> int:
        calls_made.append("begin")
        return store.begin_run(sid, "r1", content="hi", agent_content="hi")

    outcomes = store.batch([begin, kill_my_connection, store.running_runs])
    # Run together, the batch failed (its connection died); run again one by one, each got its own outcome.
    assert calls_made == ["begin", "begin"]
    assert outcomes[0] == (True, 0)
    assert [r["id"] for r in store.running_runs()] == ["r1"]


def test_failure_names_psycopg_errors_as_store_failures(store):
    """A psycopg error that escaped the store's methods is a failure of the database, under the call's name."""
    failure = store.failure(psycopg.OperationalError("server closed the connection\n unexpectedly"), "raw")
    assert isinstance(failure, StoreFailure) and failure.op == "raw"
    assert failure.reason == "server closed the connection unexpectedly"
    assert store.failure(OSError(28, "No space left on device"), "z") is None
