"""The server as a whole: the demo agent, restarts, shutdown, idle actors, faults."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil

from tests.conftest import FINAL_TYPES, receive, receive_until, run_turn, text_of, wait_for

FAST = {"NAVI_AGENT_TOKENS_PER_SECOND": "0"}


async def test_demo_turn_shows_every_event_kind_in_order(make_server, client):
    """The demo agent's turn: planning, thinking, plan, a real tool call, streamed text, stream_end."""
    server = make_server("demo", FAST)
    c = client(server)
    sid, ws = await c.open_session()
    events = await run_turn(ws, "What is 2 + 40?")
    kinds = [e["type"] for e in events]
    order = ["stream_start", "planning_status", "thinking_delta", "thinking_end", "plan_ready",
             "tool_started", "tool_call", "stream_delta", "stream_end"]
    assert [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k] == order
    tool = events[kinds.index("tool_call")]
    assert tool["tool"] == "add_numbers" and tool["result"]["sum"] == "42" and tool["success"] is True
    end = events[-1]
    assert end["content"] == text_of(events) and "add up to 42" in end["content"]
    assert end["tool_call_count"] == 1 and end["token_count"] == kinds.count("stream_delta")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    detail = await c.session(sid)
    assert [m["role"] for m in detail["messages"]] == ["user", "tool", "assistant"]
    assert detail["messages"][2]["thinking"].startswith("The user wrote")
    assert detail["title"] == "What is 2 + 40?"


async def test_echo_agent_streams_the_message_back(make_server, client):
    """The echo agent (a factory-style agent) streams the words back."""
    server = make_server("echo", FAST)
    c = client(server)
    _, ws = await c.open_session()
    events = await run_turn(ws, "one two  three")
    assert [e["delta"] for e in events if e["type"] == "stream_delta"] == ["one", " two", "  three"]
    assert events[-1]["content"] == "one two  three"


async def test_demo_stop_arrives_within_half_a_second(make_server, client):
    """Stopping the demo agent mid-answer gives stream_stopped within 0.5 s, partial text saved."""
    server = make_server("demo", {"NAVI_AGENT_TOKENS_PER_SECOND": "20"})
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "hello"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta")
    t0 = time.monotonic()
    assert await c.stop(sid) == {"ok": True}
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    assert time.monotonic() - t0 < 0.5
    assert rest[-1]["type"] == "stream_stopped" and rest[-1]["stop_step"] == "event"
    saved = (await c.session(sid))["messages"][-1]
    assert saved["status"] == "stopped" and saved["content"] == text_of(seen + rest) != ""


async def test_history_survives_a_server_restart(make_server, client, tmp_path):
    """A finished turn is in the history after the server is stopped and started again."""
    data = tmp_path / "data"
    server = make_server("demo", FAST, data_dir=data)
    c = client(server)
    sid, ws = await c.open_session()
    events = await run_turn(ws, "remember 7")
    await ws.close()
    assert server.stop() == 0
    server2 = make_server("demo", FAST, data_dir=data)
    c2 = client(server2)
    detail = await c2.session(sid)
    assert [m["role"] for m in detail["messages"]] == ["user", "tool", "assistant"]
    assert detail["messages"][-1]["content"] == events[-1]["content"]
    ws2 = await c2.connect(sid)
    assert await receive(ws2) == {"type": "session_sync"}
    again = await run_turn(ws2, "and again")
    assert again[0]["seq"] == events[-1]["seq"] + 1, "seq keeps growing across restarts"
    assert "turn 2 of this session" in again[-1]["content"], "the agent got the history"


