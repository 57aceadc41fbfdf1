"""Any node serves any session: a node that does not run a turn relays it from the one that does.

Real `navi-actor serve` nodes on loopback ports, on one real PostgreSQL
(tests/pgserver.py), sharing a cluster secret (``--cluster-secret-file``).
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from navi_actor.front import relayauth
from navi_actor.tokens import LOCAL
from tests.conftest import FINAL_TYPES, receive, receive_until, run_turn, text_of
from tests.test_functional_cluster import LADDER, SCRIPTED, TTL, rows, signal_tree


def start_nodes(make_server, pg_url: str, tmp_path, n: int = 2) -> list:
    secret = tmp_path / "cluster-secret"
    secret.write_text("a-secret-every-node-shares-0123456789\n")
    secret.chmod(0o600)
    return [make_server(SCRIPTED, args=["--store", pg_url, "--node-id", f"n{i + 1}", "--lease-ttl", str(TTL),
                                        "--warm-actors", "1", "--cluster-secret-file", str(secret), *LADDER],
                        data_dir=tmp_path / f"node{i + 1}")
            for i in range(n)]


def events(evs: list[dict]) -> list[dict]:
    return [e for e in evs if e["type"] not in ("heartbeat", "replay_start", "replay_end")]


async def test_a_relayed_viewer_sees_what_the_owners_viewer_sees(make_server, client, pg_url, tmp_path):
    """A viewer on node 2 of a turn running on node 1: the same events, seqs and text, then session_sync."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.open_session()
    await ws_a.send_json({"type": "message", "content": "slow 60 0.02"})
    direct = await receive_until(ws_a, lambda e: e["type"] == "stream_delta")
    ws_b = await cb.connect(sid)
    relayed = await receive_until(ws_b, lambda e: e["type"] in FINAL_TYPES and "seq" in e)
    direct += await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES and "seq" in e)
    assert relayed[0]["type"] == "stream_start" and relayed[1]["type"] == "replay_start"
    # The replay merges the deltas it kept, as for any viewer that joins late; what is live is the same.
    replayed = [e["type"] for e in relayed].index("replay_end")
    live = relayed[replayed + 1:]
    assert events(live) == [e for e in events(direct) if e.get("seq", 0) >= live[0]["seq"]]
    assert relayed[0] == direct[0]  # the same stream_start (seq, run_id)
    assert text_of(relayed) == text_of(direct) and len(text_of(direct)) > 0
    assert relayed[-1]["type"] == "stream_end"
    assert await receive(ws_b) == {"type": "session_sync", "last_seq": relayed[-1]["seq"]}
    assert "relay.opened" in b.log_text()


async def test_resume_with_after_through_a_node_that_does_not_run_the_turn(make_server, client, pg_url, tmp_path):
    """?after=SEQ sent to node 2: node 1's events after SEQ, no gap and no duplicate."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.open_session()
    await ws_a.send_json({"type": "message", "content": "slow 60 0.02"})
    direct = await receive_until(ws_a, lambda e: e["type"] == "stream_delta" and e["seq"] > 5)
    cursor = direct[-1]["seq"]
    ws_b = await cb.connect(sid, after=cursor)
    relayed = await receive_until(ws_b, lambda e: e["type"] in FINAL_TYPES and "seq" in e)
    direct += await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES and "seq" in e)
    seqs = [e["seq"] for e in events(relayed) if e["type"] != "stream_start"]
    assert seqs == list(range(cursor + 1, direct[-1]["seq"] + 1))
    assert text_of(relayed) == text_of([e for e in direct if e.get("seq", 0) > cursor])


async def test_stop_and_a_new_message_through_a_node_that_does_not_run_the_turn(make_server, client, pg_url,
                                                                             tmp_path):
    """Through node 2's relay: the owner's busy guard answers, a stop ends the turn, the next turn runs."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.busy_session("slow 500 0.02")
    ws_b = await cb.connect(sid)
    await receive_until(ws_b, lambda e: e["type"] == "replay_end")
    await ws_b.send_json({"type": "message", "content": "slow 1 0"})
    refused = await receive_until(ws_b, lambda e: e["type"] == "error")
    assert refused[-1]["code"] == "already_running" and "seq" not in refused[-1]
    assert await cb.stop(sid) == {"ok": True, "node": "n1"}
    stopped = await receive_until(ws_b, lambda e: e["type"] in FINAL_TYPES and "seq" in e)
    assert stopped[-1]["type"] == "stream_stopped"
    assert (await receive(ws_b))["type"] == "session_sync"
    after = await run_turn(ws_b, "slow 3 0")
    assert after[-1]["type"] == "stream_end" and after[0]["seq"] == stopped[-1]["seq"] + 1
    assert [r["node_id"] for r in rows(pg_url, "SELECT node_id FROM runs ORDER BY started_at")] == ["n1", "n1"]


async def test_the_owner_killed_during_a_relay(make_server, client, pg_url, tmp_path):
    """kill -9 of node 1 mid-turn: node 2's relayed viewer gets node_lost, then session_sync once the turn
    is interrupted, and goes on with a turn on node 2."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.busy_session("slow 500 0.02")
    ws_b = await cb.connect(sid)
    await receive_until(ws_b, lambda e: e["type"] == "replay_end")
    signal_tree(a, signal.SIGKILL)
    t0 = time.monotonic()
    lost = await receive_until(ws_b, lambda e: e["type"] == "error", timeout=5)
    assert lost[-1]["code"] == "node_lost" and "n1" in lost[-1]["message"]
    synced = await receive_until(ws_b, lambda e: e["type"] == "session_sync", timeout=TTL + 15)
    assert time.monotonic() - t0 < TTL + 10
    assert rows(pg_url, "SELECT status FROM runs")[0]["status"] == "interrupted", synced
    after = await run_turn(ws_b, "slow 2 0")
    assert after[-1]["type"] == "stream_end"
    assert rows(pg_url, "SELECT node_id FROM runs WHERE status = 'done'")[0]["node_id"] == "n2"


async def test_a_client_cannot_pass_as_a_node(make_server, client, pg_url, tmp_path):
    """A relay header not signed with the cluster secret is refused (401)."""
    a, = start_nodes(make_server, pg_url, tmp_path, n=1)
    sid = await client(a).new_session()
    forged = relayauth.sign(b"not-the-cluster-secret-at-all!!", "n9", sid, LOCAL, time.time())
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{a.ws_url}/ws/sessions/{sid}", headers={relayauth.HEADER: forged})
    assert err.value.status == 401
