"""The wire protocol against a real server: turns, replay, resume, stop, errors.

One server (tests.agents:scripted) serves the whole module; each test uses
its own sessions.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import psutil

from tests.conftest import FINAL_TYPES, receive, receive_until, run_turn, text_of

FIVE_MB = 5 * 1024 * 1024


def assert_consecutive(events: list[dict]) -> None:
    seqs = [e["seq"] for e in events if "seq" in e]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


async def connected(c, sid=None, after=None):
    sid = sid or await c.new_session()
    ws = await c.connect(sid, after)
    return sid, ws


async def test_a_turn_streams_in_order_with_growing_seq(scripted_server, client):
    """A turn is stream_start (with run_id), the agent's events and stream_end, seq without gaps."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    assert await receive(ws) == {"type": "session_sync"}
    events = await run_turn(ws, "tool")
    assert [e["type"] for e in events] == ["stream_start", "tool_started", "tool_call", "stream_delta", "stream_end"]
    start, end = events[0], events[-1]
    assert start["seq"] == 1 and len(start["run_id"]) == 32
    assert_consecutive(events)
    assert end["content"] == "found 42" and end["run_id"] == start["run_id"]
    assert end["tool_call_count"] == 1 and end["token_count"] == 1
    assert isinstance(end["elapsed_seconds"], float)
    second = await run_turn(ws, "again please")
    assert second[0]["seq"] == end["seq"] + 1, "seq keeps growing across turns"
    detail = await c.session(sid)
    roles = [(m["role"], m.get("status")) for m in detail["messages"]]
    assert roles == [("user", None), ("tool", None), ("assistant", "done"), ("user", None), ("assistant", "done")]
    assert detail["messages"][1]["tool"] == "lookup" and detail["messages"][1]["success"] is True
    assert detail["messages"][1]["metadata"] == {"call_id": "c1"}, "tool metadata is kept"
    assert detail["last_seq"] == second[-1]["seq"]


async def test_two_sessions_run_at_once_in_two_processes(scripted_server, client):
    """Two sessions' turns overlap, each in its own actor process, reused by the next turn."""
    c = client(scripted_server)
    (_, ws1), (_, ws2) = await connected(c), await connected(c)
    await receive(ws1), await receive(ws2)
    t1 = asyncio.create_task(run_turn(ws1, "pid 5 0.05"))
    t2 = asyncio.create_task(run_turn(ws2, "pid 5 0.05"))
    e1, e2 = await t1, await t2
    pid1 = int(text_of(e1).split()[0].removeprefix("pid="))
    pid2 = int(text_of(e2).split()[0].removeprefix("pid="))
    assert pid1 != pid2
    assert {pid1, pid2}.isdisjoint({scripted_server.pid, scripted_server.front_pid})
    assert {pid1, pid2} <= scripted_server.actor_pids()
    again = await run_turn(ws1, "pid")
    assert text_of(again) == f"pid={pid1}", "the session's actor serves its later turns"


async def test_every_viewer_of_a_session_gets_the_same_stream(scripted_server, client):
    """Two tabs on one session both receive the turn one of them started."""
    c = client(scripted_server)
    sid, ws1 = await connected(c)
    _, ws2 = await connected(c, sid)
    await receive(ws1), await receive(ws2)
    mine = await run_turn(ws1, "slow 5 0.01")
    theirs = await receive_until(ws2, lambda e: e["type"] in FINAL_TYPES)
    assert theirs == mine
    assert await receive(ws2) == {"type": "session_sync", "last_seq": mine[-1]["seq"]}, \
        "a bystander is told the turn ended, and where the session ends: it has all of it"


