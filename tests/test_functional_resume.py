"""Resuming with ?after=SEQ a turn that ended while the client was away, against a real server.

The session's actor keeps its last finished turn until the next turn starts
or the actor exits; a cursor in that turn (or just before its stream_start)
gets what it missed, the terminal event as first sent, then session_sync
with last_seq. Any other cursor gets session_sync alone (reload the history).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Callable

import aiohttp
import psutil
import pytest

from tests.conftest import FINAL_TYPES, receive, text_of, wait_for
from tests.test_functional_server import _new_front


async def raw_until(ws: aiohttp.ClientWebSocketResponse, pred: Callable[[dict[str, Any]], bool],
                    timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """Frames as received (text, parsed), heartbeats left out, up to the first matching ``pred``."""
    out = []
    while True:
        msg = await ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
        ev = json.loads(msg.data)
        if ev["type"] == "heartbeat":
            continue
        out.append((msg.data, ev))
        if pred(ev):
            return out


def is_final(ev: dict[str, Any]) -> bool:
    return ev["type"] in FINAL_TYPES and "seq" in ev


def is_sync(ev: dict[str, Any]) -> bool:
    return ev["type"] == "session_sync"


async def ended_turn(c: Any, content: str, stop: bool = False) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """A new session with one turn of ``content`` seen to its end, then the socket closed."""
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": content})
    if stop:
        seen = await raw_until(ws, lambda e: e["type"] == "stream_delta" and e["seq"] >= 4)
        assert (await c.stop(sid))["ok"] is True
        seen += await raw_until(ws, is_final)
    else:
        seen = await raw_until(ws, is_final)
    await ws.close()
    return sid, seen


async def resume(c: Any, sid: str, after: int) -> list[tuple[str, dict[str, Any]]]:
    ws = await c.connect(sid, after=after)
    try:
        return await raw_until(ws, is_sync)
    finally:
        await ws.close()


@pytest.mark.parametrize(("content", "stop", "final_type", "seen_events"), [
    ("slow 6 0.001", False, "stream_end", 3),
    ("fail", False, "error", 0),  # one delta, then the agent raises
    ("slow 500 0.02", True, "stream_stopped", 2),
])
async def test_a_cursor_in_the_ended_turn_gets_the_tail_and_the_end_as_first_sent(
        scripted_server, client, content, stop, final_type, seen_events):
    """A cursor in the middle of an ended turn gets the events after it, then its terminal
    event byte for byte as first sent, then session_sync with that event's seq."""
    c = client(scripted_server)
    sid, seen = await ended_turn(c, content, stop)
    events = [ev for _, ev in seen]
    start, (final_raw, final) = events[0], seen[-1]
    assert final["type"] == final_type
    cursor = start["seq"] + seen_events  # the client had these when it was cut off
    got = await resume(c, sid, cursor)
    kinds = [ev["type"] for _, ev in got]
    assert kinds == ["replay_start", "stream_delta", "replay_end", final_type, "session_sync"], kinds
    assert got[0][1]["count"] == 1, "the missed deltas come merged"
    assert got[-2][0] == final_raw, "the terminal event is the one first sent, byte for byte"
    assert got[-1][1] == {"type": "session_sync", "last_seq": final["seq"]}
    assert text_of(events[: 1 + seen_events]) + text_of([ev for _, ev in got]) == text_of(events)
    seqs = [ev["seq"] for _, ev in got if "seq" in ev]
    assert seqs == sorted(set(seqs)) and seqs[0] > cursor, "nothing before the cursor, nothing twice"
    async with c.http.get(scripted_server.url + "/healthz") as r:
        assert (await r.json())["runs"] == 0, "the kept turn is not a running one"


