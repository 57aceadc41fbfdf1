"""Nodes sharing one PostgreSQL store, at the store's level: leases, fencing, the sweeper, stop/kill requests.

Each "node" here is a PostgresStore (and, where it needs one, a PgNode) with
its own node id on one real database; the functional tests run real servers.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from navi_actor.store import LeaseLost, RunNotRunning, SessionBusy, open_store
from navi_actor.store.pgcluster import LOOKUP_IDLE, SWEEP_LOCK, PgNode


def wait_until(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


@pytest.fixture
def nodes(pg_url):
    """``nodes("a")`` → a store that is node "a", registered alive with a 0.5 s lease TTL."""
    opened = []

    def make(node_id: str, ttl: float = 0.5):
        store = open_store("/nonexistent", pg_url, node_id=node_id)
        opened.append(store)
        beat(pg_url, node_id, ttl)
        return store

    # Nodes get a TTL's grace after PostgreSQL starts (to reconnect after a restart): let it pass.
    wait_until(lambda: _past_grace(pg_url, 0.5), what="0.5 s since PostgreSQL started")
    yield make
    for store in opened:
        store.close()


def beat(url: str, node_id: str, ttl: float = 0.5, age: float = 0.0) -> None:
    """Write node_id's heartbeat as it was ``age`` seconds ago."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO nodes (node_id, incarnation, lease_ttl, heartbeat_at)"
                     " VALUES (%s, 'test', %s, now() - make_interval(secs => %s))"
                     " ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at,"
                     " lease_ttl = EXCLUDED.lease_ttl", (node_id, ttl, age))


def lease(url: str, sid: str) -> tuple:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT node_id, generation FROM leases WHERE session_id = %s", (sid,)).fetchone()


def begin(store, sid, rid, content="hi"):
    return store.begin_run(sid, rid, content=content, agent_content=content)


def test_a_turn_on_one_live_node_keeps_every_other_node_out(nodes, pg_url):
    """The busy guard across nodes: while node a runs a turn of a session, node b's begin_run is refused."""
    a, b = nodes("a", ttl=30), nodes("b", ttl=30)
    sid = a.create_session()["id"]
    begin(a, sid, "r1")
    assert lease(pg_url, sid) == ("a", 1)
    with pytest.raises(SessionBusy) as exc:
        begin(b, sid, "r2")
    assert exc.value.node == "a" and lease(pg_url, sid) == ("a", 1)
    assert [r["id"] for r in b.running_runs()] == [] and [r["id"] for r in a.running_runs()] == ["r1"]
    a.finish_run("r1", status="done", content="one", last_seq=3)
    assert begin(b, sid, "r2") == 3  # idle now: b takes the session, under a new generation
    assert lease(pg_url, sid) == ("b", 2)
    b.finish_run("r2", status="done", content="two", last_seq=5)
    begin(b, sid, "r3")  # b holds it already: the same generation
    assert lease(pg_url, sid) == ("b", 2)


def test_a_dead_nodes_turn_is_ended_and_its_late_writes_are_refused(nodes, pg_url):
    """Node a stops renewing; b takes the session (a's turn ends interrupted); a's checkpoint and result are refused."""
    a, b = nodes("a"), nodes("b")
    sid = a.create_session()["id"]
    begin(a, sid, "r1", "question")
    a.checkpoint_runs([("r1", "half an answer", 9)])
    beat(pg_url, "a", age=60)  # a is paused: its heartbeat is a minute old
    base = begin(b, sid, "r2", "again")
    assert base == 9 + 10**9 and lease(pg_url, sid) == ("b", 2)
    a.checkpoint_runs([("r1", "late text", 12)])  # refused, silently
    with pytest.raises(LeaseLost):
        a.finish_run("r1", status="done", content="late answer", last_seq=14)
    b.checkpoint_runs([("r2", "new", base + 3)])
    b.finish_run("r2", status="done", content=None, last_seq=base + 4)
    d = b.get_session_detail(sid)
    assert [(r["id"], r["status"]) for r in d["runs"]] == [("r1", "interrupted"), ("r2", "done")]
    assert "(a) stopped answering" in d["runs"][0]["error"] and d["runs"][0]["error_code"] == "interrupted"
    assert [m["content"] for m in d["messages"]] == ["question", "half an answer", "again", "new"]


def test_a_late_result_after_another_node_took_the_lease_is_lease_lost(nodes, pg_url):
    """Fencing by generation: a run whose lease moved on (to generation 2) cannot be finished by its node."""
    a, b = nodes("a"), nodes("b")
    sid = a.create_session()["id"]
    begin(a, sid, "r1")
    with psycopg.connect(pg_url) as conn:  # as if b took the lease and its turn ended, while r1 stayed "running"
        conn.execute("UPDATE leases SET node_id = 'b', generation = 2 WHERE session_id = %s", (sid,))
    with pytest.raises(LeaseLost, match="generation 2"):
        a.finish_run("r1", status="done", content="late", last_seq=2)
    assert isinstance(LeaseLost("x"), RunNotRunning)  # a result is never written twice, whoever tries
    a.checkpoint_runs([("r1", "late", 2)])
    assert a.get_session_detail(sid)["runs"][0]["last_seq"] is None


def test_recovery_at_start_ends_only_this_nodes_turns(nodes):
    """A node that starts ends its own turns left running, never another live node's."""
    a, b = nodes("a", ttl=30), nodes("b", ttl=30)
    s1, s2 = a.create_session()["id"], a.create_session()["id"]
    begin(a, s1, "ra")
    begin(b, s2, "rb")
    assert b.recover_interrupted("b restarted") == ["rb"]
    assert [r["id"] for r in a.running_runs()] == ["ra"]


