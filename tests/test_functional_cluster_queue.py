"""Busy policies across nodes: a message sent to node 2 for a session whose turn runs on node 1.

Real `navi-actor serve` nodes on loopback ports, on one real PostgreSQL
(tests/pgserver.py). The client on node 2 connected before the turn began,
so node 2 serves it itself (no relay) when it sends its message.
"""

from __future__ import annotations

import signal
import time

import psutil

from tests.conftest import FINAL_TYPES, log_events, receive, receive_until, run_turn, text_of
from tests.test_functional_cluster import TTL, poll, rows, signal_tree, start_nodes


def final(e: dict) -> bool:
    return e["type"] in FINAL_TYPES and "seq" in e


async def turn_on_node1_watched_from_node2(ca, cb, content: str):
    """A session, a client of node 2 served there (it connected when nothing ran), then a turn on node 1
    (its events so far: up to its first delta)."""
    sid, ws_a = await ca.open_session()
    ws_b = await cb.connect(sid)
    assert await receive(ws_b) == {"type": "session_sync"}
    await ws_a.send_json({"type": "message", "content": content})
    begun = await receive_until(ws_a, lambda e: e["type"] == "stream_delta")
    return sid, ws_a, ws_b, begun


async def test_enqueue_on_another_node_runs_on_the_owner_after_its_turn(make_server, client, pg_url, tmp_path):
    """enqueue sent to node 2: queued (position, message_id) in the shared store, then run by node 1 once its
    turn ends; node 2's client follows both turns from node 1, and the history keeps the order."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a, ws_b, begun = await turn_on_node1_watched_from_node2(ca, cb, "slow 100 0.02")
    await ws_b.send_json({"type": "message", "content": "slow 3 0", "if_busy": "enqueue", "client_message_id": "q1"})
    queued = await receive(ws_b)
    assert queued["type"] == "queued" and queued["position"] == 1 and queued["client_message_id"] == "q1", queued
    mid = queued["message_id"]
    first = begun + await receive_until(ws_a, final)
    assert first[-1]["type"] == "stream_end"
    # Node 1's own client was told too, as when the message is queued on node 1.
    assert {"type": "queued", "position": 1, "message_id": mid, "client_message_id": "q1",
            "content": "slow 3 0"} in first, [e for e in first if "seq" not in e]
    second = await receive_until(ws_a, final)
    assert second[0] == {"type": "stream_start", "seq": first[-1]["seq"] + 1, "run_id": mid}, second[0]
    assert second[-1]["type"] == "stream_end" and text_of(second) == "w0 w1 w2 "
    # Node 2's client is relayed from node 1 now: the rest of the first turn, then the queued one.
    seen = await receive_until(ws_b, lambda e: final(e) and e["seq"] == second[-1]["seq"], timeout=15)
    assert {"type": "stream_start", "seq": second[0]["seq"], "run_id": mid} in seen
    assert text_of(seen).endswith("w0 w1 w2 ")
    assert [(r["id"], r["node_id"], r["status"]) for r in rows(
        pg_url, "SELECT id, node_id, status FROM runs ORDER BY started_at")][1] == (mid, "n1", "done")
    detail = await cb.session(sid)
    assert [m["content"] for m in detail["messages"]] == ["slow 100 0.02", text_of(first), "slow 3 0", "w0 w1 w2 "]
    users = [m for m in detail["messages"] if m["role"] == "user"]
    assert [m.get("queued", False) for m in users] == [False, True]
    assert detail["queue"] == [] and "front.queue_handed_over" in b.log_text()


async def test_a_viewer_relayed_once_its_message_is_handed_over_releases_its_nodes_prebound_actor(
        make_server, client, pg_url, tmp_path):
    """Node 2's client connected when nothing ran, so node 2 gave the session a warm actor (prebind). Once
    its message is handed over to node 1, the client is served by node 1, and node 2's actor goes."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    await poll(lambda: log_events(b, "supervisor.actor_spawned"), "node 2's warm actor")
    ca, cb = client(a), client(b)
    sid, ws_a, ws_b, _ = await turn_on_node1_watched_from_node2(ca, cb, "slow 100 0.02")
    (assigned,) = await poll(lambda: [e for e in log_events(b, "supervisor.actor_assigned")
                                      if e["session_id"] == sid], "node 2's actor for the connection")
    assert not log_events(b, "front.prebound_released")
    await ws_b.send_json({"type": "message", "content": "slow 1 0", "if_busy": "enqueue"})
    assert (await receive(ws_b))["type"] == "queued"
    await poll(lambda: [e for e in log_events(b, "front.prebound_released") if e["session_id"] == sid],
               "node 2 to release the actor its relayed viewer no longer needs")
    await poll(lambda: not psutil.pid_exists(assigned["actor_pid"]), "node 2's prebound actor to exit")
    assert (await receive_until(ws_a, final))[-1]["type"] == "stream_end"


