"""The balancer configs in deploy/: the nginx site run in a real nginx in front of three nodes,
and the HAProxy config checked by haproxy itself."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import types
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FINAL_TYPES, ROOT, Client, receive_until, run_turn, wait_for
from tests.test_functional_cluster import TTL, rows, signal_tree
from tests.test_functional_relay import start_nodes

DEPLOY = ROOT / "deploy"


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/ensure-balancers installs it), so deploy/ goes untested")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_config(path: Path, listen: int, ports: list[int]) -> str:
    """The shipped config with its listen port and its three node addresses replaced."""
    text = path.read_text()
    nodes = iter(ports)
    text, n = re.subn(r"127\.0\.0\.1:800[123]", lambda _m: f"127.0.0.1:{next(nodes)}", text)
    assert n == 3, "the shipped config names three nodes"
    return re.sub(r"(listen |bind :)8080", rf"\g<1>{listen}", text)


def test_the_haproxy_config_is_valid():
    """haproxy -c accepts deploy/haproxy.cfg: consistent hashing with bounded load, health checks."""
    haproxy = _binary("haproxy")
    text = (DEPLOY / "haproxy.cfg").read_text()
    assert "hash-type consistent" in text and "hash-balance-factor" in text and "option httpchk" in text
    out = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _nginx(folder: Path, listen: int, ports: list[int]) -> list[str]:
    (folder / "site.conf").write_text(shipped_config(DEPLOY / "nginx-cluster.conf", listen, ports))
    (folder / "nginx.conf").write_text(
        f"pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {folder};\n proxy_temp_path {folder};\n"
        f" include {folder}/site.conf;\n}}\n")
    return [_binary("nginx"), "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"]


def _haproxy(folder: Path, listen: int, ports: list[int]) -> list[str]:
    (folder / "haproxy.cfg").write_text(shipped_config(DEPLOY / "haproxy.cfg", listen, ports))
    return [_binary("haproxy"), "-db", "-f", str(folder / "haproxy.cfg")]


@pytest.fixture
def balancer(tmp_path):
    """Start a shipped balancer config (nginx or haproxy) in front of the given node ports; its URL."""
    procs = []

    def start(kind: str, ports: list[int]) -> types.SimpleNamespace:
        listen = _free_port()
        folder = tmp_path / kind
        folder.mkdir()
        cmd = {"nginx": _nginx, "haproxy": _haproxy}[kind](folder, listen, ports)
        log = open(folder / "out.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        procs.append(proc)

        def listening() -> bool:
            assert proc.poll() is None, (folder / "out.log").read_text() + (
                (folder / "error.log").read_text() if (folder / "error.log").exists() else "")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", listen)) == 0

        wait_for(listening, 10, f"{kind} listening")
        return types.SimpleNamespace(url=f"http://127.0.0.1:{listen}", ws_url=f"ws://127.0.0.1:{listen}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_a_balancer_in_front_of_three_nodes_survives_the_loss_of_one(make_server, client, pg_url, tmp_path,
                                                                           balancer, kind):
    """Through the shipped config: turns of several sessions run; the node running one of them is killed
    (-9) mid-turn; its clients reconnect through the balancer (or are told by the node relaying them)
    and go on, on the survivors."""
    nodes = start_nodes(make_server, pg_url, tmp_path, n=3)
    front = balancer(kind, [int(n.url.rsplit(":", 1)[1]) for n in nodes])
    c = client(front)
    assert isinstance(c, Client)
    sessions = []
    for _ in range(6):
        sid, ws = await c.open_session()
        await ws.send_json({"type": "message", "content": "slow 300 0.02"})
        await receive_until(ws, lambda e: e["type"] == "stream_delta")
        sessions.append((sid, ws))
    where = {r["session_id"]: r["node_id"] for r in rows(pg_url, "SELECT session_id, node_id FROM runs")}
    assert len(set(where.values())) >= 2, f"the hash spread 6 sessions over one node only: {where}"
    victim = where[sessions[0][0]]
    dead = nodes[int(victim[1:]) - 1]
    signal_tree(dead, signal.SIGKILL)
    t0 = time.monotonic()
    dead.proc.wait(10)
    cut = [(sid, ws) for sid, ws in sessions if where[sid] == victim]
    for sid, ws in cut:
        # Its socket closes (the balancer's connection to the dead node is gone), or, when the balancer
        # sent it to another node (bounded load), that node says node_lost, then session_sync.
        if not await asyncio.wait_for(_closed_or_synced(ws), TTL + 15):
            ws = await _reconnect(c, sid)
            seen = await receive_until(ws, lambda e: e["type"] == "session_sync", timeout=20)
            assert all(e["type"] in ("error", "session_sync") for e in seen), seen
        after = await run_turn(ws, "slow 3 0")
        assert after[-1]["type"] == "stream_end", after
        await ws.close()
    assert time.monotonic() - t0 < 30
    status = rows(pg_url, "SELECT session_id, node_id, status FROM runs ORDER BY started_at")
    for sid, _ws in cut:
        mine = [r for r in status if r["session_id"] == sid]
        assert [r["status"] for r in mine] == ["interrupted", "done"] and mine[-1]["node_id"] != victim, mine
    for sid, ws in sessions:  # the others were not disturbed
        if where[sid] != victim:
            end = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES and "seq" in e, timeout=20)
            assert end[-1]["type"] == "stream_end"


async def _reconnect(c: Client, sid: str, timeout: float = 10.0):
    """Connect as a client does after a drop: again at once if the balancer answers 502 or 503
    (it has not yet marked the dead node down), within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await c.connect(sid)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status not in (502, 503) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _closed_or_synced(ws) -> bool:
    """False once the socket closed; True at a session_sync after a node_lost error."""
    lost = False
    while True:
        msg = await ws.receive()
        if msg.type.name in ("CLOSE", "CLOSED", "CLOSING", "ERROR"):
            return False
        ev = json.loads(msg.data)
        lost = lost or (ev["type"] == "error" and ev.get("code") == "node_lost")
        if ev["type"] == "session_sync" and lost:
            return True
