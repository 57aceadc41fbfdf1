"""Connections dropped at random, against a real server: every turn is seen whole from the
stream alone, never needing the history, however the drops fall around its end."""

from __future__ import annotations

import asyncio
import json
import os
import random

import aiohttp

from tests.conftest import FINAL_TYPES

TURNS = int(os.environ.get("NAVI_RESUME_TURNS", "60"))
SEED = int(os.environ.get("NAVI_RESUME_SEED", "7"))


async def test_random_drops_never_need_the_history(scripted_server, client):
    """A client that drops its socket after a random number of frames (sometimes right after
    the end) and resumes with ?after= its last seq gets every turn's text and its end, then
    session_sync with last_seq: no turn needs a history reload, no seq comes twice."""
    c = client(scripted_server)
    sid, ws = await c.open_session()
    rng = random.Random(SEED)
    last = 0
    needs_history = []
    log: list[tuple] = []  # for the assertion messages
    for turn in range(TURNS):
        await ws.send_json({"type": "message", "content": "slow 8 0.003"})
        text, final, synced, resumed = "", None, False, False
        while not synced:
            budget = rng.randint(1, 14)
            while budget and not synced:
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.TEXT, (msg, log[-30:])
                ev = json.loads(msg.data)
                log.append((ev["type"], ev.get("seq"), ev.get("last_seq")))
                budget -= 1
                if ev["type"] == "session_sync":
                    synced = True
                    if final is None:
                        needs_history.append(turn)  # ended, and not replayed: only the history has it
                    else:
                        assert ev == {"type": "session_sync", "last_seq": final["seq"]}, log[-30:]
                    continue
                if "seq" in ev:
                    assert ev["seq"] > last or ev["type"] == "stream_start", (ev, last, log[-30:])
                    last = max(last, ev["seq"])
                if ev["type"] == "stream_delta":
                    text += ev["delta"]
                if ev["type"] in FINAL_TYPES and "seq" in ev:
                    final = ev
                    synced = not resumed  # the sender's own viewer gets no session_sync
            if not synced:
                await ws.close()
                await asyncio.sleep(rng.random() * 0.05)  # away for a while: the turn goes on, or ends
                ws = await c.connect(sid, after=last)
                log.append(("resume", last))
                resumed = True
        if final is not None:
            assert text == final["content"], (turn, log[-30:])
    assert needs_history == [], f"{len(needs_history)} of {TURNS} turns needed the history"
