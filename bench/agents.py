"""The benchmark's agent, run unchanged by navi-actor (in its actors) and by the baseline.

``agent(turn)`` reads one command from the message:

``one``
    one ``TextDelta`` (a first turn, to start an actor or time the first event).
``flood N``
    N deltas as fast as the generator can go.
``sparse N RATE``
    N deltas at RATE per second on a fixed schedule; each delta's text is the
    ``time.monotonic()`` at which it was yielded (CLOCK_MONOTONIC is one clock
    for every process on Linux, so the client computes the end-to-end delay).
``llm N RATE``
    the same shape as ``sparse``, for many sessions at once (an LLM's pace);
    the schedule starts at a random phase so sessions do not tick in step.
``gc``
    ``gc.collect()``, then one delta: an idle actor measured after a GC.
``hold SECONDS COMMAND…``
    wait, then run the command: a viewer joins the turn before its first delta
    (the relay's benchmark: through the owner, or through another node).

Any other text: one delta echoing it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from typing import Any, AsyncIterator

from navi_actor.events import TextDelta

TOKEN = "tok "


async def _paced(turn: Any, n: int, rate: float, phase: float) -> AsyncIterator[TextDelta]:
    """Yield ``n`` deltas stamped with their monotonic time, every ``1/rate`` s from ``phase``."""
    loop = asyncio.get_running_loop()
    period = 1.0 / rate
    due = loop.time() + phase
    for _ in range(n):
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # at most one period; a stop is seen right after
        if turn.stop_event.is_set():
            return
        yield TextDelta(f"{time.monotonic():.9f} ")
        due += period


async def agent(turn: Any) -> AsyncIterator[TextDelta]:
    words = turn.content.split()
    cmd = words[0] if words else ""
    if cmd == "hold" and len(words) > 2:
        await asyncio.sleep(float(words[1]))
        words = words[2:]
        cmd = words[0]
    if cmd == "flood":
        for _ in range(int(words[1])):
            yield TextDelta(TOKEN)
    elif cmd == "sparse":
        async for ev in _paced(turn, int(words[1]), float(words[2]), 0.0):
            yield ev
    elif cmd == "llm":
        rate = float(words[2])
        async for ev in _paced(turn, int(words[1]), rate, random.random() / rate):
            yield ev
    elif cmd == "gc":
        gc.collect()
        yield TextDelta("collected")
    else:
        yield TextDelta(cmd or "empty")