async def test_graceful_shutdown_lets_running_turns_finish(make_server, client):
    """SIGTERM drains: the running turn completes and is saved, then the server exits 0 with no process left."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "slow 20 0.02"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    server.proc.send_signal(signal.SIGTERM)
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    assert rest[-1]["type"] == "stream_end"
    assert server.stop() == 0
    server2 = make_server("tests.agents:scripted", data_dir=server.data_dir)
    detail = await client(server2).session(sid)
    assert detail["messages"][-1]["status"] == "done"


async def test_idle_actor_exits_after_its_timeout(make_server, client):
    """An actor with no running turn exits after --idle-timeout; the session's next turn starts a new one."""
    server = make_server("tests.agents:scripted", args=["--idle-timeout", "0.5"])
    c = client(server)
    _, ws = await c.open_session()
    pid = int(text_of(await run_turn(ws, "pid")).removeprefix("pid="))
    wait_for(lambda: not psutil.pid_exists(pid), 5, "the idle actor to exit")
    pid2 = int(text_of(await run_turn(ws, "pid")).removeprefix("pid="))
    assert pid2 != pid


async def test_agent_factory_failure_is_reported(make_server, client):
    """A factory that raises gives agent_failed_to_start with the cause; the server keeps serving."""
    server = make_server("tests.agents:broken_factory")
    c = client(server)
    _, ws = await c.open_session()
    err = (await run_turn(ws, "hi"))[-1]
    assert err["type"] == "error" and err["code"] == "agent_failed_to_start"
    assert "factory exploded" in err["message"]
    async with c.http.get(server.url + "/healthz") as r:
        assert r.status == 200


def test_unloadable_agent_refuses_to_start(make_server, tmp_path):
    """An --agent that cannot be imported stops `serve` at once with exit code 2 and the reason."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "navi_actor", "serve", "--agent", "no_such_module:agent",
         "--data-dir", str(tmp_path / "d"), "--port", "0"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "cannot import agent module 'no_such_module'" in proc.stderr


def test_taken_port_is_a_clear_failure(tmp_path):
    """A port already in use ends `serve` at once with exit code 2 and a message naming it."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "navi_actor", "serve", "--port", str(port), "--data-dir",
             str(tmp_path / "d"), "--log-format", "json"],
            capture_output=True, text=True, timeout=30,
        )
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr


def _new_front(server, old_front: int) -> int:
    def changed() -> int:
        pid = json.loads((server.data_dir / "server.json").read_text())["front_pid"]
        return pid if pid != old_front else 0

    return wait_for(changed, 10, "a new front")


async def test_front_death_loses_sockets_not_runs(make_server, client):
    """kill -9 of the front mid-turn: a new front adopts the actor; a reconnecting client gets the whole turn."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "pid 60 0.02"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["seq"] >= 3)
    actor_pid = int(text_of(seen).split()[0].removeprefix("pid="))
    os.kill(server.front_pid, signal.SIGKILL)
    server.front_pid = _new_front(server, server.front_pid)
    ws2 = await c.connect(sid, after=seen[-1]["seq"])
    start = await receive(ws2)
    assert start["type"] == "stream_start" and start["run_id"] == seen[0]["run_id"]
    rest = await receive_until(ws2, lambda e: e["type"] in FINAL_TYPES)
    end = rest[-1]
    assert end["type"] == "stream_end"
    assert text_of(seen) + text_of(rest) == end["content"]
    assert end["content"] == f"pid={actor_pid}" + "".join(f" {i}" for i in range(60))
    detail = await c.session(sid)
    assert detail["messages"][-1]["status"] == "done" and detail["messages"][-1]["content"] == end["content"]
    again = await run_turn(ws2, "pid")
    assert text_of(again) == f"pid={actor_pid}", "the adopted actor serves the session's next turn"


async def test_turn_that_ends_while_the_front_is_down_is_saved(make_server, client):
    """A turn that finishes during a front restart is saved complete when the new front adopts its actor."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "slow 3 0.01"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    os.kill(server.front_pid, signal.SIGKILL)
    server.front_pid = _new_front(server, server.front_pid)
    detail = await c.wait_session(sid, lambda d: d["messages"][-1]["role"] == "assistant")
    assert detail["messages"][-1]["status"] == "done"
    assert detail["messages"][-1]["content"] == "w0 w1 w2 "


