"""Several nodes on one PostgreSQL store: real `navi-actor serve` processes on loopback ports.

A node is a server with its own data folder and port, started with the same
``--store postgresql://…`` (tests/pgserver.py), its own ``--node-id``, a
short ``--lease-ttl`` and the secret the nodes share in ``NAVI_CLUSTER_SECRET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any, Callable

import psutil
import psycopg
from psycopg.rows import dict_row

from tests.conftest import FINAL_TYPES, receive, receive_until, run_turn, text_of
from tests.pgserver import CLUSTER_ENV

SCRIPTED = "tests.agents:scripted"
TTL = 2.0
LADDER = ["--stop-grace", "0.3", "--stop-term-after", "1", "--stop-kill-after", "1"]


def start_nodes(make_server, pg_url: str, tmp_path, n: int = 2,
                extra: dict[int, list[str]] | None = None) -> list[Any]:
    return [make_server(SCRIPTED, args=["--store", pg_url, "--node-id", f"n{i + 1}", "--lease-ttl", str(TTL),
                                        "--warm-actors", "1", *LADDER, *(extra or {}).get(i, [])],
                        data_dir=tmp_path / f"node{i + 1}", env=CLUSTER_ENV)
            for i in range(n)]


def rows(url: str, sql: str, *args: object) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


async def poll(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await cond() if asyncio.iscoroutinefunction(cond) else cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def signal_tree(server: Any, sig: int) -> list[psutil.Process]:
    """Send ``sig`` to the node's whole process tree (supervisor, front, zygote, actors)."""
    family = [psutil.Process(server.pid), *server.descendants()]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    return family


async def test_a_session_is_shared_by_every_node(make_server, client, pg_url, tmp_path):
    """Created on one node, a session is listed, read, continued and deleted on another."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.open_session()
    first = await run_turn(ws_a, "slow 3 0")
    assert first[-1]["type"] == "stream_end"
    async with cb.http.get(b.url + "/sessions") as r:
        assert sid in [s["id"] for s in (await r.json())["sessions"]]
    assert [m["role"] for m in (await cb.session(sid))["messages"]] == ["user", "assistant"]
    ws_b = await cb.connect(sid)
    assert await receive(ws_b) == {"type": "session_sync"}
    second = await run_turn(ws_b, "slow 2 0")
    assert second[0]["seq"] == first[-1]["seq"] + 1 and second[-1]["type"] == "stream_end"
    assert [r["node_id"] for r in rows(pg_url, "SELECT node_id FROM runs ORDER BY started_at")] == ["n1", "n2"]
    assert [m["content"] for m in (await ca.session(sid))["messages"]] == \
        ["slow 3 0", text_of(first), "slow 2 0", text_of(second)]
    async with cb.http.delete(f"{b.url}/sessions/{sid}") as r:
        assert r.status in (200, 204)
    async with ca.http.get(f"{a.url}/sessions/{sid}") as r:
        assert r.status == 404


async def test_the_busy_guard_and_stop_work_across_nodes(make_server, client, pg_url, tmp_path):
    """A turn runs on node 1: node 2 refuses a second one (if_busy reject, given or by default), and a stop
    sent to node 2 ends it within 1 s."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.open_session()
    ws_b = await cb.connect(sid)  # before the turn: node 2 serves this client itself (no relay)
    assert await receive(ws_b) == {"type": "session_sync"}
    await ws_a.send_json({"type": "message", "content": "slow 500 0.02"})
    await receive_until(ws_a, lambda e: e["type"] == "stream_delta")
    for extra in ({}, {"if_busy": "reject"}):
        await ws_b.send_json({"type": "message", "content": "slow 1 0", **extra})
        refused = await receive(ws_b)
        assert refused["type"] == "error" and refused["code"] == "already_running"
        assert refused["message"] == "Agent is already running for this session."
    t0 = time.monotonic()
    assert await cb.stop(sid) == {"ok": True, "node": "n1"}
    rest = await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES)
    assert rest[-1]["type"] == "stream_stopped" and time.monotonic() - t0 < 1.0
    assert (await cb.stop(sid))["ok"] is False  # nothing runs any more, anywhere
    after = await run_turn(ws_b, "slow 1 0")  # and node 2 may run the next turn
    assert after[-1]["type"] == "stream_end"


