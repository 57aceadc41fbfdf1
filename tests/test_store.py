"""The SQLite backend's own tests: its file, pragmas, migrations, group commit, URLs.

What any backend must do is in the contract (`tests/store_contract.py`, run
against SQLite by `tests/test_store_contract.py`); this file checks what only
SQLite has (real files under tmp_path).
"""

import sqlite3
import stat
import threading

import pytest

from navi_actor.store import (
    RUN_STATUSES, SCHEMA_VERSION, RunNotRunning, SessionNotFound, SessionStore,
    SQLiteStore, StoreError, StoreFailure, open_store, valid_session_id,
)
from navi_actor.store.factory import sqlite_path
from navi_actor.store.sqlite import _MIGRATIONS
from tests.test_layers import imports_of, project_modules


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    yield s
    s.close()


def begin(store, sid, rid, content="hello", **kw):
    kw.setdefault("agent_content", content)
    return store.begin_run(sid, rid, content=content, **kw)


def test_open_store_creates_private_dir_and_file(tmp_path):
    """open_store creates the data dir with mode 0o700 and the navi.sqlite3 file in it."""
    d = tmp_path / "a" / "b"
    s = open_store(d)
    try:
        assert isinstance(s, SessionStore)
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert (d / "navi.sqlite3").is_file()
    finally:
        s.close()


def test_constants_and_session_id_validation():
    """RUN_STATUSES lists the five statuses and valid_session_id enforces the id regex."""
    assert set(RUN_STATUSES) == {"running", "done", "stopped", "failed", "interrupted"}
    assert valid_session_id("abc_DEF-123")
    assert valid_session_id("a" * 64)
    for bad in ("", "a" * 65, "a/b", "a b", "../x", None, 5):
        assert not valid_session_id(bad)