async def test_reconnect_mid_turn_gets_replay_then_live(scripted_server, client):
    """A client that reconnects mid-turn gets stream_start, the replay, then live events, with nothing lost."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "slow 40 0.02"})
    first = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["seq"] >= 6)
    await ws.close()
    ws2 = await c.connect(sid)
    start = await receive(ws2)
    assert start["type"] == "stream_start" and start["run_id"] == first[0]["run_id"]
    replay_start = await receive(ws2)
    assert replay_start["type"] == "replay_start"
    replayed = [await receive(ws2) for _ in range(replay_start["count"])]
    assert await receive(ws2) == {"type": "replay_end"}
    live = await receive_until(ws2, lambda e: e["type"] in FINAL_TYPES)
    end = live[-1]
    assert await receive(ws2) == {"type": "session_sync", "last_seq": end["seq"]}
    assert end["type"] == "stream_end"
    assert text_of(replayed + live) == end["content"] == "".join(f"w{i} " for i in range(40))
    seqs = [e["seq"] for e in replayed + live]
    assert seqs == sorted(set(seqs)), "no duplicates, in order"
    assert live[0]["seq"] == replayed[-1]["seq"] + 1, "live continues right after the replay"


async def test_resume_after_seq_replays_only_later_events(scripted_server, client):
    """?after=SEQ gives exactly the events after SEQ: the text before plus after is the whole."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "slow 40 0.02"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["seq"] >= 10)
    last = seen[-1]["seq"]
    await ws.close()
    ws2 = await c.connect(sid, after=last)
    assert (await receive(ws2))["type"] == "stream_start"
    rest = await receive_until(ws2, lambda e: e["type"] in FINAL_TYPES)
    assert all(e["seq"] > last for e in rest if "seq" in e)
    assert text_of(seen) + text_of(rest) == rest[-1]["content"]


async def test_connecting_without_after_once_the_turn_ended_says_sync(scripted_server, client):
    """Connecting with no ?after= after the turn ended gets session_sync alone, as the original
    did (a resume with a cursor: tests/test_functional_resume.py)."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await run_turn(ws, "hi")
    ws2 = await c.connect(sid)
    assert await receive(ws2) == {"type": "session_sync"}


async def test_disconnect_does_not_stop_the_turn(scripted_server, client):
    """A client that leaves mid-turn does not stop it: the turn completes and is saved."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "slow 10 0.02"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    await ws.close()
    detail = await c.wait_session(sid, lambda d: d["messages"][-1]["role"] == "assistant")
    assert detail["messages"][-1]["status"] == "done"
    assert detail["messages"][-1]["content"] == "".join(f"w{i} " for i in range(10))


async def test_stop_ends_in_stream_stopped_and_keeps_partial_text(scripted_server, client):
    """POST stop trips the stop event: stream_stopped for the viewer, partial text saved, stop is idempotent."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "slow 500 0.02"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["seq"] >= 4)
    assert await c.stop(sid) == {"ok": True}
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    stopped = rest[-1]
    assert stopped["type"] == "stream_stopped" and stopped["stop_step"] == "event"
    assert stopped["content"] == text_of(seen + rest)
    assert await c.stop(sid) == {"ok": False, "reason": "no active run"}
    detail = await c.session(sid)
    assert detail["messages"][-1]["status"] == "stopped"
    assert detail["messages"][-1]["content"] == stopped["content"] != ""
    assert detail["messages"][-1]["stats"]["stop_step"] == "event"


async def test_stop_cancels_an_agent_that_ignores_the_event(scripted_server, client):
    """An agent that never looks at the stop event is cancelled after the grace period."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "ignore_stop"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    assert (await c.stop(sid))["ok"] is True
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=10)
    assert rest[-1]["type"] == "stream_stopped" and rest[-1]["stop_step"] == "cancel"


