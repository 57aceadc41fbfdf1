"""Tests for navi_actor.store (real SQLite files under tmp_path)."""

import sqlite3
import stat
import threading

import pytest

import navi_actor.store as store_mod
from navi_actor.store import (
    RUN_STATUSES, SCHEMA_VERSION, RunNotRunning, SessionNotFound, SessionStore,
    SQLiteStore, StoreError, open_store, valid_session_id,
)


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


def test_create_and_get_session(store):
    """A created session has a uuid4-hex id and is returned unchanged by get_session."""
    s = store.create_session("My title")
    assert len(s["id"]) == 32 and valid_session_id(s["id"])
    assert s["title"] == "My title" and s["last_seq"] == 0
    assert s["created_at"] == s["updated_at"]
    assert store.get_session(s["id"]) == s
    assert store.get_session("missing") is None


def test_invalid_session_id_returns_none(store):
    """Invalid ids give None/False/[] instead of raising."""
    for bad in ("a/b", "", "x" * 65, "a;DROP TABLE sessions"):
        assert store.get_session(bad) is None
        assert store.get_session_detail(bad) is None
        assert store.delete_session(bad) is False
        assert store.history(bad) == []


def test_list_sessions_most_recently_updated_first(store, monkeypatch):
    """list_sessions orders by updated_at descending and honours limit/offset."""
    ticks = iter(range(1000, 2000))
    monkeypatch.setattr(store_mod.time, "time", lambda: float(next(ticks)))
    a = store.create_session("a")
    b = store.create_session("b")
    c = store.create_session("c")
    begin(store, a["id"], "r1")  # bumps a's updated_at
    ids = [s["id"] for s in store.list_sessions()]
    assert ids == [a["id"], c["id"], b["id"]]
    assert [s["id"] for s in store.list_sessions(limit=1, offset=1)] == [c["id"]]


def test_delete_session_cascades(store, tmp_path):
    """Deleting a session removes its runs and messages and returns True only once."""
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


def test_begin_run_returns_base_and_sets_title(store):
    """begin_run returns the session's last_seq, records first_seq=base+1 and titles an untitled session."""
    s = store.create_session()
    long_line = "  " + "x" * 100 + "\nsecond line"
    assert begin(store, s["id"], "r1", content=long_line) == 0
    detail = store.get_session_detail(s["id"])
    assert detail["title"] == "x" * 60
    assert detail["updated_at"] >= s["updated_at"]
    assert detail["runs"][0]["status"] == "running"
    assert detail["runs"][0]["first_seq"] == 1
    user = detail["messages"][0]
    assert user["role"] == "user" and user["content"] == long_line and user["run_id"] == "r1"
    assert user["images"] == 0 and user["files"] == []

    store.finish_run("r1", status="done", content="ok", last_seq=7)
    assert begin(store, s["id"], "r2", content="another") == 7
    detail = store.get_session_detail(s["id"])
    assert detail["title"] == "x" * 60  # an existing title is kept
    assert detail["runs"][1]["first_seq"] == 8


def test_begin_run_keeps_given_title(store):
    """begin_run does not replace a non-empty title."""
    s = store.create_session("Named")
    begin(store, s["id"], "r1", content="something else")
    assert store.get_session(s["id"])["title"] == "Named"


def test_begin_run_missing_session_raises(store):
    """begin_run on a missing or invalid session raises SessionNotFound and writes nothing."""
    with pytest.raises(SessionNotFound):
        begin(store, "nope", "r1")
    with pytest.raises(SessionNotFound):
        begin(store, "bad/id", "r1")
    assert store.running_runs() == []