def test_delete_session_leaves_no_rows(store, tmp_path):
    """Deleting a session deletes its runs' and messages' rows too (foreign keys cascade)."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    store.finish_run("r1", status="done", content="hi", last_seq=3,
                     tool_calls=[{"tool": "t", "args": {}, "result": "ok", "success": True}])
    assert store.delete_session(s["id"]) is True
    assert store.delete_session(s["id"]) is False
    assert store.get_session(s["id"]) is None
    conn = sqlite3.connect(tmp_path / "data" / "navi.sqlite3")
    try:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    finally:
        conn.close()


def test_pragmas(store, tmp_path):
    """The file is in WAL mode with foreign keys on and synchronous=FULL on the store's connection."""
    conn = sqlite3.connect(tmp_path / "data" / "navi.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    db = store._db
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_newer_schema_version_is_refused(tmp_path):
    """A file whose user_version is newer than the code supports is refused with StoreError."""
    path = tmp_path / "navi.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError) as exc:
        SQLiteStore(path)
    msg = str(exc.value)
    assert str(SCHEMA_VERSION + 1) in msg and str(SCHEMA_VERSION) in msg
    conn = sqlite3.connect(path)  # left untouched
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


# ── schema version 2: owners ────────────────────────────────────────────────


def test_version_1_file_is_migrated_keeping_every_row(tmp_path):
    """A version 1 file gets the owner column (NULL for its sessions) and keeps its sessions, runs and messages."""
    d = tmp_path / "data"
    d.mkdir()
    conn = sqlite3.connect(d / "navi.sqlite3")
    for statement in _MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("INSERT INTO sessions VALUES ('old', 'Old chat', 1.0, 2.0, 7)")
    conn.execute("INSERT INTO runs (id, session_id, status, started_at, first_seq, last_seq)"
                 " VALUES ('r1', 'old', 'done', 1.0, 1, 7)")
    conn.execute("INSERT INTO messages (session_id, run_id, role, content, data, created_at)"
                 " VALUES ('old', 'r1', 'user', 'hi', '{}', 1.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    s = open_store(d)
    try:
        assert s._user_version() == SCHEMA_VERSION == 3
        assert s.get_session("old") == {"id": "old", "title": "Old chat", "created_at": 1.0, "updated_at": 2.0,
                                         "last_seq": 7, "owner": None}
        detail = s.get_session_detail("old")
        assert [m["content"] for m in detail["messages"]] == ["hi"] and detail["runs"][0]["id"] == "r1"
        assert s.begin_run("old", "r2", content="again", agent_content="again") == 7
        assert [x["id"] for x in s.list_sessions(owner=None)] == ["old"]
    finally:
        s.close()


def test_version_2_file_gets_the_queue_and_keeps_its_rows(tmp_path):
    """A version 2 file is migrated to 3: its sessions keep their rows, and gain a queue and client ids."""
    d = tmp_path / "data"
    d.mkdir()
    conn = sqlite3.connect(d / "navi.sqlite3")
    for version in (1, 2):
        for statement in _MIGRATIONS[version]:
            conn.execute(statement)
    conn.execute("INSERT INTO sessions VALUES ('old', 'Old chat', 1.0, 2.0, 7, NULL)")
    conn.execute("INSERT INTO runs (id, session_id, status, started_at, first_seq, last_seq)"
                 " VALUES ('r1', 'old', 'done', 1.0, 1, 7)")
    conn.execute("INSERT INTO messages (session_id, run_id, role, content, data, created_at)"
                 " VALUES ('old', 'r1', 'user', 'hi', '{}', 1.0)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    s = open_store(d)
    try:
        assert s._user_version() == SCHEMA_VERSION == 3
        assert [m["content"] for m in s.get_session_detail("old")["messages"]] == ["hi"]
        assert s.get_if_busy("old") is None and s.find_client_message("old", "c1") is None
        assert s.enqueue("old", "m1", content="later", agent_content="later", client_message_id="c1", limit=1) == 1
        assert s.begin_queued("old")["base"] == 7
    finally:
        s.close()


def test_database_file_is_private(tmp_path):
    """The database file is created 0600, and an existing one readable by others is made 0600."""
    d = tmp_path / "data"
    s = open_store(d)
    s.create_session()
    s.close()
    for name in ("navi.sqlite3",):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    (d / "navi.sqlite3").chmod(0o644)
    s = open_store(d)
    try:
        assert stat.S_IMODE((d / "navi.sqlite3").stat().st_mode) == 0o600
        assert stat.S_IMODE((d / "navi.sqlite3-wal").stat().st_mode) == 0o600
    finally:
        s.close()


# ── group commit ───────────────────────────────────────────────────────────


class _CountingConnection:
    """A real sqlite3 connection that counts COMMITs, and can fail one on request."""

    def __init__(self, conn):
        self._conn = conn
        self.commits = 0
        self.fail_next_commit = False

    def execute(self, sql, *args):
        if sql == "COMMIT":
            if self.fail_next_commit:
                self.fail_next_commit = False
                raise sqlite3.OperationalError("disk I/O error (injected)")
            self.commits += 1
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture
def counted(store):
    conn = _CountingConnection(store._conn)
    store._conn = conn
    yield conn
    store._conn = conn._conn


def reopen(store):
    """A second store on the same file: what another process (or a restart) would read."""
    return SQLiteStore(store.path)


def test_batch_commits_once(store, counted):
    """The calls of a batch share one commit (one fsync), refused ones included."""
    a, b = store.create_session()["id"], store.create_session()["id"]
    counted.commits = 0
    outcomes = store.batch([
        lambda: begin(store, a, "r1", content="first"),
        lambda: begin(store, "missing", "r2"),
        lambda: begin(store, b, "r3", content="third"),
        lambda: store.history(a),
    ])
    assert counted.commits == 1
    assert [ok for ok, _ in outcomes] == [True, False, True, True]
    other = reopen(store)
    try:
        assert {r["id"] for r in other.running_runs()} == {"r1", "r3"}
    finally:
        other.close()


def test_batch_falls_back_to_one_by_one_when_the_commit_fails(store, counted):
    """A failed group commit keeps nothing of it; the calls are run again alone and each gets its outcome."""
    sid = store.create_session()["id"]
    counted.fail_next_commit = True
    counted.commits = 0
    outcomes = store.batch([
        lambda: begin(store, sid, "r1"),
        lambda: begin(store, sid, "r1"),  # the same run twice: the second is refused
        lambda: store.create_session("kept")["id"],
    ])
    assert [ok for ok, _ in outcomes] == [True, False, True]
    assert "already exists" in str(outcomes[1][1])
    assert counted.commits == 2  # the two that succeeded, alone
    other = reopen(store)
    try:
        assert [r["id"] for r in other.running_runs()] == ["r1"]
        assert other.get_session(outcomes[2][1])["title"] == "kept"
    finally:
        other.close()


def test_batch_falls_back_when_a_call_fails_inside_sqlite(store, counted):
    """An error that is not the store's own refusal aborts the batch: the calls run again one by one."""
    sid = store.create_session()["id"]
    calls = {"n": 0}

    def broken():
        calls["n"] += 1
        store._db.execute("SELECT * FROM no_such_table")

    counted.commits = 0
    outcomes = store.batch([lambda: begin(store, sid, "r1"), broken, lambda: store.create_session()["id"]])
    assert outcomes[0] == (True, 0)
    assert not outcomes[1][0] and isinstance(outcomes[1][1], sqlite3.OperationalError)
    assert outcomes[2][0]
    assert calls["n"] == 2  # once in the batch, once alone
    assert [r["id"] for r in store.running_runs()] == ["r1"]  # written once, not twice


async def test_store_queue_groups_waiting_calls_and_survives_a_cancelled_caller(store):
    """Calls made while a batch is written go together in the next one; results reach the right callers."""
    import asyncio

    from navi_actor.front.storeq import StoreQueue

    loop = asyncio.get_running_loop()
    q = StoreQueue(store, loop)
    gate = threading.Event()
    first = asyncio.ensure_future(q.call(gate.wait, 10))  # holds the store thread
    sids = [store.create_session()["id"] for _ in range(20)]
    starts = [asyncio.ensure_future(q.call(begin, store, sid, f"run{i}", content=f"m{i}"))
              for i, sid in enumerate(sids)]
    doomed = asyncio.ensure_future(q.call(store.create_session, "cancelled caller"))
    refused = asyncio.ensure_future(q.call(begin, store, "missing", "x"))
    await asyncio.sleep(0)  # every call is queued behind the first
    doomed.cancel()
    gate.set()
    assert await first is True
    assert await asyncio.gather(*starts) == [0] * 20
    with pytest.raises(SessionNotFound):
        await refused
    assert q.batches == 2 and q.calls == 23  # the gate's batch, then all the others together
    assert len(store.running_runs()) == 20
    assert any(s["title"] == "cancelled caller" for s in store.list_sessions())  # written all the same
    await q.close()
    with pytest.raises(StoreError, match="closed"):
        await q.call(store.list_sessions)


def test_batch_interrupted_by_a_base_exception_leaves_no_transaction_open(store):
    """A KeyboardInterrupt inside a batch rolls SQLite's transaction back before it propagates."""
    sid = store.create_session()["id"]

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.batch([lambda: begin(store, sid, "r1"), interrupted])
    assert not store._db.in_transaction


def test_failure_names_sqlite_errors_as_store_failures(store):
    """An sqlite3 error that escaped the store's methods is a failure of the database, under the call's name."""
    exc = sqlite3.OperationalError("disk I/O error")
    failure = store.failure(exc, "raw")
    assert isinstance(failure, StoreFailure) and failure.op == "raw" and failure.reason == "disk I/O error"
    assert store.failure(sqlite3.IntegrityError("x"), "y").op == "y"
    assert store.failure(OSError(28, "No space left on device"), "z") is None


def test_the_front_does_not_know_the_engine():
    """No module of the front imports sqlite3, psycopg or a backend module: it sees navi_actor.store's interface only."""
    modules = project_modules()
    leaks = {}
    for name, path in modules.items():
        if name.startswith("navi_actor.front"):
            bad = {m for m in imports_of(name, path)
                   if m.split(".")[0] in ("sqlite3", "psycopg") or (m in modules and m.startswith("navi_actor.store."))}
            if bad:
                leaks[name] = sorted(bad)
    assert not leaks, f"the front reaches past the store's interface: {leaks}"


# ── where the store is: open_store and sqlite:/// URLs ────────────────────


def test_sqlite_urls_name_a_file_by_its_absolute_path():
    assert str(sqlite_path("sqlite:///var/lib/navi/navi.sqlite3")) == "/var/lib/navi/navi.sqlite3"
    assert str(sqlite_path("SQLITE:///tmp/a%20b.db")) == "/tmp/a b.db"


@pytest.mark.parametrize("url, says", [
    ("mysql://navi@db:3306/navi", "use sqlite:///PATH or postgresql://"),
    ("/var/lib/navi/navi.sqlite3", "use sqlite:///PATH or postgresql://"),
    ("sqlite://host/x.db", "absolute path"),
    ("sqlite://relative.db", "absolute path"),
    ("sqlite:///tmp/x.db?mode=ro", "no query"),
    ("sqlite:///", "names a folder"),
    ("sqlite:///tmp/..", "names a folder"),
])
def test_other_store_urls_are_refused_saying_what_is_supported(tmp_path, url, says):
    with pytest.raises(StoreError, match=says.replace("?", r"\?")):
        open_store(tmp_path / "data", url)
    assert not (tmp_path / "data").exists()


def test_open_store_from_a_url_makes_its_folder_and_file_private(tmp_path):
    """sqlite:///PATH opens that file (its new folder 0700, the file 0600); the data folder is not used."""
    db = tmp_path / "db" / "here.sqlite3"
    s = open_store(tmp_path / "data", f"sqlite://{db}")
    try:
        sid = s.create_session("by url")["id"]
    finally:
        s.close()
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert not (tmp_path / "data").exists()
    again = SQLiteStore(db)
    try:
        assert again.get_session(sid)["title"] == "by url"
    finally:
        again.close()


def test_a_postgresql_url_without_psycopg_says_what_to_install(tmp_path, monkeypatch):
    """Where psycopg is not installed, a postgresql:// store is refused with the pip command that adds it."""
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(StoreError, match=r"pip install 'navi-actor\[postgres\]'"):
        open_store(tmp_path / "data", "postgresql://navi@127.0.0.1:1/navi")
