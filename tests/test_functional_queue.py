"""A second message during a turn (issue 15), with real agents and sockets: reject, enqueue, interrupt,
cancel, the bound, and a resent message that never runs twice."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import pytest

from tests.conftest import FINAL_TYPES, Server, receive, receive_until, text_of

GRACE, TERM_AFTER, KILL_AFTER = 0.3, 1.0, 1.0
MAX_QUEUED = 3


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("queue") / "var", "tests.agents:scripted", {},
        ["--stop-grace", str(GRACE), "--stop-term-after", str(TERM_AFTER), "--stop-kill-after", str(KILL_AFTER),
         "--max-queued", str(MAX_QUEUED)],
    )
    server.start()
    yield server
    server.stop()


def final(e: dict[str, Any]) -> bool:
    return e["type"] in FINAL_TYPES and "seq" in e


async def send(ws, content: str, **extra: Any) -> None:
    await ws.send_json({"type": "message", "content": content, **extra})


async def turns_until(ws, n: int, timeout: float = 15.0) -> list[list[dict[str, Any]]]:
    """The next ``n`` turns' events, stream_start to final event, each a list (queued events left out)."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] | None = None
    deadline = time.monotonic() + timeout
    while len(out) < n:
        ev = await receive(ws, max(deadline - time.monotonic(), 0.01))
        if ev["type"] == "stream_start":
            current = [ev]
        elif current is not None and ev["type"] != "heartbeat":
            current.append(ev)
            if final(ev):
                out.append(current)
                current = None
    return out


async def test_reject_is_unchanged(queue_server, client):
    """Without if_busy (server default reject), a message during a turn gets already_running and is not saved."""
    c = client(queue_server)
    sid, ws = await c.busy_session("slow 100 0.02")
    await send(ws, "second")
    err = await receive_until(ws, lambda e: e["type"] == "error")
    assert err[-1] == {"type": "error", "message": "Agent is already running for this session.",
                       "code": "already_running"}
    await send(ws, "third", if_busy="reject", client_message_id="r-1")
    assert (await receive_until(ws, lambda e: e["type"] == "error"))[-1]["code"] == "already_running"
    assert (await c.stop(sid))["ok"] is True
    await receive_until(ws, final)
    detail = await c.session(sid)
    assert [m["content"] for m in detail["messages"] if m["role"] == "user"] == ["slow 100 0.02"]
    assert detail["queue"] == [] and detail["if_busy"] == "reject"


async def test_enqueue_three_answered_in_order(queue_server, client):
    """Three messages queued during a turn each get queued (1, 2, 3) and then run in order, each agent
    turn's history holding exactly what came before it."""
    c = client(queue_server)
    sid, ws = await c.busy_session("slow 15 0.02")
    watcher = await c.connect(sid)
    for i, text in enumerate(("a1", "a2", "history")):
        await send(ws, text, if_busy="enqueue", client_message_id=f"q{i}")
    queued = [e for e in await receive_until(ws, lambda e: e["type"] == "queued" and e["position"] == 3)
              if e["type"] == "queued"]
    assert [(e["position"], e["content"], e["client_message_id"]) for e in queued] == [
        (1, "a1", "q0"), (2, "a2", "q1"), (3, "history", "q2")]
    assert "seq" not in queued[0] and len({e["message_id"] for e in queued}) == 3
    seen = await receive_until(watcher, lambda e: e["type"] == "queued" and e["position"] == 3)
    assert [e["message_id"] for e in seen if e["type"] == "queued"] == [e["message_id"] for e in queued]
    turns = await turns_until(ws, 3, 20)
    assert [t[0]["run_id"] for t in turns] == [e["message_id"] for e in queued]
    assert [t[-1]["type"] for t in turns] == ["stream_end"] * 3
    assert text_of(turns[0]) == "a1 " and text_of(turns[1]) == "a2 "
    first = "".join(f"w{i} " for i in range(15))
    assert text_of(turns[2]) == (f"user:slow 15 0.02 | assistant:{first} | user:a1 | assistant:a1  "
                                 "| user:a2 | assistant:a2 ")
    detail = await c.wait_session(sid, lambda d: d["running_run_id"] is None)
    users = [m for m in detail["messages"] if m["role"] == "user"]
    assert [m["content"] for m in users] == ["slow 15 0.02", "a1", "a2", "history"]
    assert [m.get("queued", False) for m in users] == [False, True, True, True]
    assert [m.get("client_message_id") for m in users] == [None, "q0", "q1", "q2"]
    assert detail["queue"] == []