def test_begin_run_duplicate_run_id_raises(store):
    """Reusing a run id raises StoreError and leaves no extra user message."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    with pytest.raises(StoreError):
        begin(store, s["id"], "r1", content="again")
    assert len(store.get_session_detail(s["id"])["messages"]) == 1


def test_history_excludes_running_runs_and_uses_agent_content(store):
    """history gives the agent agent_content for user turns and skips turns still running."""
    s = store.create_session()
    begin(store, s["id"], "r1", content="see file", agent_content="see file\n[attached: a.txt]",
          images=1, files=[{"name": "a.txt"}])
    assert store.history(s["id"]) == []
    store.finish_run("r1", status="done", content="done reading", last_seq=2,
                     thinking="hmm", stats={"tokens": 5})
    begin(store, s["id"], "r2", content="next")
    h = store.history(s["id"])
    assert [m["role"] for m in h] == ["user", "assistant"]
    assert h[0] == {"role": "user", "content": "see file\n[attached: a.txt]",
                    "images": 1, "files": [{"name": "a.txt"}]}
    assert h[1]["content"] == "done reading" and h[1]["thinking"] == "hmm"
    assert h[1]["stats"] == {"tokens": 5} and h[1]["status"] == "done"
    for m in h:
        assert not {"id", "created_at", "run_id", "agent_content"} & m.keys()


def test_finish_run_writes_tool_and_assistant_messages(store):
    """finish_run stores tool messages then the assistant message, closes the run and bumps last_seq."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    calls = [
        {"tool": "read", "args": {"path": "x"}, "result": "text", "success": True},
        {"tool": "ask", "args": {}, "result": {"n": 1}, "success": False, "is_subagent": True},
    ]
    store.finish_run("r1", status="failed", content="partial", last_seq=12, tool_calls=calls,
                     error="boom", error_code="llm_error", stats={"ms": 3})
    d = store.get_session_detail(s["id"])
    msgs = d["messages"]
    assert [m["role"] for m in msgs] == ["user", "tool", "tool", "assistant"]
    assert msgs[0]["id"] < msgs[1]["id"] < msgs[2]["id"] < msgs[3]["id"]
    assert msgs[1]["content"] == "text" and msgs[1]["tool"] == "read"
    assert msgs[1]["args"] == {"path": "x"} and msgs[1]["success"] is True
    assert msgs[1]["is_subagent"] is False
    assert msgs[2]["content"] == '{"n": 1}' and msgs[2]["is_subagent"] is True
    a = msgs[3]
    assert a["content"] == "partial" and a["status"] == "failed"
    assert a["error"] == "boom" and a["error_code"] == "llm_error" and a["stats"] == {"ms": 3}
    run = d["runs"][0]
    assert run["status"] == "failed" and run["last_seq"] == 12 and run["ended_at"]
    assert run["error"] == "boom" and run["error_code"] == "llm_error"
    assert run["stats"] == {"ms": 3}
    assert d["last_seq"] == 12
    assert store.running_runs() == []


def test_message_data_never_overrides_base_keys(store):
    """Role-specific data cannot override a message's id, role, content, run_id or created_at."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    store.finish_run("r1", status="done", content="c", last_seq=1,
                     tool_calls=[{"tool": "t", "args": {}, "result": "r", "success": True}])
    for m in store.get_session_detail(s["id"])["messages"]:
        assert m["run_id"] == "r1" and isinstance(m["id"], int)


def test_finish_run_twice_raises(store):
    """A second finish_run for the same run raises RunNotRunning and writes nothing."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    store.finish_run("r1", status="stopped", content="a", last_seq=2)
    with pytest.raises(RunNotRunning):
        store.finish_run("r1", status="done", content="b", last_seq=3)
    with pytest.raises(RunNotRunning):
        store.finish_run("unknown", status="done", content="b", last_seq=3)
    d = store.get_session_detail(s["id"])
    assert len(d["messages"]) == 2 and d["last_seq"] == 2
    assert d["runs"][0]["status"] == "stopped"


def test_finish_run_rejects_bad_status(store):
    """finish_run refuses a status that is not a final one."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    for bad in ("running", "weird"):
        with pytest.raises(StoreError):
            store.finish_run("r1", status=bad, content="", last_seq=1)
    assert store.running_runs()[0]["id"] == "r1"


def test_finish_run_never_lowers_last_seq(store):
    """The session's last_seq is the max of its old value and the run's last_seq."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    store.finish_run("r1", status="done", content="", last_seq=50)
    begin(store, s["id"], "r2")
    store.finish_run("r2", status="done", content="", last_seq=10)
    assert store.get_session(s["id"])["last_seq"] == 50


