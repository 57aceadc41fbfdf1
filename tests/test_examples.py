"""The example agents in examples/ run under the real server."""

from __future__ import annotations

from tests.conftest import receive_until, run_turn, text_of


async def test_minimal_agent_answers(make_server, client):
    """The ten-line generator agent streams its answer and the turn ends with stream_end."""
    c = client(make_server("examples.minimal_agent:agent"))
    sid, ws = await c.open_session()
    events = await run_turn(ws, "one two three")
    assert events[0]["type"] == "stream_start"
    assert events[-1]["type"] == "stream_end"
    assert text_of(events) == events[-1]["content"] == "three two one "
    detail = await c.session(sid)
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["messages"][-1]["content"] == "three two one "


async def test_tool_agent_calls_its_tool_and_answers(make_server, client):
    """The factory agent announces and reports its tool call, then streams the answer with its token count."""
    c = client(make_server("examples.tool_agent:agent", env={"NAVI_AGENT_TOKENS_PER_SECOND": "0"}))
    sid, ws = await c.open_session()
    events = await run_turn(ws, "the cat and the hat")
    kinds = [e["type"] for e in events]
    assert kinds.index("tool_started") < kinds.index("tool_call") < kinds.index("stream_delta")
    call = next(e for e in events if e["type"] == "tool_call")
    assert call["tool"] == "count_words" and call["success"] is True
    assert call["result"] == {"words": 5, "most_common": "the"}
    end = events[-1]
    assert end["type"] == "stream_end" and end["tool_call_count"] == 1
    assert text_of(events) == end["content"] == "Your message has 5 words, and the most common one is “the”."
    assert end["token_count"] == len(end["content"].split(" "))
    detail = await c.session(sid)
    assert [m["role"] for m in detail["messages"]] == ["user", "tool", "assistant"]


async def test_tool_agent_stops_mid_answer(make_server, client):
    """Stopping the factory agent mid-answer ends the turn at once with stream_stopped and saves the partial text."""
    c = client(make_server("examples.tool_agent:agent", env={"NAVI_AGENT_TOKENS_PER_SECOND": "2"}))
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "a b c"})
    first = await receive_until(ws, lambda e: e["type"] == "stream_delta")
    assert (await c.stop(sid))["ok"] is True
    rest = await receive_until(ws, lambda e: e["type"] in ("stream_end", "stream_stopped", "error"), timeout=5)
    final = rest[-1]
    assert final["type"] == "stream_stopped" and final["stop_step"] == "event"
    partial = text_of(first + rest)
    assert partial == final["content"] and partial.startswith("Your") and not partial.endswith(".")
    detail = await c.wait_session(sid, lambda d: d["running_run_id"] is None)
    assert detail["messages"][-1]["status"] == "stopped"
    assert detail["messages"][-1]["content"] == partial
