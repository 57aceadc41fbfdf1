"""The contract every session store backend must pass (`navi_actor.store.interface.SessionStore`).

Subclass `StoreContract` as ``Test<Backend>`` and give it a ``backend``
fixture: a function that opens a store on one fresh database each time it
is called (the same database for every call within a test, so that a second
store sees what the first one committed), and closes what it opened at the
end of the test. `tests/test_store_contract.py` runs it against SQLite.

Nothing here reaches into a backend: what a test sees, it sees through the
interface. Engine-specific checks (pragmas, files, migrations of old files,
counted commits) stay in the backend's own tests (`tests/test_store.py`).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from navi_actor.store import (
    ANY_OWNER, FINAL_STATUSES, RunNotRunning, SessionNotFound, SessionStore, StoreError, StoreFailure,
    valid_session_id,
)

from tests.store_contract_queue import QueueContract

INVALID_IDS = ("a/b", "", "x" * 65, "a;DROP TABLE sessions", "../x")


def begin(store: SessionStore, sid: str, rid: str, content: str = "hello", **kw: Any) -> int:
    kw.setdefault("agent_content", content)
    return store.begin_run(sid, rid, content=content, **kw)


class StoreContract(QueueContract):
    """What the front relies on, method by method. Needs a ``backend`` fixture (see the module).

    The queue's part is `tests/store_contract_queue.QueueContract`."""

    @pytest.fixture
    def store(self, backend: Callable[[], SessionStore]) -> SessionStore:
        return backend()

    # ── the store itself ────────────────────────────────────────────────────

    def test_is_a_session_store(self, store):
        """The backend implements the whole Protocol."""
        assert isinstance(store, SessionStore)

    def test_reopening_keeps_everything(self, store, backend):
        """What a store committed is all there, the same, for a store opened afterwards on its database."""
        sid = store.create_session(owner="alice")["id"]
        begin(store, sid, "r1", content="persist me")
        store.finish_run("r1", status="done", content="answer", last_seq=5, stats={"k": 1},
                         tool_calls=[{"tool": "t", "args": {"a": 1}, "result": "ok", "success": True}])
        begin(store, sid, "r2", content="still going")
        store.checkpoint_runs([("r2", "so far", 8)])
        before = store.get_session_detail(sid)
        listed = store.list_sessions()
        store.close()
        store.close()  # idempotent
        other = backend()
        assert other.get_session_detail(sid) == before
        assert other.list_sessions() == listed
        assert other.running_runs() == [{"id": "r2", "session_id": sid, "first_seq": 6, "last_seq": 8}]

    def test_a_closed_store_refuses_every_call(self, store):
        """After close(), every method raises StoreError, and batch fails every call."""
        sid = store.create_session()["id"]
        store.close()
        calls = [
            lambda: store.create_session(), lambda: store.get_session(sid), lambda: store.list_sessions(),
            lambda: store.get_session_detail(sid), lambda: store.delete_session(sid),
            lambda: store.history(sid), lambda: begin(store, sid, "r1"), lambda: store.checkpoint_runs([("r1", "", 1)]),
            lambda: store.finish_run("r1", status="done", content="", last_seq=1),
            lambda: store.recover_interrupted(), lambda: store.running_runs(), lambda: store.probe(),
        ]
        for call in calls:
            with pytest.raises(StoreError):
                call()
        outcomes = store.batch([store.list_sessions, store.running_runs])
        assert [ok for ok, _ in outcomes] == [False, False]
        assert all(isinstance(exc, StoreError) for _, exc in outcomes)

    def test_usable_from_another_thread(self, store):
        """The store can be called from a thread other than the one that opened it."""
        out: list[dict] = []
        t = threading.Thread(target=lambda: out.append(store.create_session("t")))
        t.start()
        t.join()
        assert store.get_session(out[0]["id"])["title"] == "t"

    def test_probe_writes_nothing_visible(self, store):
        """probe() succeeds on a healthy store and changes no session, run or message."""
        sid = store.create_session("p")["id"]
        begin(store, sid, "r1")
        before = (store.list_sessions(), store.get_session_detail(sid), store.running_runs())
        assert store.probe() is None
        assert (store.list_sessions(), store.get_session_detail(sid), store.running_runs()) == before

    def test_failure_tells_the_database_failing_from_a_refusal(self, store):
        """failure() keeps a StoreFailure as it is and gives None for refusals and bugs."""
        failed = StoreFailure("finish_run", "database or disk is full")
        assert store.failure(failed, "finish_run") is failed
        for exc in (SessionNotFound("x"), RunNotRunning("x"), StoreError("x"), ValueError("bug"), KeyError("k")):
            assert store.failure(exc, "begin_run") is None

    # ── sessions ────────────────────────────────────────────────────────────

    def test_create_and_get_session(self, store):
        """A created session has a fresh 32-hex id, last_seq 0, and is returned unchanged by get_session."""
        s = store.create_session("My title", owner="alice")
        assert set(s) == {"id", "title", "created_at", "updated_at", "last_seq", "owner"}
        assert len(s["id"]) == 32 and int(s["id"], 16) >= 0 and valid_session_id(s["id"])
        assert s["title"] == "My title" and s["last_seq"] == 0 and s["owner"] == "alice"
        assert s["created_at"] == s["updated_at"]
        assert store.get_session(s["id"]) == s
        untitled = store.create_session()
        assert untitled["title"] is None and untitled["owner"] is None and untitled["id"] != s["id"]
        assert store.get_session("0" * 32) is None

    def test_invalid_session_ids_are_missing_sessions(self, store):
        """Invalid ids give None/False/[] (SessionNotFound for begin_run) instead of reaching the database."""
        for bad in INVALID_IDS:
            assert store.get_session(bad) is None
            assert store.get_session_detail(bad) is None
            assert store.delete_session(bad) is False
            assert store.history(bad) == []
            with pytest.raises(SessionNotFound):
                begin(store, bad, "r-" + str(len(bad)))
        assert store.running_runs() == []

    def test_list_sessions_most_recently_updated_first(self, store):
        """list_sessions orders by updated_at (newest first, ties: created last first) and pages with limit/offset."""
        made = [store.create_session(name)["id"] for name in "abcd"]
        begin(store, made[0], "r1")  # bumps a's updated_at
        stamps = {sid: store.get_session(sid)["updated_at"] for sid in made}
        assert stamps[made[0]] >= stamps[made[3]]
        expected = sorted(made, key=lambda sid: (stamps[sid], made.index(sid)), reverse=True)
        assert [s["id"] for s in store.list_sessions()] == expected
        assert [s["id"] for s in store.list_sessions(limit=2, offset=1)] == expected[1:3]
        assert [s["id"] for s in store.list_sessions(limit=10, offset=3)] == expected[3:]
        assert store.list_sessions(limit=0) == [] and store.list_sessions(limit=-1) == []
        assert [s["id"] for s in store.list_sessions(offset=-5)] == expected
        assert store.list_sessions()[0] == store.get_session(expected[0])

    def test_owners_filter_lists_and_are_kept_on_every_dict(self, store):
        """list_sessions gives one owner's sessions, the unowned ones, or (ANY_OWNER, the default) all of them."""
        a = store.create_session("a", owner="alice")
        b = store.create_session("b", owner="bob")
        n = store.create_session("n")
        assert [s["id"] for s in store.list_sessions(owner="alice")] == [a["id"]]
        assert [s["id"] for s in store.list_sessions(owner="bob")] == [b["id"]]
        assert [s["id"] for s in store.list_sessions(owner=None)] == [n["id"]]
        assert store.list_sessions(owner="nobody") == []
        assert {s["id"] for s in store.list_sessions()} == {a["id"], b["id"], n["id"]}
        assert {s["id"] for s in store.list_sessions(owner=ANY_OWNER)} == {a["id"], b["id"], n["id"]}
        # The front hides another user's session by its owner: every dict must carry it.
        assert store.get_session(a["id"])["owner"] == "alice"
        assert store.get_session_detail(b["id"])["owner"] == "bob"
        assert store.get_session_detail(n["id"])["owner"] is None

    def test_detail_lists_messages_in_order_and_runs_oldest_first(self, store):
        """get_session_detail: the session's dict, its messages in writing order, its runs oldest first."""
        sid = store.create_session("d", owner="o")["id"]
        begin(store, sid, "r1", content="first", images=2, files=[{"name": "f.txt"}])
        store.finish_run("r1", status="done", content="one", last_seq=4, error=None, stats={"ms": 1},
                         tool_calls=[{"tool": "read", "args": {}, "result": "x", "success": True}])
        begin(store, sid, "r2", content="second")
        d = store.get_session_detail(sid)
        assert {k: d[k] for k in ("id", "title", "owner", "last_seq")} == {"id": sid, "title": "d", "owner": "o",
                                                                         "last_seq": 4}
        msgs = d["messages"]
        assert [(m["role"], m["run_id"]) for m in msgs] == [("user", "r1"), ("tool", "r1"), ("assistant", "r1"),
                                                            ("user", "r2")]
        assert [m["id"] for m in msgs] == sorted(m["id"] for m in msgs) and len({m["id"] for m in msgs}) == 4
        assert all(isinstance(m["created_at"], float) for m in msgs)
        assert msgs[0]["content"] == "first" and msgs[0]["images"] == 2 and msgs[0]["files"] == [{"name": "f.txt"}]
        assert [r["id"] for r in d["runs"]] == ["r1", "r2"]
        assert set(d["runs"][0]) == {"id", "status", "started_at", "ended_at", "first_seq", "last_seq", "error",
                                     "error_code", "stats"}
        assert d["runs"][0]["status"] == "done" and d["runs"][0]["stats"] == {"ms": 1}
        r2 = d["runs"][1]
        assert r2["status"] == "running" and r2["ended_at"] is None and r2["first_seq"] == 5
        assert r2["stats"] is None and r2["last_seq"] is None

    def test_delete_session_takes_its_runs_and_messages(self, store):
        """delete_session removes the session, its runs and messages (True only once); others are untouched."""
        sid = store.create_session()["id"]
        other = store.create_session()["id"]
        begin(store, sid, "r1")
        store.finish_run("r1", status="done", content="hi", last_seq=3,
                         tool_calls=[{"tool": "t", "args": {}, "result": "ok", "success": True}])
        begin(store, sid, "r2")
        begin(store, other, "r3")
        kept = store.get_session_detail(other)
        assert store.delete_session(sid) is True
        assert store.delete_session(sid) is False
        assert store.get_session(sid) is None and store.get_session_detail(sid) is None
        assert store.history(sid) == []
        assert [r["id"] for r in store.running_runs()] == ["r3"]
        with pytest.raises(RunNotRunning):
            store.finish_run("r2", status="done", content="", last_seq=9)
        assert store.recover_interrupted(keep=["r3"]) == []
        assert store.get_session_detail(other) == kept
        with pytest.raises(SessionNotFound):
            begin(store, sid, "r4")

    def test_message_data_never_overrides_base_keys(self, store):
        """A message's id, role, content, run_id and created_at are its own, whatever its data holds."""
        sid = store.create_session()["id"]
        begin(store, sid, "r1")
        store.finish_run("r1", status="done", content="c", last_seq=1,
                         tool_calls=[{"tool": "t", "args": {}, "result": "r", "success": True,
                                      "metadata": {"id": "x", "role": "y"}}])
        for m in store.get_session_detail(sid)["messages"]:
            assert m["run_id"] == "r1" and isinstance(m["id"], int) and m["role"] in ("user", "tool", "assistant")

    # ── history ─────────────────────────────────────────────────────────────

    def test_history_is_what_the_agent_reads(self, store):
        """history: agent_content for user turns, tool and assistant data, no ids, running turns left out."""
        sid = store.create_session()["id"]
        begin(store, sid, "r1", content="see file", agent_content="see file\n[attached: a.txt]",
              images=1, files=[{"name": "a.txt"}])
        assert store.history(sid) == []
        store.finish_run("r1", status="done", content="done reading", last_seq=2, thinking="hmm",
                         stats={"tokens": 5},
                         tool_calls=[{"tool": "read", "args": {"p": "a"}, "result": {"n": 1}, "success": True}])
        begin(store, sid, "r2", content="next")
        h = store.history(sid)
        assert [m["role"] for m in h] == ["user", "tool", "assistant"]
        assert h[0] == {"role": "user", "content": "see file\n[attached: a.txt]", "images": 1,
                        "files": [{"name": "a.txt"}]}
        assert h[1]["content"] == '{"n": 1}' and h[1]["tool"] == "read" and h[1]["args"] == {"p": "a"}
        assert h[1]["success"] is True and h[1]["is_subagent"] is False
        assert h[2]["content"] == "done reading" and h[2]["thinking"] == "hmm"
        assert h[2]["stats"] == {"tokens": 5} and h[2]["status"] == "done"
        for m in h:
            assert not {"id", "created_at", "run_id", "agent_content"} & m.keys()
        store.finish_run("r2", status="stopped", content="cut", last_seq=5)
        assert [m["content"] for m in store.history(sid)][3:] == ["next", "cut"]

    # ── runs ────────────────────────────────────────────────────────────────

    def test_begin_run_returns_the_seq_base_and_titles_the_session(self, store):
        """begin_run returns the session's last_seq, first_seq is base+1, and an untitled session gets a title."""
        s = store.create_session()
        long_line = "  " + "x" * 100 + "\nsecond line"
        assert begin(store, s["id"], "r1", content=long_line) == 0
        detail = store.get_session_detail(s["id"])
        assert detail["title"] == "x" * 60
        assert detail["updated_at"] >= s["updated_at"]
        assert detail["runs"][0]["status"] == "running" and detail["runs"][0]["first_seq"] == 1
        user = detail["messages"][0]
        assert user["role"] == "user" and user["content"] == long_line and user["run_id"] == "r1"
        assert user["images"] == 0 and user["files"] == []
        store.finish_run("r1", status="done", content="ok", last_seq=7)
        assert begin(store, s["id"], "r2", content="another") == 7
        detail = store.get_session_detail(s["id"])
        assert detail["title"] == "x" * 60  # an existing title is kept
        assert detail["runs"][1]["first_seq"] == 8

    def test_begin_run_keeps_a_given_title(self, store):
        sid = store.create_session("Named")["id"]
        begin(store, sid, "r1", content="something else")
        assert store.get_session(sid)["title"] == "Named"
        blank = store.create_session()["id"]
        begin(store, blank, "r2", content="   \n  ")
        assert not store.get_session(blank)["title"]

    def test_begin_run_refusals_write_nothing(self, store):
        """A missing session raises SessionNotFound, a reused run id StoreError; neither leaves a trace."""
        with pytest.raises(SessionNotFound):
            begin(store, "0" * 32, "r1")
        assert store.running_runs() == []
        sid = store.create_session()["id"]
        begin(store, sid, "r1")
        before = store.get_session_detail(sid)
        with pytest.raises(StoreError) as exc:
            begin(store, sid, "r1", content="again")
        assert not isinstance(exc.value, StoreFailure) and "already exists" in str(exc.value)
        assert store.get_session_detail(sid) == before

    def test_a_begun_run_is_durable_at_once(self, store, backend):
        """Invariant 4: once begin_run returns, a store opened afterwards sees the message and the running run."""
        sid = store.create_session()["id"]
        begin(store, sid, "r1", content="keep me")
        other = backend()
        assert other.running_runs() == [{"id": "r1", "session_id": sid, "first_seq": 1, "last_seq": None}]
        assert other.get_session_detail(sid)["messages"][0]["content"] == "keep me"

    def test_checkpoint_keeps_the_latest_text_of_running_runs_only(self, store):
        """checkpoint_runs updates running runs; finished and unknown ones are left as they are."""
        sid = store.create_session()["id"]
        begin(store, sid, "r1")
        store.finish_run("r1", status="done", content="final", last_seq=4)
        begin(store, sid, "r2")
        store.checkpoint_runs([])
        store.checkpoint_runs([("r2", "one", 6), ("r1", "stale", 99), ("unknown", "x", 1)])
        store.checkpoint_runs([("r2", "one two", 7)])
        runs = {r["id"]: r for r in store.get_session_detail(sid)["runs"]}
        assert runs["r1"]["last_seq"] == 4 and runs["r1"]["status"] == "done"
        assert runs["r2"]["last_seq"] == 7 and runs["r2"]["status"] == "running"
        assert store.get_session_detail(sid)["messages"][1]["content"] == "final"
        store.finish_run("r2", status="failed", content=None, last_seq=8, error="boom", error_code="llm_error")
        assert store.get_session_detail(sid)["messages"][-1]["content"] == "one two"  # the checkpoint's

    @pytest.mark.parametrize("status", FINAL_STATUSES)
    def test_finish_run_writes_tools_then_the_answer(self, store, status):
        """finish_run (any final status) writes tool messages then the answer, closes the run, bumps last_seq."""
        sid = store.create_session()["id"]
        begin(store, sid, "r1")
        calls = [
            {"tool": "read", "args": {"path": "x"}, "result": "text", "success": True},
            {"tool": "ask", "args": {}, "result": {"n": 1}, "success": False, "is_subagent": True,
             "metadata": {"m": 1}},
        ]
        store.finish_run("r1", status=status, content="partial", last_seq=12, tool_calls=calls,
                         error="boom", error_code="llm_error", stats={"ms": 3}, thinking="t")
        d = store.get_session_detail(sid)
        msgs = d["messages"]
        assert [m["role"] for m in msgs] == ["user", "tool", "tool", "assistant"]
        assert msgs[1]["content"] == "text" and msgs[1]["tool"] == "read" and msgs[1]["args"] == {"path": "x"}
        assert msgs[1]["success"] is True and msgs[1]["is_subagent"] is False
        assert msgs[2]["content"] == '{"n": 1}' and msgs[2]["is_subagent"] is True and msgs[2]["metadata"] == {"m": 1}
        a = msgs[3]
        assert a["content"] == "partial" and a["status"] == status and a["thinking"] == "t"
        assert a["error"] == "boom" and a["error_code"] == "llm_error" and a["stats"] == {"ms": 3}
        run = d["runs"][0]
        assert run["status"] == status and run["last_seq"] == 12 and run["ended_at"] >= run["started_at"]
        assert run["error"] == "boom" and run["error_code"] == "llm_error" and run["stats"] == {"ms": 3}
        assert d["last_seq"] == 12
        assert store.running_runs() == []

    def test_a_result_is_never_written_twice(self, store):
        """A second finish_run, or one for an unknown run, raises RunNotRunning and writes nothing."""
        sid = store.create_session()["id"]
        begin(store, sid, "r1")
        store.finish_run("r1", status="stopped", content="a", last_seq=2)
        before = store.get_session_detail(sid)
        with pytest.raises(RunNotRunning):
            store.finish_run("r1", status="done", content="b", last_seq=3)
        with pytest.raises(RunNotRunning):
            store.finish_run("unknown", status="done", content="b", last_seq=3)
        assert store.get_session_detail(sid) == before
        assert before["runs"][0]["status"] == "stopped" and before["last_seq"] == 2

    def test_finish_run_refuses_a_status_that_is_not_final(self, store):
        sid = store.create_session()["id"]
        begin(store, sid, "r1")
        for bad in ("running", "weird", ""):
            with pytest.raises(StoreError) as exc:
                store.finish_run("r1", status=bad, content="", last_seq=1)
            assert not isinstance(exc.value, (RunNotRunning, StoreFailure))
        assert [r["id"] for r in store.running_runs()] == ["r1"]
        assert len(store.get_session_detail(sid)["messages"]) == 1

    def test_finish_run_never_lowers_the_sessions_last_seq(self, store):
        sid = store.create_session()["id"]
        begin(store, sid, "r1")
        store.finish_run("r1", status="done", content="", last_seq=50)
        begin(store, sid, "r2")
        store.finish_run("r2", status="done", content="", last_seq=10)
        assert store.get_session(sid)["last_seq"] == 50

    def test_running_runs_oldest_first(self, store):
        """running_runs lists the runs still running, oldest first, with their seqs."""
        a, b = store.create_session()["id"], store.create_session()["id"]
        begin(store, b, "r1")
        begin(store, a, "r2")
        begin(store, b, "r3")  # the store does not refuse it: the front's busy guard does, before
        store.finish_run("r1", status="done", content="", last_seq=3)
        store.checkpoint_runs([("r3", "x", 9)])
        assert store.running_runs() == [{"id": "r2", "session_id": a, "first_seq": 1, "last_seq": None},
                                        {"id": "r3", "session_id": b, "first_seq": 1, "last_seq": 9}]

    def test_recover_interrupted_ends_every_running_run_with_its_checkpoint(self, store):
        """Recovery finishes running runs as interrupted with their text and jumps last_seq by the gap."""
        s1, s2 = store.create_session()["id"], store.create_session()["id"]
        begin(store, s1, "r1")
        begin(store, s2, "r2")
        store.checkpoint_runs([("r1", "half an ans", 9)])
        assert store.recover_interrupted(reason="crash", seq_gap=1000) == ["r1", "r2"]
        assert store.running_runs() == []
        d1 = store.get_session_detail(s1)
        assert d1["runs"][0]["status"] == "interrupted"
        assert d1["runs"][0]["error"] == "crash" and d1["runs"][0]["error_code"] == "interrupted"
        a = d1["messages"][-1]
        assert a["role"] == "assistant" and a["content"] == "half an ans"
        assert a["status"] == "interrupted" and a["error_code"] == "interrupted"
        assert d1["last_seq"] == 9 + 1000
        d2 = store.get_session_detail(s2)
        assert d2["messages"][-1]["content"] == ""
        assert d2["last_seq"] == 1 + 1000  # no checkpoint: first_seq + gap
        assert store.recover_interrupted() == []
        assert begin(store, s1, "r3") == 1009  # above anything a client could have seen
        assert [m["role"] for m in store.history(s1)] == ["user", "assistant"]
        with pytest.raises(RunNotRunning):
            store.finish_run("r1", status="done", content="late", last_seq=10)

    def test_recover_interrupted_keeps_the_runs_named(self, store):
        """Runs named in keep (an actor still runs them) stay running; the others are interrupted."""
        a, b = store.create_session()["id"], store.create_session()["id"]
        begin(store, a, "run-a")
        begin(store, b, "run-b")
        assert store.recover_interrupted("gone", keep={"run-a"}) == ["run-b"]
        assert [r["id"] for r in store.running_runs()] == ["run-a"]
        assert store.get_session(a)["last_seq"] == 0

    # ── group commit ────────────────────────────────────────────────────────

    def test_batch_gives_each_call_its_own_outcome(self, store, backend):
        """One outcome per call, in order; a refused call's writes are undone, the others' are durable."""
        a, b = store.create_session()["id"], store.create_session()["id"]

        def half_done_then_refused() -> None:
            store.create_session("half")  # written, then undone with this call
            raise StoreError("refused after writing")

        def history_then_begin() -> tuple[int, list]:  # what the front's turn start does
            return begin(store, b, "r3", content="third"), store.history(b)

        outcomes = store.batch([
            lambda: begin(store, a, "r1", content="first"),
            lambda: begin(store, "0" * 32, "r2"),
            half_done_then_refused,
            lambda: store.finish_run("nope", status="done", content="", last_seq=1),
            history_then_begin,
            lambda: store.history(a),
        ])
        assert [ok for ok, _ in outcomes] == [True, False, False, False, True, True]
        assert outcomes[0][1] == 0 and outcomes[4][1] == (0, [])
        assert isinstance(outcomes[1][1], SessionNotFound)
        assert str(outcomes[2][1]) == "refused after writing"
        assert isinstance(outcomes[3][1], RunNotRunning)
        assert outcomes[5][1] == []  # the run it reads is still running
        other = backend()
        assert {r["id"] for r in other.running_runs()} == {"r1", "r3"}
        assert sorted(s["id"] for s in other.list_sessions()) == sorted([a, b])

    def test_batch_of_none_or_one(self, store):
        assert store.batch([]) == []
        (ok, made), = store.batch([lambda: store.create_session("one")])
        assert ok and store.get_session(made["id"])["title"] == "one"
        (ok, exc), = store.batch([lambda: begin(store, "0" * 32, "r1")])
        assert not ok and isinstance(exc, SessionNotFound)

    def test_a_call_that_fails_with_any_exception_fails_alone(self, store):
        """A bug in one call (not a store error) fails that call; the calls beside it still succeed, once."""
        sid = store.create_session()["id"]

        def bug() -> None:
            raise ValueError("a bug, not a refusal")

        outcomes = store.batch([lambda: begin(store, sid, "r1"), bug, lambda: store.create_session("after")["id"]])
        assert outcomes[0] == (True, 0)
        assert not outcomes[1][0] and isinstance(outcomes[1][1], ValueError)
        assert outcomes[2][0] and store.get_session(outcomes[2][1])["title"] == "after"
        assert [r["id"] for r in store.running_runs()] == ["r1"]  # written once, not twice
        assert len(store.list_sessions()) == 2
        assert len(store.get_session_detail(sid)["messages"]) == 1

    def test_a_base_exception_in_a_batch_keeps_nothing_of_it(self, store, backend):
        """A KeyboardInterrupt inside a batch propagates, nothing of the batch is kept, and the store goes on."""
        sid = store.create_session()["id"]

        def interrupted() -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            store.batch([lambda: begin(store, sid, "r1"), interrupted])
        assert store.running_runs() == []
        begin(store, sid, "r2")
        assert [r["id"] for r in backend().running_runs()] == ["r2"]