def test_checkpoint_and_recover_interrupted(store):
    """Recovery finishes running runs as interrupted with their checkpointed content and jumps last_seq by the gap."""
    s1 = store.create_session()
    s2 = store.create_session()
    begin(store, s1["id"], "r1")
    begin(store, s2["id"], "r2")
    store.checkpoint_runs([("r1", "half an ans", 9)])
    assert {r["id"]: r["last_seq"] for r in store.running_runs()} == {"r1": 9, "r2": None}

    ids = store.recover_interrupted(reason="crash", seq_gap=1000)
    assert sorted(ids) == ["r1", "r2"]
    assert store.running_runs() == []
    d1 = store.get_session_detail(s1["id"])
    assert d1["runs"][0]["status"] == "interrupted"
    assert d1["runs"][0]["error"] == "crash" and d1["runs"][0]["error_code"] == "interrupted"
    a = d1["messages"][-1]
    assert a["role"] == "assistant" and a["content"] == "half an ans"
    assert a["status"] == "interrupted" and a["error_code"] == "interrupted"
    assert d1["last_seq"] == 9 + 1000
    d2 = store.get_session_detail(s2["id"])
    assert d2["messages"][-1]["content"] == ""
    assert d2["last_seq"] == 1 + 1000  # no checkpoint: first_seq + gap
    assert store.recover_interrupted() == []
    # The next turn's seqs start above anything a client could have seen.
    assert begin(store, s1["id"], "r3") == 1009
    assert [m["role"] for m in store.history(s1["id"])] == ["user", "assistant"]


def test_checkpoint_ignores_finished_runs(store):
    """checkpoint_runs does not touch a run that is no longer running."""
    s = store.create_session()
    begin(store, s["id"], "r1")
    store.finish_run("r1", status="done", content="final", last_seq=4)
    store.checkpoint_runs([("r1", "stale", 99), ("unknown", "x", 1)])
    run = store.get_session_detail(s["id"])["runs"][0]
    assert run["last_seq"] == 4 and run["status"] == "done"


def test_reopen_keeps_everything(tmp_path):
    """Data written before close() is all there after reopening the file."""
    d = tmp_path / "data"
    s = open_store(d)
    sess = s.create_session()
    begin(s, sess["id"], "r1", content="persist me")
    s.finish_run("r1", status="done", content="answer", last_seq=5, stats={"k": 1})
    begin(s, sess["id"], "r2", content="still going")
    s.checkpoint_runs([("r2", "so far", 8)])
    before = s.get_session_detail(sess["id"])
    s.close()
    s.close()  # idempotent

    s2 = open_store(d)
    try:
        assert s2.get_session_detail(sess["id"]) == before
        assert s2.running_runs() == [{"id": "r2", "session_id": sess["id"],
                                      "first_seq": 6, "last_seq": 8}]
    finally:
        s2.close()


def test_closed_store_raises(tmp_path):
    """Using a store after close() raises StoreError."""
    s = open_store(tmp_path)
    s.close()
    with pytest.raises(StoreError):
        s.list_sessions()


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


def test_usable_from_another_thread(store):
    """The store can be called from a thread other than the one that opened it."""
    out = []
    t = threading.Thread(target=lambda: out.append(store.create_session("t")))
    t.start()
    t.join()
    assert store.get_session(out[0]["id"])["title"] == "t"


def test_recover_interrupted_keeps_runs_still_alive(tmp_path):
    """Runs named in keep (an actor still runs them) are left running; the others are interrupted."""
    store = SQLiteStore(tmp_path / "db.sqlite3")
    a = store.create_session()["id"]
    b = store.create_session()["id"]
    store.begin_run(a, "run-a", content="x", agent_content="x")
    store.begin_run(b, "run-b", content="y", agent_content="y")
    assert store.recover_interrupted("gone", keep={"run-a"}) == ["run-b"]
    assert [r["id"] for r in store.running_runs()] == ["run-a"]


