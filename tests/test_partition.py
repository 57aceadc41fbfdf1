"""A partition: nodes as separate hosts in network namespaces (ip netns, veth, a bridge), one cut off.

PostgreSQL listens on the bridge's address (10.77.0.1) in this test's own
namespace; each node runs in a namespace of its own, with an address that
exists only there (10.77.0.2, 10.77.0.3), joined to the bridge by a veth
pair. Taking node 1's link down cuts it from node 2, from PostgreSQL and from
its clients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import aiohttp
import pytest

from tests.conftest import ROOT, FINAL_TYPES, Client, Server, receive, receive_until, run_turn, wait_for
from tests.test_functional_cluster import LADDER, SCRIPTED, TTL, poll, rows

NET = "10.77.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class NsServer(Server):
    """A node started inside a network namespace."""

    def __init__(self, ns: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ns = ns

    def start(self) -> NsServer:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        cmd = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "navi_actor", "serve", "--data-dir",
               str(self.data_dir), "--log-format", "json", "--agent", self.agent, *self.extra]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=self.log, cwd=self.cwd)
        server_file = self.data_dir / "server.json"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            return server_file.exists()

        wait_for(ready, 30, "server.json")
        info = json.loads(server_file.read_text())
        self.url, self.front_pid = info["url"], info["front_pid"]
        return self


@pytest.fixture
def net():
    """A bridge here and two namespaces hanging off it; yields (namespaces, host-side link names)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:5]
    bridge, spaces, links = f"nb{tag}", [f"navi{tag}{i}" for i in (1, 2)], [f"nh{tag}{i}" for i in (1, 2)]
    try:
        _ip("link", "add", bridge, "type", "bridge")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot make a bridge here: {exc}")
    try:
        _ip("addr", "add", f"{NET}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, (ns, link) in enumerate(zip(spaces, links), start=2):
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", link, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{NET}.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield spaces, links
    finally:
        for ns in spaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.fixture
def bridged_pg():
    from tests.pgserver import PgServer

    try:
        server = PgServer(listen=f"127.0.0.1,{NET}.1")
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"PostgreSQL is not available: {exc}")
    with open(server.data / "pg_hba.conf", "a") as f:
        f.write(f"host all all {NET}.0/24 trust\n")
    server.start()
    yield server
    server.destroy()


async def test_a_node_cut_off_stops_its_turns_and_rejoins_without_stale_writes(net, bridged_pg, tmp_path):
    """Node 1's link goes down mid-turn: node 2 ends its turn as interrupted, a client goes on through node 2;
    node 1 stops its own turn (lease_lost), and once back its late result is refused."""
    (ns1, ns2), (link1, _link2) = net
    db = bridged_pg.create_database("partition")
    url = db.replace("127.0.0.1", f"{NET}.1")
    secret = tmp_path / "secret"
    secret.write_text("a-secret-every-node-shares-0123456789\n")
    secret.chmod(0o600)
    nodes = []
    for i, ns in ((1, ns1), (2, ns2)):
        host = f"{NET}.{i + 1}"
        nodes.append(NsServer(ns, tmp_path / f"node{i}", SCRIPTED, {}, [
            "--host", host, "--port", "8765", "--insecure-no-auth", "--store", url, "--node-id", f"n{i}",
            "--lease-ttl", str(TTL), "--warm-actors", "1", "--cluster-secret-file", str(secret), *LADDER]))
    try:
        for node in nodes:
            node.start()
        a, b = nodes
        async with aiohttp.ClientSession() as http:
            ca, cb = Client(a, http), Client(b, http)
            sid, ws_a = await ca.busy_session("slow 500 0.02")
            run_id = rows(db, "SELECT id FROM runs")[0]["id"]
            _ip("link", "set", link1, "down")
            t0 = time.monotonic()
            run = await poll(lambda: (r := rows(db, "SELECT status FROM runs WHERE id = %s", run_id)[0])
                             ["status"] != "running" and r, "the cut-off node's turn ended by node 2", TTL + 10)
            assert run["status"] == "interrupted" and time.monotonic() - t0 < TTL + 8
            await poll(lambda: "cluster.turn_stopped" in a.log_text(), "node 1 stopping its own turn", TTL + 10)
            ws_b = await cb.connect(sid)
            first = await receive_until(ws_b, lambda e: e["type"] == "session_sync", timeout=TTL + 15)
            assert all(e["type"] in ("session_sync", "error") for e in first), first
            after = await run_turn(ws_b, "slow 3 0")
            assert after[-1]["type"] == "stream_end"
            _ip("link", "set", link1, "up")
            late = await receive_until(ws_a, lambda e: e["type"] in FINAL_TYPES and "seq" in e, timeout=30)
            # Its client is told, with a code: the turn was stopped for its lost lease, and its result
            # (written once the link is back) is refused, since node 2 ended the turn meanwhile.
            end = late[-1]
            assert (end["type"] == "error" and end["code"] == "store_error" and "late result is refused"
                    in end["message"]) or (end["type"] == "stream_stopped" and "lease_lost" in json.dumps(end)), end
            await poll(lambda: "late result is refused" in a.log_text(), "node 1's late result refused", 15)
            status = rows(db, "SELECT node_id, status FROM runs ORDER BY started_at")
            assert status == [{"node_id": "n1", "status": "interrupted"}, {"node_id": "n2", "status": "done"}]
            again = await run_turn(await _synced(ca, sid), "slow 2 0")  # node 1 is back in the cluster
            assert again[-1]["type"] == "stream_end"
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()


async def _synced(c: Client, sid: str):
    ws = await c.connect(sid)
    assert (await receive(ws))["type"] == "session_sync"
    return ws