async def test_actor_lost_during_a_front_restart_is_recorded_as_interrupted(make_server, client):
    """If the actor dies while no front is up, the new front marks its turn interrupted, never stuck running."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "pid 500 0.02"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["seq"] >= 3)
    actor_pid = int(text_of(seen).split()[0].removeprefix("pid="))
    os.kill(server.front_pid, signal.SIGKILL)
    os.kill(actor_pid, signal.SIGKILL)
    server.front_pid = _new_front(server, server.front_pid)
    detail = await c.wait_session(sid, lambda d: d["messages"][-1]["role"] == "assistant")
    last = detail["messages"][-1]
    # Reaped before the new front started: interrupted; after: explained as a death.
    assert (last["status"], last["error_code"]) in {("interrupted", "interrupted"), ("failed", "actor_died")}
    assert last["error"]
    ws2 = await c.connect(sid)
    assert await receive(ws2) == {"type": "session_sync"}
    again = await run_turn(ws2, "hello")
    assert again[-1]["type"] == "stream_end" and again[0]["seq"] > seen[-1]["seq"]


async def test_supervisor_death_takes_every_process_with_it(make_server, client):
    """kill -9 of the supervisor ends the front and every actor (no orphans)."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "slow 500 0.02"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    family = server.descendants()
    assert len(family) >= 2
    server.proc.kill()
    server.proc.wait(10)
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family
                             if psutil.pid_exists(p.pid)), 5, "the front and actors to exit")


async def test_agent_module_in_the_current_folder_is_found(make_server, client, tmp_path):
    """`navi-actor serve --agent myagent:agent` finds ./myagent.py, as docs/agents.md shows."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "myagent.py").write_text(
        "from navi_actor.events import TextDelta\n"
        "async def agent(turn):\n"
        "    yield TextDelta('mine: ' + turn.content)\n"
    )
    server = make_server("myagent:agent", cwd=folder)
    c = client(server)
    _, ws = await c.open_session()
    assert (await run_turn(ws, "hi"))[-1]["content"] == "mine: hi"


async def test_factory_aclose_runs_when_the_actor_exits(make_server, client, tmp_path):
    """A factory object's aclose() is awaited when its actor exits in order (here: idle timeout)."""
    (tmp_path / "marks").mkdir()
    marker = tmp_path / "marks" / "closed.txt"
    server = make_server("tests.agents:closing_factory", env={"NAVI_TEST_MARKER": str(marker)},
                         args=["--idle-timeout", "0.3", "--sandbox-write", str(marker.parent)])
    c = client(server)
    _, ws = await c.open_session()
    assert (await run_turn(ws, "hi"))[-1]["content"] == "hello"
    # (the file exists from its open() on, before its text is written: wait for the text)
    wait_for(lambda: marker.exists() and marker.read_text(), 5, "aclose to leave its mark")
    assert marker.read_text().startswith("closed by ")


async def test_ws_compress_streams_compressed_frames(make_server):
    """With --ws-compress a client that offers deflate gets the whole turn, compressed."""
    import aiohttp

    server = make_server("tests.agents:scripted", args=["--ws-compress"])
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/sessions", json={}) as r:
            sid = (await r.json())["id"]
        async with http.ws_connect(f"{server.ws_url}/ws/sessions/{sid}", compress=15) as ws:
            assert ws.compress == 15, "deflate was negotiated"
            await receive(ws)
            events = await run_turn(ws, "fast 500")
    assert events[-1]["type"] == "stream_end" and text_of(events) == "".join(f"w{i} " for i in range(500))


async def test_second_interrupt_skips_the_drain(make_server, client):
    """A second Ctrl-C during the drain stops running turns at once (stream_stopped), saves them, exits 0."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "slow 1000 0.02"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    server.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "front.draining" in server.log_text(), 10, "the drain to begin")
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "stream_stopped" and time.monotonic() - t0 < 2
    assert server.proc.wait(15) == 0
    server2 = make_server("tests.agents:scripted", data_dir=server.data_dir)
    saved = (await client(server2).session(sid))["messages"][-1]
    assert saved["status"] == "stopped" and saved["content"] == final["content"]
