"""The queue and client_message_id across restarts: a front killed with a queue pending, a host restart,
and a message resent after the front was killed, which runs once whether or not its first copy was saved."""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil

from tests.conftest import FINAL_TYPES, receive, receive_until, text_of, wait_for
from tests.test_functional_server import _new_front


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def final(e: dict[str, Any]) -> bool:
    return e["type"] in FINAL_TYPES and "seq" in e


def users(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in detail["messages"] if m["role"] == "user"]


def answers(detail: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["status"], m["content"]) for m in detail["messages"] if m["role"] == "assistant"]


async def test_a_front_killed_with_a_queue_pending(make_server, client):
    """kill -9 of the front while a turn runs and two messages wait: the new front adopts the turn, and
    when it ends the queued messages run, in order."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.busy_session("slow 60 0.02")
    for text in ("m1", "m2"):
        await ws.send_json({"type": "message", "content": text, "if_busy": "enqueue"})
    await receive_until(ws, lambda e: e["type"] == "queued" and e["position"] == 2)
    os.kill(server.front_pid, signal.SIGKILL)
    server.front_pid = _new_front(server, server.front_pid)
    ws2 = await c.connect(sid)
    start = await receive(ws2)
    assert start["type"] == "stream_start", "the first turn outlived the front"
    detail = await c.wait_session(sid, lambda d: len(answers(d)) == 3, timeout=20)
    first = "".join(f"w{i} " for i in range(60))
    assert answers(detail) == [("done", first), ("done", "m1 "), ("done", "m2 ")]
    assert [m["content"] for m in users(detail)] == ["slow 60 0.02", "m1", "m2"]
    assert detail["queue"] == []


async def test_queued_messages_run_after_a_host_restart(make_server, client, tmp_path):
    """The whole server is killed (-9) with a queue pending: at the next start, the lost turn is
    interrupted and the queued messages run."""
    data = tmp_path / "host"
    server = make_server("tests.agents:scripted", data_dir=data)
    c = client(server)
    sid, ws = await c.busy_session("slow 500 0.02")
    for text in ("m1", "m2"):
        await ws.send_json({"type": "message", "content": text, "if_busy": "enqueue"})
    await receive_until(ws, lambda e: e["type"] == "queued" and e["position"] == 2)
    family = server.descendants()
    server.proc.send_signal(signal.SIGKILL)  # the host goes down: every process of the server with it
    server.proc.wait(10)
    await ws.close()
    wait_for(lambda: not [p for p in family if alive(p)], 5, "every process of the server to exit")
    again = make_server("tests.agents:scripted", data_dir=data)
    c2 = client(again)
    detail = await c2.wait_session(sid, lambda d: len(answers(d)) == 3 and d["running_run_id"] is None, timeout=20)
    assert [a[0] for a in answers(detail)] == ["interrupted", "done", "done"]
    assert [a[1] for a in answers(detail)[1:]] == ["m1 ", "m2 "]
    assert [m.get("queued", False) for m in users(detail)] == [False, True, True]


async def test_a_resend_after_the_front_was_killed_runs_once_when_saved(make_server, client):
    """The first copy was saved (stream_start seen, then the front killed): the resend on the new front
    starts nothing; its sender follows the running turn, and after its end gets session_sync."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    msg = {"type": "message", "content": "slow 1000 0.02", "client_message_id": "c-saved", "if_busy": "enqueue"}
    await ws.send_json(msg)
    start = await receive(ws)
    assert start["type"] == "stream_start"
    await receive_until(ws, lambda e: e["type"] == "stream_delta")  # the actor has the turn: it outlives the front
    os.kill(server.front_pid, signal.SIGKILL)
    server.front_pid = _new_front(server, server.front_pid)
    ws2 = await c.connect(sid)
    await ws2.send_json(msg)
    events = await receive_until(ws2, lambda e: e["type"] == "stream_delta")
    assert events[0] == start, "the turn, replayed from its start"
    assert (await c.stop(sid))["ok"] is True
    events += await receive_until(ws2, final)
    assert [e for e in events if e["type"] == "stream_start"] == [start], "no second turn"
    assert events[-1]["type"] == "stream_stopped" and not [e for e in events if e["type"] in ("queued", "error")]
    assert (await receive(ws2))["type"] == "session_sync"  # a watcher's, at the end of the turn it watched
    await ws2.send_json(msg)
    sync = await receive_until(ws2, lambda e: e["type"] == "session_sync" and "last_seq" in e)
    assert sync[-1]["last_seq"] == events[-1]["seq"]
    detail = await c.session(sid)
    assert [(m["content"], m["client_message_id"]) for m in users(detail)] == [("slow 1000 0.02", "c-saved")]
    assert len(answers(detail)) == 1


async def test_a_resend_after_the_front_was_killed_runs_once_when_not_saved(make_server, client):
    """The first copy never reached a running front (it was stopped, then killed): the resend runs
    the turn, once; a second resend gets session_sync."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.open_session()
    msg = {"type": "message", "content": "hello again", "client_message_id": "c-lost"}
    os.kill(server.front_pid, signal.SIGSTOP)
    try:
        await ws.send_json(msg)  # it sits in the socket of a front that never reads it
    finally:
        os.kill(server.front_pid, signal.SIGKILL)
    server.front_pid = _new_front(server, server.front_pid)
    ws2 = await c.connect(sid)
    assert await receive(ws2) == {"type": "session_sync"}
    assert users(await c.session(sid)) == [], "the first copy was not saved"
    await ws2.send_json(msg)
    events = await receive_until(ws2, final)
    assert events[0]["type"] == "stream_start" and text_of(events) == "hello again "
    for _ in range(2):
        await ws2.send_json(msg)
        sync = await receive_until(ws2, lambda e: e["type"] == "session_sync")
        assert sync[-1]["last_seq"] == events[-1]["seq"]
    detail = await c.session(sid)
    assert [(m["content"], m["client_message_id"]) for m in users(detail)] == [("hello again", "c-lost")]
    assert answers(detail) == [("done", "hello again ")]
