"""The contract's part on the queue, client message ids and a session's if_busy.

Mixed into `tests/store_contract.StoreContract`, so every backend passes it.
Needs the same ``store`` and ``backend`` fixtures.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from navi_actor.store import QueueFull, SessionNotFound, SessionStore, StoreError


def enqueue(store: SessionStore, sid: str, mid: str, content: str = "later", **kw: Any) -> int:
    kw.setdefault("agent_content", content + " (agent)")
    kw.setdefault("limit", 10)
    return store.enqueue(sid, mid, content=content, **kw)


class QueueContract:
    def test_enqueue_keeps_messages_out_of_the_history_until_their_turn(self, store):
        """Queued messages are in the queue, in order, and in neither the history nor the messages."""
        sid = store.create_session()["id"]
        assert enqueue(store, sid, "m1", "first", images=["aGk="], files=[{"name": "a", "path": "/a"}],
                       client_message_id="c1") == 1
        assert enqueue(store, sid, "m2", "second") == 2
        queue = store.queue(sid)
        assert [(q["message_id"], q["position"], q["content"]) for q in queue] == [("m1", 1, "first"),
                                                                                 ("m2", 2, "second")]
        assert queue[0]["client_message_id"] == "c1" and queue[0]["images"] == 1
        assert queue[0]["files"] == [{"name": "a", "path": "/a"}] and queue[1]["client_message_id"] is None
        assert store.history(sid) == [] and store.get_session_detail(sid)["messages"] == []
        assert store.queued_sessions() == [sid]

    def test_at_head_goes_first(self, store):
        """An interrupting message (at_head) is next, ahead of those queued before it."""
        sid = store.create_session()["id"]
        enqueue(store, sid, "m1")
        enqueue(store, sid, "m2")
        assert enqueue(store, sid, "m0", at_head=True) == 1
        assert [q["message_id"] for q in store.queue(sid)] == ["m0", "m1", "m2"]

    def test_the_bound_is_checked_with_the_insert(self, store):
        """At ``limit`` queued messages, enqueue raises QueueFull and writes nothing."""
        sid = store.create_session()["id"]
        enqueue(store, sid, "m1", limit=2)
        enqueue(store, sid, "m2", limit=2)
        with pytest.raises(QueueFull) as err:
            enqueue(store, sid, "m3", limit=2)
        assert err.value.length == 2
        with pytest.raises(QueueFull):
            enqueue(store, sid, "m4", limit=0)
        assert [q["message_id"] for q in store.queue(sid)] == ["m1", "m2"]

    def test_two_writers_at_once_get_distinct_positions(self, store):
        """Writers racing from threads each get a position; none is given twice, the bound holds."""
        sid = store.create_session()["id"]
        got: list[Any] = []

        def write(i: int) -> None:
            try:
                got.append(enqueue(store, sid, f"m{i}", limit=6))
            except QueueFull:
                got.append("full")

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(p for p in got if p != "full") == [1, 2, 3, 4, 5, 6] and got.count("full") == 2

    def test_enqueue_refusals(self, store):
        """A missing session, a used message id, a seen client id: refused, nothing written."""
        sid = store.create_session()["id"]
        with pytest.raises(SessionNotFound):
            enqueue(store, "0" * 32, "m1")
        with pytest.raises(SessionNotFound):
            enqueue(store, "a/b", "m1")
        enqueue(store, sid, "m1", client_message_id="c1")
        with pytest.raises(StoreError):
            enqueue(store, sid, "m1")
        with pytest.raises(StoreError):
            enqueue(store, sid, "m2", client_message_id="c1")
        store.begin_run(sid, "r1", content="x", agent_content="x", client_message_id="c2")
        with pytest.raises(StoreError):
            enqueue(store, sid, "m3", client_message_id="c2")
        with pytest.raises(StoreError):
            enqueue(store, sid, "r1")
        with pytest.raises(StoreError):
            store.begin_run(sid, "r2", content="y", agent_content="y", client_message_id="c1")
        assert [q["message_id"] for q in store.queue(sid)] == ["m1"]
        other = store.create_session()["id"]
        assert enqueue(store, other, "m9", client_message_id="c1") == 1, "client ids are per session"

    def test_cancel(self, store):
        """cancel_queued takes one message out; unknown, another session's or begun ones: False."""
        sid, other = store.create_session()["id"], store.create_session()["id"]
        enqueue(store, sid, "m1")
        enqueue(store, sid, "m2")
        assert store.cancel_queued(other, "m1") is False
        assert store.cancel_queued(sid, "m1") is True
        assert store.cancel_queued(sid, "m1") is False
        assert store.cancel_queued(sid, "nope") is False and store.cancel_queued("a/b", "m2") is False
        assert [(q["message_id"], q["position"]) for q in store.queue(sid)] == [("m2", 1)]
        store.begin_queued(sid)
        assert store.cancel_queued(sid, "m2") is False
        assert store.queue(sid) == [] and store.queued_sessions() == []

    def test_begin_queued_moves_the_head_into_a_running_run(self, store):
        """The head leaves the queue and becomes a running run's user message, marked queued, in one step."""
        sid = store.create_session()["id"]
        store.begin_run(sid, "r0", content="now", agent_content="now")
        store.finish_run("r0", status="done", content="answer", last_seq=4)
        enqueue(store, sid, "m1", "first", images=["aGk="], client_message_id="c1")
        enqueue(store, sid, "m2", "second")
        begun = store.begin_queued(sid)
        assert begun == {"run_id": "m1", "base": 4, "content": "first", "agent_content": "first (agent)",
                         "images": ["aGk="], "files": [], "client_message_id": "c1"}
        assert [q["message_id"] for q in store.queue(sid)] == ["m2"]
        assert store.running_runs() == [{"id": "m1", "session_id": sid, "first_seq": 5, "last_seq": None}]
        user = store.get_session_detail(sid)["messages"][-1]
        assert user["role"] == "user" and user["run_id"] == "m1" and user["content"] == "first"
        assert user["queued"] is True and user["client_message_id"] == "c1" and user["images"] == 1
        assert [m["content"] for m in store.history(sid)] == ["now", "answer"], "a running turn is not history"
        store.finish_run("m1", status="done", content="a1", last_seq=6)
        assert [m["content"] for m in store.history(sid)] == ["now", "answer", "first (agent)", "a1"]
        assert store.begin_queued(sid)["run_id"] == "m2"
        assert store.begin_queued(sid) is None
        with pytest.raises(SessionNotFound):
            store.begin_queued("0" * 32)

    def test_find_client_message(self, store):
        """A client id is found queued (with its position), then as its run, with the run's outcome."""
        sid = store.create_session()["id"]
        assert store.find_client_message(sid, "c1") is None and store.find_client_message("a/b", "c1") is None
        enqueue(store, sid, "m0")
        enqueue(store, sid, "m1", client_message_id="c1")
        assert store.find_client_message(sid, "c1") == {"state": "queued", "message_id": "m1", "position": 2}
        store.cancel_queued(sid, "m0")
        assert store.find_client_message(sid, "c1")["position"] == 1
        store.begin_queued(sid)
        assert store.find_client_message(sid, "c1") == {"state": "run", "run_id": "m1", "status": "running",
                                                         "first_seq": 1, "last_seq": None}
        store.finish_run("m1", status="stopped", content="part", last_seq=3)
        assert store.find_client_message(sid, "c1")["status"] == "stopped"
        store.begin_run(sid, "r2", content="x", agent_content="x", client_message_id="c2")
        assert store.find_client_message(sid, "c2")["run_id"] == "r2"
        assert store.get_session_detail(sid)["messages"][-1]["client_message_id"] == "c2"
        assert "queued" not in store.get_session_detail(sid)["messages"][-1]

    def test_if_busy_per_session(self, store):
        """A session's own policy is saved and cleared; unknown sessions answer False/None."""
        sid = store.create_session()["id"]
        assert store.get_if_busy(sid) is None
        assert store.set_if_busy(sid, "enqueue") is True and store.get_if_busy(sid) == "enqueue"
        assert set(store.get_session(sid)) == {"id", "title", "created_at", "updated_at", "last_seq", "owner"}
        assert store.set_if_busy(sid, None) is True and store.get_if_busy(sid) is None
        assert store.set_if_busy("0" * 32, "enqueue") is False and store.get_if_busy("a/b") is None

    def test_the_queue_is_durable_and_goes_with_its_session(self, store, backend):
        """A store opened afterwards sees the queue; deleting the session deletes it."""
        sid = store.create_session()["id"]
        enqueue(store, sid, "m1", images=["aGk="])
        store.set_if_busy(sid, "interrupt")
        other = backend()
        assert [q["message_id"] for q in other.queue(sid)] == ["m1"] and other.get_if_busy(sid) == "interrupt"
        assert other.begin_queued(sid)["images"] == ["aGk="]
        enqueue(other, sid, "m2")
        assert other.delete_session(sid) is True
        assert store.queue(sid) == [] and store.queued_sessions() == []

    def test_queue_calls_in_a_batch_have_their_own_outcomes(self, store):
        """A QueueFull in a batch undoes only its own call."""
        sid = store.create_session()["id"]
        outcomes = store.batch([lambda: enqueue(store, sid, "m1", limit=1),
                                lambda: enqueue(store, sid, "m2", limit=1),
                                lambda: store.begin_queued(sid)])
        assert outcomes[0] == (True, 1) and isinstance(outcomes[1][1], QueueFull)
        assert outcomes[2][0] is True and outcomes[2][1]["run_id"] == "m1"
        assert store.queue(sid) == [] and store.running_runs()[0]["id"] == "m1"

    def test_a_closed_store_refuses_queue_calls(self, store):
        sid = store.create_session()["id"]
        store.close()
        for call in (lambda: enqueue(store, sid, "m1"), lambda: store.cancel_queued(sid, "m1"),
                     lambda: store.queue(sid), store.queued_sessions, lambda: store.begin_queued(sid),
                     lambda: store.set_if_busy(sid, None), lambda: store.get_if_busy(sid),
                     lambda: store.find_client_message(sid, "c")):
            with pytest.raises(StoreError):
                call()