async def test_interrupt_a_turn_that_ignores_its_stop_event(queue_server, client):
    """interrupt: the running turn is stopped by the ladder (cancel, reason interrupted_by_new_message),
    its partial text saved, then the new message's turn starts, within a cooperative stop plus a start."""
    c = client(queue_server)
    sid, ws = await c.busy_session("ignore_stop")
    t0 = time.monotonic()
    await send(ws, "now this", if_busy="interrupt")
    events = await receive_until(ws, final)
    elapsed = time.monotonic() - t0
    queued = next(e for e in events if e["type"] == "queued")
    stopped = events[-1]
    assert queued["position"] == 1
    assert stopped["type"] == "stream_stopped" and stopped["reason"] == "interrupted_by_new_message"
    assert stopped["stop_step"] == "cancel" and stopped["content"].startswith("x")
    start = await receive(ws)
    assert start["type"] == "stream_start" and start["run_id"] == queued["message_id"]
    assert time.monotonic() - t0 < GRACE + 1.5, elapsed
    rest = await receive_until(ws, final)
    assert rest[-1]["type"] == "stream_end" and text_of(rest) == "now this "
    detail = await c.wait_session(sid, lambda d: d["running_run_id"] is None)
    answers = [m for m in detail["messages"] if m["role"] == "assistant"]
    assert answers[0]["status"] == "stopped" and answers[0]["error_code"] == "interrupted_by_new_message"
    assert answers[0]["content"] == stopped["content"] and answers[1]["content"] == "now this "


async def test_interrupt_a_turn_that_blocks_its_loop(queue_server, client):
    """interrupt of an agent blocking its event loop: the ladder's SIGTERM ends it, then the message runs."""
    c = client(queue_server)
    sid, ws = await c.busy_session("block")
    await send(ws, "after the block", if_busy="interrupt")
    events = await receive_until(ws, final, timeout=TERM_AFTER + KILL_AFTER + 5)
    assert events[-1]["type"] == "stream_stopped" and events[-1]["reason"] == "interrupted_by_new_message"
    assert events[-1]["stop_step"] in ("sigterm", "sigkill") and events[-1]["content"] == "blocking "
    rest = await receive_until(ws, final)
    assert rest[0]["type"] == "stream_start" and rest[-1]["type"] == "stream_end"
    assert text_of(rest) == "after the block "


async def test_interrupt_when_nothing_runs_just_runs(queue_server, client):
    c = client(queue_server)
    sid, ws = await c.open_session()
    await send(ws, "hello there", if_busy="interrupt")
    events = await receive_until(ws, final)
    assert events[0]["type"] == "stream_start" and events[-1]["type"] == "stream_end"
    assert not [e for e in events if e["type"] == "queued"]


async def test_cancel_a_queued_message(queue_server, client):
    """cancel_queued takes a message out: every viewer gets queue_cancelled; it never runs; a second
    cancel, an unknown id or a started message get not_queued."""
    c = client(queue_server)
    sid, ws = await c.busy_session("slow 30 0.02")
    watcher = await c.connect(sid)
    await send(ws, "drop me", if_busy="enqueue")
    await send(ws, "keep me", if_busy="enqueue")
    queued = [e for e in await receive_until(ws, lambda e: e["type"] == "queued" and e["position"] == 2)
              if e["type"] == "queued"]
    await ws.send_json({"type": "cancel_queued", "message_id": queued[0]["message_id"]})
    cancelled = {"type": "queue_cancelled", "message_id": queued[0]["message_id"]}
    assert (await receive_until(ws, lambda e: e["type"] == "queue_cancelled"))[-1] == cancelled
    assert (await receive_until(watcher, lambda e: e["type"] == "queue_cancelled"))[-1] == cancelled
    detail = await c.session(sid)
    assert [(q["content"], q["position"]) for q in detail["queue"]] == [("keep me", 1)]
    for mid in (queued[0]["message_id"], "nope"):
        await ws.send_json({"type": "cancel_queued", "message_id": mid})
        err = (await receive_until(ws, lambda e: e["type"] == "error"))[-1]
        assert err["code"] == "not_queued"
    turns = await turns_until(ws, 1)
    assert text_of(turns[0]) == "keep me "
    await ws.send_json({"type": "cancel_queued", "message_id": queued[1]["message_id"]})
    assert (await receive_until(ws, lambda e: e["type"] == "error"))[-1]["code"] == "not_queued"
    await ws.send_json({"type": "cancel_queued"})
    assert (await receive_until(ws, lambda e: e["type"] == "error"))[-1]["code"] == "invalid_message"
    detail = await c.session(sid)
    assert [m["content"] for m in detail["messages"] if m["role"] == "user"] == ["slow 30 0.02", "keep me"]


async def test_the_queue_is_bounded(queue_server, client):
    """Past --max-queued, enqueue gets queue_full and nothing is saved; interrupt takes one place more."""
    c = client(queue_server)
    sid, ws = await c.busy_session("trap_term")  # its stop takes the whole ladder: the queue stays full meanwhile
    for i in range(MAX_QUEUED + 1):
        await send(ws, f"m{i}", if_busy="enqueue")
    events = await receive_until(ws, lambda e: e["type"] == "error")
    assert [e["position"] for e in events if e["type"] == "queued"] == list(range(1, MAX_QUEUED + 1))
    assert events[-1]["code"] == "queue_full" and f"at most {MAX_QUEUED}" in events[-1]["message"]
    await send(ws, "first now", if_busy="interrupt")
    got = await receive_until(ws, lambda e: e["type"] == "queued")
    assert got[-1]["position"] == 1
    await send(ws, "one more", if_busy="interrupt")
    assert (await receive_until(ws, lambda e: e["type"] == "error"))[-1]["code"] == "queue_full"
    detail = await c.session(sid)
    assert [q["content"] for q in detail["queue"]] == ["first now", "m0", "m1", "m2"]
    turns = await turns_until(ws, 4, 20)
    assert [text_of(t) for t in turns] == ["first now ", "m0 ", "m1 ", "m2 "]