async def test_deleting_a_session_on_another_node_stops_its_turn_first(make_server, client, pg_url, tmp_path):
    """DELETE on node 2 of a session whose turn runs on node 1: the turn is stopped there, then it is deleted."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    sid, ws_a = await client(a).busy_session("slow 500 0.02")
    cb = client(b)
    async with cb.http.delete(f"{b.url}/sessions/{sid}") as r:
        assert r.status == 200, await r.text()
    final = (await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "stream_stopped"
    assert rows(pg_url, "SELECT id FROM sessions") == [] and rows(pg_url, "SELECT id FROM runs") == []


async def test_kill_from_another_node(make_server, client, pg_url, tmp_path):
    """POST /runs/ID/kill with force, sent to node 2, SIGKILLs the actor on node 1; its viewer is told."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.busy_session("slow 500 0.02")
    async with cb.http.post(f"{b.url}/runs/{sid}/kill", json={"force": True}) as r:
        assert r.status == 200, await r.text()
        out = await r.json()
    assert out["node"] == "n1" and out["session_id"] == sid
    final = (await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "error"
    async with cb.http.post(f"{b.url}/runs/{'0' * 32}/kill", json={}) as r:
        assert r.status == 404


async def test_a_node_killed_mid_turn_has_its_turn_interrupted_by_another(make_server, client, pg_url, tmp_path):
    """kill -9 of node 1's whole tree mid-turn: within TTL + 5 s node 2 marks the turn interrupted with its text."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.busy_session("slow 500 0.02")
    run_id = rows(pg_url, "SELECT id FROM runs WHERE status = 'running'")[0]["id"]
    checkpointed = await poll(lambda: rows(pg_url, "SELECT partial_content FROM runs WHERE id = %s",
                                           run_id)[0]["partial_content"], "a checkpoint")
    family = signal_tree(a, signal.SIGKILL)
    t0 = time.monotonic()
    a.proc.wait(10)
    await ws_a.close()
    run = await poll(lambda: (r := rows(pg_url, "SELECT status, error FROM runs WHERE id = %s", run_id)[0])
                     ["status"] != "running" and r, "the sweeper", timeout=TTL + 5)
    assert time.monotonic() - t0 < TTL + 5
    assert run["status"] == "interrupted" and "(n1) stopped answering" in run["error"]
    last = (await cb.session(sid))["messages"][-1]
    assert last["status"] == "interrupted" and last["content"].startswith(checkpointed)
    ws_b = await cb.connect(sid)
    assert await receive(ws_b) == {"type": "session_sync"}
    again = await run_turn(ws_b, "slow 2 0")
    assert again[-1]["type"] == "stream_end"
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def test_a_paused_node_loses_its_session_and_its_late_writes_are_refused(make_server, client, pg_url,
                                                                               tmp_path):
    """SIGSTOP node 1 past its lease; node 2 takes the session and runs a turn; node 1, resumed, writes nothing."""
    a, b = start_nodes(make_server, pg_url, tmp_path)
    ca, cb = client(a), client(b)
    sid, ws_a = await ca.busy_session("slow 300 0.02")
    old_run = rows(pg_url, "SELECT id FROM runs WHERE status = 'running'")[0]["id"]
    await poll(lambda: rows(pg_url, "SELECT partial_content FROM runs WHERE id = %s", old_run)[0]["partial_content"],
               "a checkpoint")
    signal_tree(a, signal.SIGSTOP)
    try:
        # Past the lease, node 2's sweeper ends node 1's turn; node 2 then runs one of its own.
        await poll(lambda: rows(pg_url, "SELECT status FROM runs WHERE id = %s", old_run)[0]["status"]
                   == "interrupted", "node 1's turn interrupted", timeout=TTL + 5)
        ws_b = await cb.connect(sid)
        assert await receive(ws_b) == {"type": "session_sync"}
        new = await run_turn(ws_b, "slow 3 0")
        assert new[-1]["type"] == "stream_end"
        before = await cb.session(sid)
    finally:
        signal_tree(a, signal.SIGCONT)
    # Node 1 wakes up: its turn is stopped (lease lost), and what it writes late is refused.
    tail = await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES, timeout=15)
    assert tail[-1]["type"] in ("error", "stream_stopped")
    await poll(lambda: "cluster.lease_lost" in a.log_text(), "node 1 to see its lease lost")
    await poll(lambda: "this late result is refused" in a.log_text(), "node 1's late result, refused")
    after = await cb.session(sid)
    assert after["messages"] == before["messages"]
    assert [(r["id"], r["status"]) for r in after["runs"]] == [(old_run, "interrupted"), (new[0]["run_id"], "done")]
    assert after["messages"][-1]["content"] == text_of(new)


async def test_the_cluster_run_list_shows_every_nodes_turns(make_server, client, pg_url, tmp_path):
    """GET /runs?cluster=1 on either node, and navi-actor ps --cluster, list the turns of both nodes."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    a, b = start_nodes(make_server, pg_url, tmp_path, extra={1: ["--advertise-url", "http://node2.example:8002"]})
    ca, cb = client(a), client(b)
    sa, _ws_a = await ca.busy_session("slow 500 0.02")
    sb, _ws_b = await cb.busy_session("slow 500 0.02")
    for c, server in ((ca, a), (cb, b)):
        async with c.http.get(server.url + "/runs?cluster=1") as r:
            assert r.status == 200, await r.text()
            listed = await r.json()
        assert {(x["session_id"], x["node"], x["url"]) for x in listed["runs"]} == \
            {(sa, "n1", a.url), (sb, "n2", "http://node2.example:8002")}
    out = subprocess.run([sys.executable, "-m", "navi_actor", "ps", "--cluster", "--json", "--store", pg_url],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert {(x["session_id"], x["node"]) for x in json.loads(out.stdout)["runs"]} == {(sa, "n1"), (sb, "n2")}
    table = subprocess.run([sys.executable, "-m", "navi_actor", "ps", "--cluster", "--store", pg_url],
                           capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    assert table.splitlines()[0].split() == ["NODE", "SESSION", "RUN", "AGE", "URL"] and sa in table and sb in table


async def test_a_postgresql_restart_during_turns(make_server, client, tmp_path):
    """PostgreSQL stops mid-turn: new turns get store_unavailable, the running turn goes on, and once the
    database is back its answer is saved, once, with the whole text; new turns work again."""
    from tests.pgserver import PgServer

    try:
        pg = PgServer().start()  # its own server: this test stops it
    except (RuntimeError, OSError) as exc:
        import pytest

        pytest.skip(f"PostgreSQL is not available, so this PostgreSQL test cannot run: {exc}")
    try:
        url = pg.create_database("restart")
        node = make_server(SCRIPTED, args=["--store", url, "--node-id", "n1", *LADDER],
                           data_dir=tmp_path / "node1", env=CLUSTER_ENV)
        c = client(node)
        sid, ws = await c.busy_session("slow 150 0.02")  # 3 s of streaming
        other, ws_other = await c.open_session()
        pg.stop("fast")  # clients are disconnected at once
        await ws_other.send_json({"type": "message", "content": "slow 1 0"})
        refused = await receive(ws_other)
        assert refused["type"] == "error" and refused["code"] == "store_unavailable", refused
        rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=15)
        streamed = text_of(rest)
        assert rest[-1]["type"] == "error" and rest[-1]["code"] == "store_error"  # kept, to be saved
        assert "saves it as soon as the store can write again" in rest[-1]["message"]
        pg.start()
        assert (await receive(ws, timeout=15)) == {"type": "session_sync"}  # saved now
        detail = await c.session(sid)
        answers = [m for m in detail["messages"] if m["role"] == "assistant"]
        assert len(answers) == 1 and answers[0]["status"] == "done"
        assert answers[0]["content"] == "".join(f"w{i} " for i in range(150)) and answers[0]["content"].endswith(streamed)
        await poll(lambda: rows(url, "SELECT heartbeat_at > pg_postmaster_start_time() AS beat FROM nodes"
                                     " WHERE node_id = 'n1'")[0]["beat"], "a heartbeat after the restart")
        after = await run_turn(ws_other, "slow 2 0")
        assert after[-1]["type"] == "stream_end"
    finally:
        pg.destroy()


async def test_navi_actor_kill_ends_a_turn_on_another_node(make_server, client, pg_url, tmp_path):
    """navi-actor kill --store URL SESSION, typed at node 2, runs the stop ladder on node 1's actor."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    a, b = start_nodes(make_server, pg_url, tmp_path)
    sid, ws_a = await client(a).busy_session("slow 500 0.02")
    out = subprocess.run([sys.executable, "-m", "navi_actor", "kill", "--data-dir", str(b.data_dir),
                          "--store", pg_url, sid], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().startswith(f"{sid}  -  ") and "on node n1" in out.stdout
    final = (await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "stream_stopped" and final["reason"] == "killed_by_operator"
    gone = subprocess.run([sys.executable, "-m", "navi_actor", "kill", "--data-dir", str(b.data_dir),
                           "--store", pg_url, sid], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert gone.returncode == 1 and "not found" in gone.stdout


async def test_ownership_holds_on_every_node(make_server, pg_url, tmp_path):
    """With authentication, a user's session created on node 1 is theirs on node 2, and another user's 404."""
    import aiohttp

    alice, bob = "a" * 40, "b" * 40
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{alice} alice\n{bob} bob\n")
    tokens.chmod(0o600)
    nodes = [make_server(SCRIPTED, args=["--store", pg_url, "--node-id", f"n{i}", "--tokens-file", str(tokens)],
                         data_dir=tmp_path / f"node{i}", env=CLUSTER_ENV) for i in (1, 2)]
    async with aiohttp.ClientSession() as http:
        async def call(node, token, method, path):
            async with http.request(method, node.url + path, headers={"Authorization": f"Bearer {token}"},
                                    json={} if method == "POST" else None) as r:
                return r.status, await r.json()

        status, made = await call(nodes[0], alice, "POST", "/sessions")
        assert status == 201
        sid = made["id"]
        assert (await call(nodes[1], alice, "GET", f"/sessions/{sid}"))[0] == 200
        assert (await call(nodes[1], bob, "GET", f"/sessions/{sid}"))[0] == 404
        assert (await call(nodes[1], bob, "DELETE", f"/sessions/{sid}"))[0] == 404
        assert sid not in [s["id"] for s in (await call(nodes[1], bob, "GET", "/sessions"))[1]["sessions"]]
        assert sid in [s["id"] for s in (await call(nodes[1], alice, "GET", "/sessions"))[1]["sessions"]]


async def test_the_sweeper_survives_the_death_of_nodes(make_server, client, pg_url, tmp_path):
    """Three nodes; nodes 1 and 2 are killed -9 (one of them may have been sweeping): node 3 ends their turns."""
    nodes = start_nodes(make_server, pg_url, tmp_path, n=3)
    clients = [client(node) for node in nodes]
    s1, _ = await clients[0].busy_session("slow 500 0.02")
    s2, _ = await clients[1].busy_session("slow 500 0.02")
    for node in nodes[:2]:
        signal_tree(node, signal.SIGKILL)
        node.proc.wait(10)
    t0 = time.monotonic()
    await poll(lambda: not rows(pg_url, "SELECT id FROM runs WHERE status = 'running'"), "both turns ended",
               timeout=TTL + 5)
    assert time.monotonic() - t0 < TTL + 5
    for sid, node in ((s1, "n1"), (s2, "n2")):
        last = (await clients[2].session(sid))["messages"][-1]
        assert last["status"] == "interrupted" and f"({node}) stopped answering" in last["error"]
    assert "cluster.swept" in nodes[2].log_text()
