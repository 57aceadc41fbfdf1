"""The balancer configs in deploy/: the nginx site run in a real nginx in front of three nodes,
and the HAProxy config checked by haproxy itself."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import time
import types
from pathlib import Path

import pytest

from tests.conftest import FINAL_TYPES, ROOT, Client, receive_until, run_turn, wait_for
from tests.test_functional_cluster import rows, signal_tree
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


@pytest.fixture
def nginx_front(tmp_path):
    """Start the shipped nginx site in front of the given node ports; the balancer's URL."""
    nginx = _binary("nginx")
    procs = []

    def start(ports: list[int]) -> types.SimpleNamespace:
        listen = _free_port()
        folder = tmp_path / "nginx"
        folder.mkdir()
        (folder / "site.conf").write_text(shipped_config(DEPLOY / "nginx-cluster.conf", listen, ports))
        (folder / "nginx.conf").write_text(
            f"pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\nevents {{}}\n"
            f"http {{\n access_log off;\n client_body_temp_path {folder};\n proxy_temp_path {folder};\n"
            f" include {folder}/site.conf;\n}}\n")
        proc = subprocess.Popen([nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"])
        procs.append(proc)

        def listening() -> bool:
            assert proc.poll() is None, (folder / "error.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", listen)) == 0

        wait_for(listening, 10, "nginx listening")
        return types.SimpleNamespace(url=f"http://127.0.0.1:{listen}", ws_url=f"ws://127.0.0.1:{listen}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


async def test_nginx_in_front_of_three_nodes_survives_the_loss_of_one(make_server, client, pg_url, tmp_path,
                                                                     nginx_front):
    """Through the shipped nginx site: turns of several sessions run; the node running one of them is
    killed (-9) mid-turn; its clients reconnect through nginx and go on, on the survivors."""
    nodes = start_nodes(make_server, pg_url, tmp_path, n=3)
    front = nginx_front([int(n.url.rsplit(":", 1)[1]) for n in nodes])
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
    for sid, ws in cut:  # their sockets close: nginx's connection to the node is gone
        await asyncio.wait_for(_closed(ws), 5)
    for sid, _ws in cut:
        ws = await c.connect(sid)
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


async def _closed(ws) -> None:
    while True:
        msg = await ws.receive()
        if msg.type.name in ("CLOSE", "CLOSED", "CLOSING", "ERROR"):
            return