async def test_two_viewers_enqueueing_at_once(queue_server, client):
    """Two viewers enqueue at the same time: each message gets its own position, no duplicates."""
    c = client(queue_server)
    sid, ws = await c.busy_session("slow 50 0.02")
    other = await c.connect(sid)
    await asyncio.gather(*(send(w, f"{name}{i}", if_busy="enqueue")
                           for i in range(3) for name, w in (("a", ws), ("b", other))))
    events = await receive_until(ws, lambda e: e["type"] in ("queued", "error") and e.get("position") == MAX_QUEUED)
    positions = [e["position"] for e in events if e["type"] == "queued"]
    assert positions == [1, 2, 3]
    errors = [e for e in await receive_until(ws, lambda e: e["type"] == "error") if e["type"] == "error"]
    errors += [e for e in await receive_until(other, lambda e: e["type"] == "error") if e["type"] == "error"]
    assert len(errors) >= 2 and {e["code"] for e in errors} == {"queue_full"}
    detail = await c.session(sid)
    assert [q["position"] for q in detail["queue"]] == [1, 2, 3]
    assert (await c.stop(sid))["ok"]


async def test_session_policy_and_bad_input(queue_server, client):
    """PATCH /sessions/ID sets the session's if_busy (shown by GET); unknown values are refused."""
    c = client(queue_server)
    sid, ws = await c.busy_session("slow 30 0.02")
    await send(ws, "x", if_busy="later")
    err = (await receive_until(ws, lambda e: e["type"] == "error"))[-1]
    assert err == {"type": "error", "code": "invalid_message",
                   "message": "'if_busy' must be one of 'reject', 'enqueue', 'interrupt'."}
    await send(ws, "x", client_message_id="y" * 65)
    assert (await receive_until(ws, lambda e: e["type"] == "error"))[-1]["code"] == "invalid_message"
    url = f"{queue_server.url}/sessions/{sid}"
    for bad in ({"if_busy": "later"}, {"if_busy": 1}, {}, {"if_busy": "enqueue", "x": 1}, []):
        async with c.http.patch(url, json=bad) as r:
            assert r.status == 400 and (await r.json())["code"] == "invalid_message"
    async with c.http.patch(f"{queue_server.url}/sessions/{'0' * 32}", json={"if_busy": "enqueue"}) as r:
        assert r.status == 404
    async with c.http.patch(url, json={"if_busy": "enqueue"}) as r:
        assert r.status == 200 and await r.json() == {"id": sid, "if_busy": "enqueue", "if_busy_session": "enqueue"}
    await send(ws, "queued by the session's policy")
    assert (await receive_until(ws, lambda e: e["type"] == "queued"))[-1]["position"] == 1
    detail = await c.session(sid)
    assert detail["if_busy"] == "enqueue" and detail["if_busy_session"] == "enqueue"
    assert [q["content"] for q in detail["queue"]] == ["queued by the session's policy"]
    async with c.http.patch(url, json={"if_busy": None}) as r:
        assert (await r.json())["if_busy"] == "reject"
    await send(ws, "refused again")
    assert (await receive_until(ws, lambda e: e["type"] == "error"))[-1]["code"] == "already_running"
    turns = await turns_until(ws, 1)
    assert text_of(turns[0]) == "queued by the session's policy "


async def test_queue_lengths_in_ps_and_metrics(queue_server, client):
    """GET /runs (ps --json) shows a session's queued count, and /metrics the total."""
    c = client(queue_server)
    sid, ws = await c.busy_session("slow 200 0.02")
    for i in range(2):
        await send(ws, f"m{i}", if_busy="enqueue")
    await receive_until(ws, lambda e: e["type"] == "queued" and e["position"] == 2)

    async def row() -> dict[str, Any]:
        async with c.http.get(f"{queue_server.url}/runs") as r:
            return next(a for a in (await r.json())["actors"] if a["session_id"] == sid)

    deadline = time.monotonic() + 5
    while (await row())["queued"] != 2:
        assert time.monotonic() < deadline, await row()
        await asyncio.sleep(0.05)
    async with c.http.get(f"{queue_server.url}/metrics") as r:
        text = await r.text()
    assert "navi_queued_messages 2.0" in text and "navi_queued_sessions 1.0" in text
    assert (await c.stop(sid))["ok"]
    await turns_until(ws, 2)