async def test_stop_escalates_to_sigterm_for_a_blocked_agent(scripted_server, client):
    """An agent blocking its event loop is ended by SIGTERM to its process group; the next turn works."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "pid"})
    pid_text = text_of(await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))
    await ws.send_json({"type": "message", "content": "block"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    assert (await c.stop(sid))["ok"] is True
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=10)
    assert rest[-1]["type"] == "stream_stopped" and rest[-1]["stop_step"] == "sigterm"
    assert not psutil.pid_exists(int(pid_text.removeprefix("pid="))) or \
        psutil.Process(int(pid_text.removeprefix("pid="))).status() == psutil.STATUS_ZOMBIE
    detail = await c.session(sid)
    assert detail["messages"][-1]["status"] == "stopped"
    assert detail["messages"][-1]["content"] == "blocking "
    again = await run_turn(ws, "pid")
    assert again[-1]["type"] == "stream_end" and text_of(again) != pid_text, "a fresh actor"


async def test_an_agent_can_run_subprocesses_with_asyncio(scripted_server, client):
    """asyncio subprocesses work in actors (uvloop's child watcher needs libuv state made after the fork)."""
    c = client(scripted_server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    for word in ("first", "second"):  # a fresh actor, then the same one again
        assert text_of(await run_turn(ws, f"subproc {word}")) == f"{word} rc=0 loop=uvloop"


async def test_agent_exception_is_an_internal_error_and_the_actor_stays(scripted_server, client):
    """An exception in the agent ends the turn with 'Internal error: …'; the same actor serves the next turn."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    before = text_of(await run_turn(ws, "pid"))
    events = await run_turn(ws, "fail")
    err = events[-1]
    assert err["type"] == "error" and err["message"] == "Internal error: boom" and err["code"] == "agent_error"
    assert text_of(await run_turn(ws, "pid")) == before
    detail = await c.session(sid)
    failed = detail["messages"][-3]
    assert failed["status"] == "failed" and failed["content"] == "partial " and failed["error"] == "Internal error: boom"


async def test_agent_error_carries_the_agents_own_message_and_code(scripted_server, client):
    """An AgentError reaches the client as its message and code, without 'Internal error:'."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    err = (await run_turn(ws, "usererr"))[-1]
    assert (err["type"], err["code"]) == ("error", "model_auth")
    assert err["message"] == "The model server refused the key; check MY_KEY."
    saved = (await c.session(sid))["messages"][-1]
    assert saved["error_code"] == "model_auth" and saved["content"] == "partial "


async def test_agent_yielding_a_non_event_is_told_what_it_yielded(scripted_server, client):
    """An agent that yields something that is not an event gets an error naming it."""
    c = client(scripted_server)
    _, ws = await connected(c)
    await receive(ws)
    err = (await run_turn(ws, "badyield"))[-1]
    assert err["type"] == "error" and "agent yielded int" in err["message"]


async def test_crashing_actor_is_explained_and_the_session_goes_on(scripted_server, client):
    """An actor that exits mid-turn gives actor_died with its exit code; the next message gets a fresh actor."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    events = await run_turn(ws, "crash")
    err = events[-1]
    assert err["type"] == "error" and err["code"] == "actor_died"
    assert err["message"] == "agent process exited with code 3"
    assert text_of(events) == "partial ", "what the actor sent before dying is delivered"
    detail = await c.session(sid)
    assert detail["messages"][-1]["status"] == "failed"
    assert detail["messages"][-1]["content"] == "partial "
    assert (await run_turn(ws, "hello"))[-1]["type"] == "stream_end"


async def test_heartbeat_during_a_silent_turn(scripted_server, client):
    """A turn silent for longer than the heartbeat interval sends heartbeats."""
    c = client(scripted_server)
    _, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "silent 1.0"})
    events = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, skip_heartbeats=False)
    assert any(e["type"] == "heartbeat" for e in events)
    assert events[-1]["type"] == "stream_end"


async def test_bad_messages_get_errors_and_the_connection_stays_usable(scripted_server, client):
    """Each bad input is answered with the original's error text and a code; then a turn still works."""
    c = client(scripted_server)
    _, ws = await connected(c)
    await receive(ws)
    expected = "Expected {type: 'message', content: '...'}"
    cases = [
        ("{not json", "Invalid JSON", "invalid_json"),
        (json.dumps({"type": "hello"}), expected, "invalid_message"),
        (json.dumps({"type": "message"}), expected, "invalid_message"),
        (json.dumps({"type": "message", "content": ""}), expected, "invalid_message"),
        (json.dumps({"type": "message", "content": 5}), expected, "invalid_message"),
        (json.dumps([1, 2]), expected, "invalid_message"),
        (json.dumps({"type": "message", "content": "x", "images": ["a"] * 11}),
         "Too many images (11). Max 10 allowed.", "too_many_images"),
        (json.dumps({"type": "message", "content": "x", "images": ["data:image/png;base64," + "A" * (FIVE_MB + 1)]}),
         "Image exceeds 5 MB limit.", "image_too_large"),
        (json.dumps({"type": "message", "content": "x", "files": [{"name": "a"}]}),
         "'files' must be a list of {name, path} objects.", "invalid_message"),
    ]
    for raw, message, code in cases:
        await ws.send_str(raw)
        assert await receive(ws) == {"type": "error", "message": message, "code": code}, raw[:80]
    assert (await run_turn(ws, "still works"))[-1]["content"] == "still works "


async def test_images_and_files_reach_the_agent_with_notes(scripted_server, client):
    """Images (data: prefix stripped, 5 MB admitted) and files are noted in what the agent reads."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    image = "data:image/png;base64," + "A" * FIVE_MB
    events = await run_turn(ws, "look", images=[image, "QUJD"], files=[{"name": "a.txt", "path": "/u/a.txt"}])
    assert events[-1]["type"] == "stream_end"
    user = (await c.session(sid))["messages"][-2]
    assert user["content"] == "look" and user["images"] == 2
    assert "[2 images attached inline" in user["agent_content"]
    assert "[Uploaded files on disk:\n- a.txt → /u/a.txt]" in user["agent_content"]


async def test_second_message_while_running_is_refused(scripted_server, client):
    """A message while the session's turn runs gets 'Agent is already running…', from any tab."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    _, ws2 = await connected(c, sid)
    await receive(ws), await receive(ws2)
    await ws.send_json({"type": "message", "content": "slow 30 0.02"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    await ws2.send_json({"type": "message", "content": "me too"})
    got = await receive_until(ws2, lambda e: e["type"] == "error")
    assert got[-1] == {"type": "error", "message": "Agent is already running for this session.",
                       "code": "already_running"}
    await ws.send_json({"type": "message", "content": "and me"})
    got = await receive_until(ws, lambda e: e["type"] == "error")
    assert got[-1]["code"] == "already_running"
    assert (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))[-1]["type"] == "stream_end"


async def test_unknown_session_is_closed_with_4004(scripted_server, client):
    """A WebSocket to a session that does not exist is closed with 4004 'Session not found'."""
    c = client(scripted_server)
    for sid in ("0" * 32, "a.b", "x" * 65):
        ws = await c.connect(sid)
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4004 and msg.extra == "Session not found"


async def test_bad_after_is_closed_with_4400(scripted_server, client):
    """?after= that is not a non-negative integer is closed with 4400 and a reason a browser can read."""
    c = client(scripted_server)
    sid = await c.new_session()
    for bad in ("abc", "-1"):
        ws = await c.http.ws_connect(f"{scripted_server.ws_url}/ws/sessions/{sid}?after={bad}")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4400
        assert msg.extra == "after must be a non-negative integer seq"


async def test_sessions_http_api(scripted_server, client):
    """Sessions are created, listed, read with their messages, and deleted; unknown ones are 404."""
    c = client(scripted_server)
    url = scripted_server.url
    async with c.http.post(url + "/sessions", json={"title": "mine"}) as r:
        assert r.status == 201
        created = await r.json()
    assert created["title"] == "mine"
    async with c.http.get(url + "/sessions") as r:
        ids = [s["id"] for s in (await r.json())["sessions"]]
    assert created["id"] in ids
    async with c.http.post(url + "/sessions", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "Invalid JSON"
    async with c.http.get(f"{url}/sessions/{'f' * 32}") as r:
        assert r.status == 404 and (await r.json())["code"] == "session_not_found"
    async with c.http.delete(f"{url}/sessions/{created['id']}") as r:
        assert r.status == 200 and (await r.json())["ok"] is True
    async with c.http.get(f"{url}/sessions/{created['id']}") as r:
        assert r.status == 404
    async with c.http.get(url + "/healthz") as r:
        assert r.status == 200 and (await r.json())["ok"] is True


async def test_delete_stops_a_running_turn_first(scripted_server, client):
    """DELETE on a session with a running turn stops it, then deletes; its viewers are closed with 4004."""
    c = client(scripted_server)
    sid, ws = await connected(c)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "slow 500 0.02"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    t0 = time.monotonic()
    async with c.http.delete(f"{scripted_server.url}/sessions/{sid}") as r:
        assert r.status == 200
    assert time.monotonic() - t0 < 2
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    assert rest[-1]["type"] == "stream_stopped"
    msg = await ws.receive(timeout=5)
    while msg.type == aiohttp.WSMsgType.TEXT:
        msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4004
    async with c.http.get(f"{scripted_server.url}/sessions/{sid}") as r:
        assert r.status == 404


async def test_finish_reason_goes_to_stream_end_and_the_history(scripted_server, client):
    """An agent's StreamEnd(finish_reason=...) reaches stream_end and the saved message; a reason outside the
    five is sent as unknown, and an agent that says none gets null."""
    c = client(scripted_server)
    sid, ws = await c.open_session()
    for content, expected in (("finish length cut off", "length"), ("finish weird", "unknown"),
                              ("plain words", None)):
        end = (await run_turn(ws, content))[-1]
        assert end["type"] == "stream_end" and end["finish_reason"] == expected, end
        detail = await c.session(sid)
        assert detail["messages"][-1]["stats"]["finish_reason"] == expected