def test_the_sweeper_ends_dead_nodes_turns_once_on_one_node(nodes, pg_url):
    """The sweeper ends dead nodes' turns as interrupted; it works only while it holds the advisory lock."""
    a, b = nodes("a"), nodes("b", ttl=30)
    s1, s2 = a.create_session()["id"], b.create_session()["id"]
    begin(a, s1, "ra")
    begin(b, s2, "rb")
    a.checkpoint_runs([("ra", "so far", 4)])
    beat(pg_url, "a", age=60)
    sweeper = PgNode(pg_url, "c", lease_ttl=30)
    with psycopg.connect(pg_url) as other:  # another node is sweeping: it holds the lock
        other.execute("SELECT pg_advisory_xact_lock(%s)", (SWEEP_LOCK,))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert sweeper.sweep(conn) == []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert sweeper.sweep(conn) == ["ra"]
        assert sweeper.sweep(conn) == []
    assert [r["id"] for r in b.running_runs()] == ["rb"]  # b is alive
    last = a.get_session_detail(s1)["messages"][-1]
    assert last["status"] == "interrupted" and last["content"] == "so far"
    assert begin(b, s1, "r3") == 4 + 10**9


def test_stop_from_another_node_is_delivered_and_acknowledged(nodes, pg_url):
    """b asks for a stop of a's turn: a's listener runs it and records the outcome, which b's caller gets."""
    a = nodes("a", ttl=30)
    sid = a.create_session()["id"]
    begin(a, sid, "r1")
    got = []
    owner = PgNode(pg_url, "a", lease_ttl=30, on_control=lambda req: got.append(req) or "stopped")
    owner.start()
    other = PgNode(pg_url, "b", lease_ttl=30)
    other.start()
    try:
        wait_until(owner.listening.is_set, what="a's listener")
        t0 = time.monotonic()
        out = other.request(sid, "stop")
        assert out == {"delivered": True, "node": "a", "result": "stopped", "url": "", "run_id": "r1",
                       "first_seq": out["first_seq"]} and type(out["first_seq"]) is int
        assert time.monotonic() - t0 < 1.0
        assert [(r["session_id"], r["run_id"], r["op"], r["requested_by"]) for r in got] == [(sid, "r1", "stop", "b")]
        assert other.request("0" * 32, "kill") == {"delivered": False,
                                                   "reason": "no turn of this session runs on another node"}
        running = other.running()
        assert [(r["run_id"], r["node"]) for r in running] == [("r1", "a")]
    finally:
        owner.close()
        other.close()


def test_a_dropped_listener_is_reopened_and_pending_requests_are_served(nodes, pg_url):
    """The owner's LISTEN connection is killed: it comes back, and a request made meanwhile is still served."""
    a = nodes("a", ttl=30)
    sid = a.create_session()["id"]
    begin(a, sid, "r1")
    got = []
    owner = PgNode(pg_url, "a", lease_ttl=30, on_control=lambda req: got.append(req["op"]) or "killed")
    other = PgNode(pg_url, "b", lease_ttl=30)
    other.start()
    # A request made before the owner listens at all (its NOTIFY reaches nobody) ...
    early = threading.Thread(target=lambda: got.append(other.request(sid, "stop", timeout=10)))
    early.start()
    wait_until(lambda: _pending(pg_url) == 1, what="the durable request")
    owner.start()  # ... is served by the first scan
    early.join(15)
    try:
        assert got[0] == "stop" and got[1]["delivered"] is True
        wait_until(owner.listening.is_set, what="a's listener")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'navi-actor cluster a' AND query LIKE 'LISTEN%%'")
        out = other.request(sid, "kill", timeout=10)
        assert out["delivered"] is True and out["result"] == "killed" and got[-1] == "kill"
    finally:
        owner.close()
        other.close()


def test_lookups_reuse_kept_connections_and_survive_a_dropped_one(nodes, pg_url):
    """The front's lookups (the owner of a session, at every WebSocket connect; whether a run runs; the
    running turns) are short reads on kept connections: 100 of them open one connection. One that the
    server drops is replaced by the next call, which still answers; several callers at once get a
    connection each, and at most LOOKUP_IDLE are kept; close() closes them."""
    a = nodes("a", ttl=30)
    sid = a.create_session()["id"]
    begin(a, sid, "r1")
    b = PgNode(pg_url, "b", lease_ttl=30)  # not started: only its lookups open connections
    try:
        for _ in range(50):
            assert b.owner(sid)["run_id"] == "r1"
            assert b.run_running("r1")
        assert _backends(pg_url, "b") == 1 and b.lookup_connects == 1
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'navi-actor cluster b'")
        wait_until(lambda: _backends(pg_url, "b") == 0, what="the kept connection's end")
        assert [r["run_id"] for r in b.running()] == ["r1"]  # on a new connection, after the dropped one failed
        assert b.lookup_connects == 2

        barrier = threading.Barrier(8)
        answers = []

        def call() -> None:
            barrier.wait(10)
            answers.append(b.owner(sid)["node"])

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert answers == ["a"] * 8
        assert 1 <= _backends(pg_url, "b") <= LOOKUP_IDLE
    finally:
        b.close()
    wait_until(lambda: _backends(pg_url, "b") == 0, what="close() to close the kept connections")


def _backends(url: str, node_id: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (f"navi-actor cluster {node_id}",)).fetchone()[0]


def _pending(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM control WHERE acked_at IS NULL").fetchone()[0]


def _past_grace(url: str, ttl: float) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT now() > pg_postmaster_start_time() + make_interval(secs => %s)",
                            (ttl,)).fetchone()[0]
