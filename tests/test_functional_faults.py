"""Fault isolation with real misbehaving agents: deaths explained, the stop ladder, limits.

Crash tests run a healthy session beside the failing one and check that its
stream is whole; ladder tests check which step ended the stop and that no
process of the actor's group is left.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from tests.conftest import FINAL_TYPES, Server, receive, receive_until, run_turn, text_of, wait_for

GRACE, TERM_AFTER, KILL_AFTER = 0.3, 1.0, 1.0


@pytest.fixture(scope="module")
def faults_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("faults") / "var", "tests.agents:scripted", {},
        ["--stop-grace", str(GRACE), "--stop-term-after", str(TERM_AFTER), "--stop-kill-after", str(KILL_AFTER),
         "--actor-max-rss", "150"],
    )
    server.start()
    yield server
    server.stop()


def group_of(pgid: int) -> list[psutil.Process]:
    """Live processes in process group ``pgid``."""
    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and __import__("os").getpgid(proc.pid) == pgid:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


async def actor_pid_of(c, ws) -> int:
    return int(text_of(await run_turn(ws, "pid")).removeprefix("pid="))


@pytest.mark.parametrize(
    "command, message",
    [
        ("crash", "agent process exited with code 3"),
        ("segv", "agent process crashed (signal SIGSEGV)"),
        ("baseexc", "agent raised AgentMeltdown (not an Exception), which ends its process"),
        ("hog 400", "agent process exceeded its memory limit of 150 MB and was killed"),
    ],
)
async def test_actor_death_is_explained_and_the_neighbour_is_untouched(faults_server, client, command, message):
    """A dying actor gives its viewer actor_died with the cause; a session beside it streams without a gap."""
    c = client(faults_server)
    sid, ws = await c.open_session()
    _, healthy = await c.open_session()
    await healthy.send_json({"type": "message", "content": "slow 60 0.01"})
    neighbour = asyncio.create_task(receive_until(healthy, lambda e: e["type"] in FINAL_TYPES))
    await ws.send_json({"type": "message", "content": command})
    first = await receive_until(ws, lambda e: e["type"] == "stream_delta")
    t0 = time.monotonic()
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    assert time.monotonic() - t0 < 1.5 if command != "hog 400" else True
    err = rest[-1]
    assert err["type"] == "error" and err["code"] == "actor_died" and err["message"] == message
    assert text_of(first) in ("partial ", "eating ")
    events = await neighbour
    assert events[-1]["type"] == "stream_end"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap in the healthy stream"
    assert events[-1]["content"] == "".join(f"w{i} " for i in range(60))
    saved = (await c.session(sid))["messages"][-1]
    assert saved["status"] == "failed" and saved["error"] == message and saved["content"] == text_of(first)
    assert (await run_turn(ws, "pid"))[-1]["type"] == "stream_end", "the next message gets a fresh actor"


async def test_actor_killed_from_outside_is_explained(faults_server, client):
    """SIGKILL from outside mid-turn: the viewer is told the process was killed."""
    c = client(faults_server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "pid 500 0.02"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta")
    psutil.Process(int(text_of(seen).removeprefix("pid="))).kill()
    err = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert err["code"] == "actor_died"
    assert err["message"] == "agent process was killed (SIGKILL; perhaps out of memory?)"


async def test_ladder_reaches_sigkill_when_sigterm_is_trapped(faults_server, client):
    """An agent that blocks its loop and ignores SIGTERM is ended by SIGKILL, on schedule."""
    c = client(faults_server)
    sid, ws = await c.open_session()
    pid = await actor_pid_of(c, ws)
    await ws.send_json({"type": "message", "content": "trap_term"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    t0 = time.monotonic()
    assert (await c.stop(sid))["ok"] is True
    final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=10))[-1]
    elapsed = time.monotonic() - t0
    assert final["type"] == "stream_stopped" and final["stop_step"] == "sigkill"
    assert TERM_AFTER + KILL_AFTER - 0.1 < elapsed < TERM_AFTER + KILL_AFTER + 1.5
    assert final["content"] == "trapped "
    wait_for(lambda: not group_of(pid), 5, "the actor's group to be gone")


async def test_ladder_leaves_no_process_of_the_actor_group(faults_server, client):
    """An agent that started `sleep 1000` and ignores stop: after the ladder, its whole group is gone."""
    c = client(faults_server)
    sid, ws = await c.open_session()
    pid = await actor_pid_of(c, ws)
    await ws.send_json({"type": "message", "content": "child"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta")
    sleeper = psutil.Process(int(text_of(seen)))
    assert sleeper.name() == "sleep" and __import__("os").getpgid(sleeper.pid) == pid
    assert (await c.stop(sid))["ok"] is True
    final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=10))[-1]
    assert final["type"] == "stream_stopped" and final["stop_step"] == "cancel"
    # The cancelled agent leaves its child; the stop ladder does not kill a cooperative actor,
    # so end the session's actor and check the group goes with it.
    async with c.http.delete(f"{faults_server.url}/sessions/{sid}") as r:
        assert r.status == 200
    wait_for(lambda: not group_of(pid), 5, "the actor's group, sleep included, to be gone")


async def test_stop_during_actor_start_up(faults_server, client):
    """A stop sent before the actor has started still ends in stream_stopped."""
    c = client(faults_server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "slow 100 0.02"})
    start = await receive(ws)
    assert start["type"] == "stream_start"
    assert (await c.stop(sid))["ok"] is True
    again = await c.stop(sid)  # idempotent: still ending, or already ended
    assert again in ({"ok": True}, {"ok": False, "reason": "no active run"})
    final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "stream_stopped"


async def test_wall_time_limit_stops_the_turn_and_says_so(make_server, client):
    """A turn over --turn-timeout is stopped through the ladder with a reason naming the limit."""
    server = make_server("tests.agents:scripted", args=["--turn-timeout", "0.5"])
    c = client(server)
    sid, ws = await c.open_session()
    events = await run_turn(ws, "slow 500 0.02")
    final = events[-1]
    assert final["type"] == "stream_stopped" and final["reason"] == "turn_timeout"
    assert "wall-time limit of 0.5 s" in final["message"]
    saved = (await c.session(sid))["messages"][-1]
    assert saved["status"] == "stopped" and saved["error_code"] == "turn_timeout"


async def test_capacity_evicts_idle_actors_then_refuses(make_server, client):
    """With --max-actors 2, a third session evicts the idle actor; when all are busy the client gets capacity."""
    server = make_server("tests.agents:scripted", args=["--max-actors", "2"])
    c = client(server)
    _, idle_ws = await c.open_session()
    idle_pid = await actor_pid_of(c, idle_ws)
    _, busy1 = await c.open_session()
    await busy1.send_json({"type": "message", "content": "slow 300 0.02"})
    await receive_until(busy1, lambda e: e["type"] == "stream_delta")
    sid2, busy2 = await c.open_session()
    await busy2.send_json({"type": "message", "content": "slow 300 0.02"})
    await receive_until(busy2, lambda e: e["type"] == "stream_delta")
    wait_for(lambda: not psutil.pid_exists(idle_pid), 5, "the idle actor to be evicted")
    sid3, full = await c.open_session()
    await full.send_json({"type": "message", "content": "hello"})
    err = await receive(full)
    assert err["type"] == "error" and err["code"] == "capacity" and "all 2 agent processes are busy" in err["message"]
    assert (await c.session(sid3))["messages"] == [], "a refused message is not saved"
    assert (await c.stop(sid2))["ok"] is True


def test_supervisor_death_ends_agents_child_processes(make_server, tmp_path: Path):
    """kill -9 of the supervisor: the front, the actors and the agents' own children all exit within 2 s."""
    server = make_server("tests.agents:scripted")

    async def start_child() -> int:
        import aiohttp

        from tests.conftest import Client

        async with aiohttp.ClientSession() as http:
            c = Client(server, http)
            _, ws = await c.open_session()
            await ws.send_json({"type": "message", "content": "child"})
            seen = await receive_until(ws, lambda e: e["type"] == "stream_delta")
            return int(text_of(seen))

    sleeper = psutil.Process(asyncio.run(start_child()))
    family = server.descendants()
    assert sleeper in family
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    t0 = time.monotonic()
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family),
             5, "every process of the server to exit")
    assert time.monotonic() - t0 < 2.0