async def test_interrupt_on_another_node_stops_the_owners_turn_and_runs_there(make_server, client, pg_url,
                                                                               tmp_path):
    """interrupt sent to node 2: node 1 stops its turn through the ladder (interrupted_by_new_message, its
    partial text saved), then runs the new message, within a stop plus a start."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a, ws_b, _ = await turn_on_node1_watched_from_node2(ca, cb, "slow 500 0.02")
    t0 = time.monotonic()
    await ws_b.send_json({"type": "message", "content": "slow 20 0.05", "if_busy": "interrupt"})
    queued = await receive(ws_b)
    assert queued["type"] == "queued" and queued["position"] == 1, queued
    stopped = (await receive_until(ws_a, final))[-1]
    assert stopped["type"] == "stream_stopped" and stopped["reason"] == "interrupted_by_new_message", stopped
    start = await receive(ws_a)
    assert start["type"] == "stream_start" and start["run_id"] == queued["message_id"], start
    assert time.monotonic() - t0 < 4.0  # the control row and NOTIFY, a cooperative stop, a turn start
    rest = await receive_until(ws_a, final)
    words = "".join(f"w{i} " for i in range(20))
    assert rest[-1]["type"] == "stream_end" and text_of(rest) == words
    # Node 2's client is relayed from node 1 now: the new turn, from its start (the stopped one too, unless
    # it had ended before the relay was opened: the history has it).
    seen = await receive_until(ws_b, lambda e: final(e) and e["seq"] == rest[-1]["seq"])
    assert start in seen and text_of(seen).endswith(words)
    runs = rows(pg_url, "SELECT node_id, status, error_code FROM runs ORDER BY started_at")
    assert runs == [{"node_id": "n1", "status": "stopped", "error_code": "interrupted_by_new_message"},
                    {"node_id": "n1", "status": "done", "error_code": None}]
    answers = [m for m in (await ca.session(sid))["messages"] if m["role"] == "assistant"]
    assert answers[0]["content"] == stopped["content"] and answers[1]["content"] == words


async def test_cancel_of_a_message_queued_across_nodes(make_server, client, pg_url, tmp_path):
    """Two messages queued from node 2 for node 1's turn: one cancelled by a client of node 3, one by node 2's
    client. Neither runs: when the turn ends, node 1 takes the next message at once, as with an empty queue."""
    a, b, c = start_nodes(make_server, pg_url, tmp_path, n=3)
    ca, cb, cc = client(a), client(b), client(c)
    sid, ws_a, ws_b, begun = await turn_on_node1_watched_from_node2(ca, cb, "slow 150 0.02")
    ws_c = await cc.connect(sid)  # during the turn: node 3 relays it from node 1
    await ws_b.send_json({"type": "message", "content": "never 1", "if_busy": "enqueue"})
    one = await receive(ws_b)
    assert one["type"] == "queued" and one["position"] == 1, one
    await ws_b.send_json({"type": "message", "content": "never 2", "if_busy": "enqueue"})  # relayed to node 1
    two = await receive_until(ws_b, lambda e: e["type"] == "queued")
    assert two[-1]["position"] == 2
    await ws_c.send_json({"type": "cancel_queued", "message_id": one["message_id"]})
    await receive_until(ws_c, lambda e: e == {"type": "queue_cancelled", "message_id": one["message_id"]})
    await ws_b.send_json({"type": "cancel_queued", "message_id": two[-1]["message_id"]})
    await receive_until(ws_b, lambda e: e == {"type": "queue_cancelled", "message_id": two[-1]["message_id"]})
    await ws_b.send_json({"type": "cancel_queued", "message_id": one["message_id"]})
    gone = await receive_until(ws_b, lambda e: e["type"] == "error")
    assert gone[-1]["code"] == "not_queued"
    first = begun + await receive_until(ws_a, final, timeout=15)
    assert first[-1]["type"] == "stream_end"
    # Node 1's own client saw both messages queued, then both cancelled, in that order.
    ids = [one["message_id"], two[-1]["message_id"]]
    told = [(e["type"], e["message_id"]) for e in first if e["type"] in ("queued", "queue_cancelled")]
    assert [t for t in told if t[0] == "queued"] == [("queued", i) for i in ids], told
    assert sorted(t for t in told if t[0] == "queue_cancelled") == sorted(("queue_cancelled", i) for i in ids)
    assert told.index(("queue_cancelled", ids[0])) > told.index(("queued", ids[0])), told
    after = await run_turn(ws_a, "slow 1 0")  # nothing left queued anywhere: it starts at once
    assert after[0]["type"] == "stream_start" and after[-1]["type"] == "stream_end", after
    assert [m["content"] for m in (await ca.session(sid))["messages"]] == \
        ["slow 150 0.02", text_of(first), "slow 1 0", "w0 "]
    assert rows(pg_url, "SELECT message_id FROM queue") == []


async def test_a_message_queued_for_a_node_that_dies_runs_on_the_node_that_swept_it(make_server, client, pg_url,
                                                                                  tmp_path):
    """kill -9 of node 1 with a message queued for its turn from node 2: node 2's sweeper ends the turn as
    interrupted, then runs the queued message itself, within TTL + 5 s, the history in order."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a, ws_b, _ = await turn_on_node1_watched_from_node2(ca, cb, "slow 500 0.02")
    await ws_b.send_json({"type": "message", "content": "slow 2 0", "if_busy": "enqueue"})
    queued = await receive(ws_b)
    assert queued["type"] == "queued", queued
    await poll(lambda: "front.queue_handed_over" in b.log_text(), "node 1 told of the queued message")
    signal_tree(a, signal.SIGKILL)
    t0 = time.monotonic()
    a.proc.wait(10)
    await ws_a.close()
    done = await poll(lambda: rows(pg_url, "SELECT node_id, status FROM runs WHERE id = %s AND status = 'done'",
                                   queued["message_id"]), "the queued message's turn, on node 2", timeout=TTL + 8)
    assert done == [{"node_id": "n2", "status": "done"}] and time.monotonic() - t0 < TTL + 8
    detail = await cb.session(sid)
    assert [(m["role"], m.get("status")) for m in detail["messages"]][1:] == \
        [("assistant", "interrupted"), ("user", None), ("assistant", "done")]
    assert detail["messages"][2]["content"] == "slow 2 0" and detail["queue"] == []