# ── schema version 2: owners ────────────────────────────────────────────────


def test_version_1_file_is_migrated_keeping_every_row(tmp_path):
    """A version 1 file gets the owner column (NULL for its sessions) and keeps its sessions, runs and messages."""
    d = tmp_path / "data"
    d.mkdir()
    conn = sqlite3.connect(d / "navi.sqlite3")
    for statement in store_mod._MIGRATIONS[1]:
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
        assert s._user_version() == SCHEMA_VERSION == 2
        assert s.get_session("old") == {"id": "old", "title": "Old chat", "created_at": 1.0, "updated_at": 2.0,
                                         "last_seq": 7, "owner": None}
        detail = s.get_session_detail("old")
        assert [m["content"] for m in detail["messages"]] == ["hi"] and detail["runs"][0]["id"] == "r1"
        assert s.begin_run("old", "r2", content="again", agent_content="again") == 7
        assert [x["id"] for x in s.list_sessions(owner=None)] == ["old"]
    finally:
        s.close()


def test_sessions_have_owners_and_lists_filter_by_owner(store):
    """create_session records the owner; list_sessions gives one owner's, the unowned, or (by default) all."""
    a = store.create_session("a", owner="alice")
    b = store.create_session("b", owner="bob")
    n = store.create_session("n")
    assert a["owner"] == "alice" and store.get_session(a["id"])["owner"] == "alice"
    assert store.get_session_detail(b["id"])["owner"] == "bob"
    assert [s["id"] for s in store.list_sessions(owner="alice")] == [a["id"]]
    assert [s["id"] for s in store.list_sessions(owner=None)] == [n["id"]]
    assert {s["id"] for s in store.list_sessions()} == {a["id"], b["id"], n["id"]}
    assert store.list_sessions(owner="nobody") == []


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


def test_batch_commits_once_and_each_call_keeps_its_own_outcome(store, counted):
    """Calls in a batch share one commit; a refused call changes nothing, the others are kept."""
    a, b = store.create_session()["id"], store.create_session()["id"]
    counted.commits = 0

    def half_done_then_refused():
        store.create_session("half")  # written, then rolled back with its savepoint
        raise StoreError("refused after writing")

    outcomes = store.batch([
        lambda: begin(store, a, "r1", content="first"),
        lambda: begin(store, "missing", "r2"),
        half_done_then_refused,
        lambda: store.finish_run("nope", status="done", content="", last_seq=1),
        lambda: begin(store, b, "r3", content="third"),
        lambda: store.history(a),
    ])
    assert counted.commits == 1
    assert [ok for ok, _ in outcomes] == [True, False, False, False, True, True]
    assert outcomes[0][1] == 0 and outcomes[4][1] == 0
    assert isinstance(outcomes[1][1], SessionNotFound)
    assert str(outcomes[2][1]) == "refused after writing"
    assert isinstance(outcomes[3][1], RunNotRunning)
    assert outcomes[5][1] == []  # the run it reads is still running
    other = reopen(store)
    try:
        assert {r["id"] for r in other.running_runs()} == {"r1", "r3"}
        assert [s["title"] for s in other.list_sessions()].count("half") == 0
        assert len(other.list_sessions()) == 2
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


def test_batch_on_a_closed_store_fails_every_call(tmp_path):
    s = open_store(tmp_path / "data")
    s.close()
    outcomes = s.batch([s.list_sessions, s.list_sessions])
    assert all(not ok and "closed" in str(exc) for ok, exc in outcomes)


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
    """A KeyboardInterrupt inside a batch propagates, nothing of the batch is kept, and the store goes on."""
    sid = store.create_session()["id"]

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.batch([lambda: begin(store, sid, "r1"), interrupted])
    assert not store._db.in_transaction
    assert store.running_runs() == []
    begin(store, sid, "r2")
    other = reopen(store)
    try:
        assert [r["id"] for r in other.running_runs()] == ["r2"]
    finally:
        other.close()