async def test_a_cursor_at_the_end_gets_the_terminal_event_or_nothing(scripted_server, client):
    """A cursor just before the terminal event gets that event alone; at it, only session_sync."""
    c = client(scripted_server)
    sid, seen = await ended_turn(c, "slow 3 0.001")
    final_raw, final = seen[-1]
    got = await resume(c, sid, final["seq"] - 1)
    assert [raw for raw, _ in got[:-1]] == [final_raw]
    assert got[-1][1] == {"type": "session_sync", "last_seq": final["seq"]}
    got = await resume(c, sid, final["seq"])
    assert [ev for _, ev in got] == [{"type": "session_sync", "last_seq": final["seq"]}]


async def test_a_cursor_from_before_the_turn_gets_all_of_it(scripted_server, client):
    """A cursor just before the turn's stream_start (the client saw the session up to there)
    gets the whole turn: stream_start, every event, the terminal event, session_sync."""
    c = client(scripted_server)
    sid, seen = await ended_turn(c, "slow 5 0.001")
    (start_raw, start), (final_raw, final) = seen[0], seen[-1]
    got = await resume(c, sid, start["seq"] - 1)
    assert [ev["type"] for _, ev in got] == ["stream_start", "replay_start", "stream_delta", "replay_end",
                                            "stream_end", "session_sync"]
    assert got[0][0] == start_raw and got[-2][0] == final_raw
    assert text_of([ev for _, ev in got]) == final["content"] == "w0 w1 w2 w3 w4 "


async def test_a_cursor_from_an_earlier_turn_gets_session_sync_alone(scripted_server, client):
    """Once the next turn has started, the first turn is not kept: a cursor in it, or one
    from before the last turn's stream_start, or past the session's end, gets session_sync
    alone (reload the history); the busy guard lets that next turn start at once."""
    c = client(scripted_server)
    sid, first = await ended_turn(c, "slow 3 0.001")
    ws = await c.connect(sid, after=first[-1][1]["seq"])
    assert await receive(ws) == {"type": "session_sync", "last_seq": first[-1][1]["seq"]}
    await ws.send_json({"type": "message", "content": "slow 3 0.001"})
    second = await raw_until(ws, is_final)
    assert second[-1][1]["type"] == "stream_end", second[-1]
    await ws.close()
    start2, end2 = second[0][1]["seq"], second[-1][1]["seq"]
    for cursor in (first[1][1]["seq"], start2 - 2, end2 + 1, 0):
        got = await resume(c, sid, cursor)
        assert [ev for _, ev in got] == [{"type": "session_sync"}], cursor
    assert len(await resume(c, sid, start2 - 1)) > 1, "the last turn is kept"


async def test_the_ended_turn_lives_as_long_as_its_actor(scripted_server, client):
    """A resume works until the actor exits (here an operator stops the idle actor, as
    --idle-timeout would); then it gets session_sync alone."""
    c = client(scripted_server)
    sid, seen = await ended_turn(c, "pid")
    pid = int(text_of([ev for _, ev in seen]).removeprefix("pid="))
    assert [ev["type"] for _, ev in await resume(c, sid, seen[0][1]["seq"])] == [
        "replay_start", "stream_delta", "replay_end", "stream_end", "session_sync"]
    async with c.http.post(f"{scripted_server.url}/runs/{sid}/kill", json={}) as r:
        assert r.status == 200, await r.text()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             15, "the idle actor to exit")
    wait_for(lambda: pid not in scripted_server.actor_pids(), 15, "the actor to be reaped")
    got = await resume(c, sid, seen[0][1]["seq"])
    assert [ev for _, ev in got] == [{"type": "session_sync"}]


async def test_the_ended_turn_survives_a_front_restart(make_server, client):
    """The actor, not the front, keeps the ended turn: after kill -9 of the front, the new
    front serves the resume from the adopted actor."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, seen = await ended_turn(c, "slow 4 0.001")
    os.kill(server.front_pid, signal.SIGKILL)
    server.front_pid = _new_front(server, server.front_pid)
    got = await resume(c, sid, seen[1][1]["seq"])
    assert [ev["type"] for _, ev in got] == ["replay_start", "stream_delta", "replay_end", "stream_end",
                                            "session_sync"]
    assert got[-2][0] == seen[-1][0]
