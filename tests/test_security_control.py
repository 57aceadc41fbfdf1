"""The operators' control socket: an agent, or anything it starts, is refused; operators are not."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from supervisor import peers
from supervisor.control import REFUSED, request
from tests.conftest import FINAL_TYPES, ROOT, receive_until, run_turn, text_of, wait_for

REFUSAL = {"ok": False, "code": "control_refused", "error": REFUSED}


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=30, env=env)


def _log_events(server, name: str) -> list[dict]:
    return [e for e in (json.loads(ln) for ln in server.log_text().splitlines() if name in ln and ln.startswith("{"))
            if e["event"] == name]


@pytest.mark.parametrize("sandbox", ["off", "auto"])
async def test_an_agent_and_its_setsid_grandchild_are_refused_and_operators_are_not(make_server, client, sandbox):
    """A real agent finds DATA/run/control.sock and asks to list runs and kill another session, itself and from a
    grandchild that double-forked and setsid'd away: every connection is refused with control_refused and logged
    with its pid, the other session's turn goes on, and navi-ps / navi-kill from an operator's shell still work.
    With the sandbox off the server's check is all there is; with it on, Landlock below ABI 9 lets the connect
    through, so the server refuses it the same way (from ABI 9 the kernel may refuse it first)."""
    server = make_server("tests.agents:hostile", args=["--sandbox", sandbox])
    c = client(server)
    bystander, bws = await c.busy_session("slow 400 0.02")
    _, ws = await c.open_session()
    events = await run_turn(ws, f"control {bystander}", timeout=30)
    assert events[-1]["type"] == "stream_end", events[-1]
    report = json.loads(text_of(events))
    assert report["socket"] == str(server.data_dir / "run" / "control.sock")
    answers = report["direct"] + report["grandchild"]
    if sandbox == "auto" and all(a.get("failed", "").startswith("PermissionError") for a in answers):
        pytest.skip("this kernel's Landlock refuses the connect itself (ABI 9): the server's check is not reached")
    assert report["direct"] == [{"reply": REFUSAL}] * 2
    assert report["grandchild"] == [{"reply": REFUSAL}] * 2
    # it left the actor's session and process, and the supervisor (the subreaper) adopted it
    assert report["grandchild_sid"] != report["sid"] and report["grandchild_ppid"] == server.pid
    refused = wait_for(lambda: _log_events(server, "control.refused") if
                       len(_log_events(server, "control.refused")) >= 4 else None, 10, "the refusals' log lines")
    assert [e["peer_pid"] for e in refused] == [report["pid"]] * 2 + [report["grandchild_pid"]] * 2
    assert all(e["reason"].startswith("a process the server started") and e["level"] == "warning"
               and server.pid in e["peer_chain"] for e in refused)
    # the operator: the bystander still runs, ps lists it, kill stops it
    out = script("navi-ps", "--data-dir", str(server.data_dir), "--json")
    assert out.returncode == 0, out.stderr
    assert bystander in {r["session_id"] for r in json.loads(out.stdout)["actors"]}
    assert request(server.data_dir / "run" / "control.sock", {"op": "status"})["control_refused"] == 4
    out = script("navi-kill", "--data-dir", str(server.data_dir), bystander)
    assert out.returncode == 0 and out.stdout.split()[-1] == "stopped", out.stdout + out.stderr
    final = (await receive_until(bws, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "stream_stopped" and final["reason"] == "killed_by_operator"


def test_the_peer_check_reads_the_chain_and_refuses_our_descendants():
    """peers.judge on a made-up process tree: a descendant is refused, an outsider allowed, a vanished or
    re-parented link refused, and a peer that exited during the check refused."""
    tree = {50: 40, 40: 30, 30: 1, 1: 0, 60: 1}  # 30 is the supervisor; 60 is an operator's shell
    assert peers.judge(50, 7, 7, 30, tree.__getitem__).allowed is False
    assert peers.judge(50, 7, 7, 30, tree.__getitem__).chain == (50, 40, 30)  # read no further up
    assert peers.judge(60, 7, 7, 30, tree.__getitem__).allowed is True
    assert peers.judge(60, 8, 7, 30, tree.__getitem__).reason.startswith("uid 8")
    assert peers.judge(60, 7, 7, 30, tree.__getitem__, alive=lambda: False).reason == "the peer exited before the check"
    answers = iter([True, False])
    assert peers.judge(60, 7, 7, 30, tree.__getitem__, alive=lambda: next(answers)).reason == \
        "the peer exited during the check"

    def gone(pid: int) -> int:
        if pid == 40:
            raise FileNotFoundError(2, "No such file or directory")
        return tree[pid]

    assert "could not be read" in peers.judge(50, 7, 7, 30, gone).reason
    reads = []

    def moving(pid: int) -> int:  # 40 exits between the two reads: 50 is re-parented to 30
        reads.append(pid)
        return 30 if pid == 50 and reads.count(50) > 1 else tree[pid]

    assert "changed parents" in peers.judge(50, 7, 7, 99, moving).reason


def test_a_real_peer_is_judged_by_its_ancestry(tmp_path):
    """peers.check on real sockets: our own child is refused when we play the supervisor, allowed otherwise."""
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(4)
        child = subprocess.Popen([sys.executable, "-c", f"import socket,time; s=socket.socket(socket.AF_UNIX); "
                                  f"s.connect({path!r}); time.sleep(30)"])
        try:
            conn, _ = server.accept()
            with conn:
                mine = peers.check(conn)
                assert mine.allowed is False and mine.pid == child.pid and mine.chain[1] == os.getpid()
                assert peers.check(conn, own_pid=-1).allowed is True
        finally:
            child.kill()
            child.wait()
        # a peer that connected and exited before it was accepted: its pid may already be another's
        subprocess.run([sys.executable, "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})"],
                       check=True)
        conn, _ = server.accept()
        with conn:
            gone = peers.check(conn, own_pid=-1)
            assert gone.allowed is False and "exited" in gone.reason, gone
