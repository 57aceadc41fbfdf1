"""An event yielded just before the agent blocks its event loop still leaves the actor.

Real servers, real agents (tests/agents.py) that yield and then block their
loop in ``time.sleep`` without ever awaiting: the events must reach every
viewer while the agent is still blocked, and a stop that ends by SIGTERM or
SIGKILL must keep them in ``stream_stopped`` and in the saved history.
"""

from __future__ import annotations

from typing import Any, Iterator

import aiohttp
import pytest

from navi_actor import protocol
from tests.conftest import FINAL_TYPES, Server, receive, receive_until, text_of

GRACE, TERM_AFTER, KILL_AFTER = 0.3, 1.0, 1.0
SEEN_WITHIN = 5.0  # generous: the runtime's promise is milliseconds (scripts/bench measures it)


@pytest.fixture(scope="module")
def blocking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("blocking") / "var", "tests.agents:scripted", {},
        ["--stop-grace", str(GRACE), "--stop-term-after", str(TERM_AFTER), "--stop-kill-after", str(KILL_AFTER)],
    )
    server.start()
    yield server
    server.stop()


async def two_viewers(c: Any) -> tuple[str, aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]:
    sid, ws = await c.open_session()
    other = await c.connect(sid)
    assert await receive(other) == {"type": "session_sync"}
    return sid, ws, other


async def stop_blocked(c: Any, sid: str, command: str, expected: str, step: str,
                       viewers: list[aiohttp.ClientWebSocketResponse], first: str = "stream_delta",
                       ) -> list[dict[str, Any]]:
    """Run ``command``; every viewer sees all of ``expected`` while the agent blocks; stop ends at ``step``."""
    await viewers[0].send_json({"type": "message", "content": command})
    for ws in viewers:
        seen = await receive_until(ws, lambda e: text_of([e]) and e["type"] == "stream_delta", timeout=SEEN_WITHIN)
        assert first in [e["type"] for e in seen]
        while len(text := text_of(seen)) < len(expected):
            seen.append(await receive(ws, SEEN_WITHIN))
        assert text == expected, "every yielded event, in order, before any stop"
        assert all(e["type"] != "stream_stopped" for e in seen)
    assert (await c.stop(sid))["ok"] is True
    for ws in viewers:
        final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=15))[-1]
        assert final["type"] == "stream_stopped" and final["stop_step"] == step
        assert final["content"] == expected
    messages = (await c.session(sid))["messages"]
    assert messages[-1]["status"] == "stopped"
    assert messages[-1]["content"] == expected
    return messages


async def test_a_delta_yielded_right_before_blocking_reaches_viewers_and_history(blocking_server, client):
    """``yield TextDelta(...)`` then ``time.sleep``: seen at once by both viewers, kept after SIGTERM."""
    c = client(blocking_server)
    sid, ws, other = await two_viewers(c)
    await stop_blocked(c, sid, "yield_block", "calling the tool ", "sigterm", [ws, other])


async def test_a_burst_larger_than_the_socket_buffer_leaves_before_blocking(blocking_server, client):
    """A tool start and 1.5 MB of deltas yielded without awaiting, then a blocked loop: all of it arrives.

    More than the kernel's socket buffer and more than the pause threshold: the
    tail is queued when the loop blocks, and only the flusher thread can write it.
    """
    c = client(blocking_server)
    sid, ws, other = await two_viewers(c)
    n, size = 3000, 500
    expected = "".join(f"{i:06d}".ljust(size, ".") for i in range(n))
    messages = await stop_blocked(c, sid, f"burst_block {n} {size}", expected, "sigterm", [ws, other],
                                  first="tool_started")
    tool = messages[-2]
    assert tool["role"] == "tool" and tool["tool"] == "lookup", "the history shows which tool was running"
    assert tool["success"] is False and tool["content"] == protocol.UNFINISHED_TOOL


async def test_a_delta_yielded_before_blocking_survives_a_sigkill(blocking_server, client):
    """The agent ignores SIGTERM too: the ladder ends with SIGKILL, and the delta is still kept."""
    c = client(blocking_server)
    sid, ws, other = await two_viewers(c)
    await stop_blocked(c, sid, "trap_block", "trapped, calling the tool ", "sigkill", [ws, other])
