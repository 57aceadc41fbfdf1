"""Agents for the functional tests, misbehaving on purpose.

``scripted`` reads a command from the message's first word, so one server
can play every scenario:

- ``pid [N] [DELAY]``: its process id, then N deltas DELAY seconds apart
- ``slow N DELAY``: N deltas DELAY seconds apart, honouring stop
- ``fast N``: N deltas with no pause
- ``silent SECONDS``: nothing for SECONDS (honouring stop), then one delta
- ``fail``: one delta, then raises RuntimeError("boom")
- ``crash``: one delta, then ``os._exit(3)``
- ``badyield``: yields an int
- ``ignore_stop``: deltas every 20 ms forever, never looking at the stop event
- ``block``: blocks its event loop in ``time.sleep`` forever
- ``segv``: one delta, then a segmentation fault
- ``baseexc``: one delta, then raises a BaseException that is not an Exception
- ``hog MB``: one delta, then holds MB megabytes of touched memory until stopped
- ``trap_term``: ignores SIGTERM, then blocks its event loop forever
- ``child``: starts ``sleep 1000`` (its pid is the text), then ignores stop
- ``tool``: a tool call and its result, then text
- anything else: echoes the words
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import time
from typing import Any, AsyncIterator

from navi_actor.events import StreamEnd, TextDelta, ToolEvent, ToolStarted
from navi_actor.turn import Turn


async def _wait(turn: Turn, seconds: float) -> bool:
    """Pause up to ``seconds``; True when the user asked to stop."""
    try:
        await asyncio.wait_for(turn.stop_event.wait(), seconds)
    except TimeoutError:
        pass
    return turn.stop_event.is_set()


async def scripted(turn: Turn) -> AsyncIterator[Any]:
    words = turn.display_content.split()
    cmd, args = words[0], words[1:]
    if cmd == "pid":
        yield TextDelta(f"pid={os.getpid()}")
        n = int(args[0]) if args else 0
        delay = float(args[1]) if len(args) > 1 else 0.0
        for i in range(n):
            if await _wait(turn, delay):
                return
            yield TextDelta(f" {i}")
    elif cmd == "slow":
        n, delay = int(args[0]), float(args[1])
        for i in range(n):
            yield TextDelta(f"w{i} ")
            if await _wait(turn, delay):
                return
    elif cmd == "fast":
        for i in range(int(args[0])):
            yield TextDelta(f"w{i} ")
        yield StreamEnd(token_count=int(args[0]))
    elif cmd == "silent":
        if await _wait(turn, float(args[0])):
            return
        yield TextDelta("done")
    elif cmd == "fail":
        yield TextDelta("partial ")
        raise RuntimeError("boom")
    elif cmd == "crash":
        yield TextDelta("partial ")
        await asyncio.sleep(0)  # let the actor write the delta to its pipe
        await asyncio.sleep(0)
        os._exit(3)
    elif cmd == "badyield":
        yield 42
    elif cmd == "ignore_stop":
        while True:
            yield TextDelta("x")
            await asyncio.sleep(0.02)
    elif cmd == "block":
        yield TextDelta("blocking ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        while True:
            time.sleep(1)
    elif cmd == "segv":
        yield TextDelta("partial ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ctypes.string_at(0)
    elif cmd == "baseexc":
        yield TextDelta("partial ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        raise AgentMeltdown("not an Exception")
    elif cmd == "hog":
        yield TextDelta("eating ")
        await asyncio.sleep(0)  # let the actor write the delta before the loop is busy
        await asyncio.sleep(0)
        hoard = bytearray(int(args[0]) * 1024 * 1024)
        for i in range(0, len(hoard), 4096):
            hoard[i] = 1
        while not await _wait(turn, 0.05):
            pass
        yield TextDelta(f"{len(hoard)}")
    elif cmd == "trap_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        yield TextDelta("trapped ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        while True:
            time.sleep(1)
    elif cmd == "child":
        proc = subprocess.Popen(["sleep", "1000"])
        yield TextDelta(str(proc.pid))
        while True:
            await asyncio.sleep(0.05)
    elif cmd == "tool":
        yield ToolStarted("lookup", {"q": "x"})
        yield ToolEvent("lookup", {"q": "x"}, {"answer": 42}, True, metadata={"call_id": "c1"})
        yield TextDelta("found 42")
    else:
        for w in words:
            yield TextDelta(w + " ")


class ClosingAgent:
    """A factory agent whose ``aclose`` leaves a mark (the file named by NAVI_TEST_MARKER)."""

    async def run_stream(self, turn: Turn) -> AsyncIterator[Any]:
        yield TextDelta("hello")

    async def aclose(self) -> None:
        with open(os.environ["NAVI_TEST_MARKER"], "w") as f:
            f.write(f"closed by {os.getpid()}")


def closing_factory() -> ClosingAgent:
    return ClosingAgent()


class AgentMeltdown(BaseException):
    """Escapes every ``except Exception``."""


class _Broken:
    def __init__(self) -> None:
        raise RuntimeError("factory exploded")


def broken_factory() -> _Broken:
    return _Broken()
