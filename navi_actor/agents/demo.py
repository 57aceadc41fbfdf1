"""``demo``: a deterministic agent that shows every event kind a UI must handle.

One turn: a planning status, thinking streamed word by word, a plan, a call
to a small real tool (the sum of the numbers in the message, or the server's
clock when there are none), then the answer streamed token by token at
NAVI_AGENT_TOKENS_PER_SECOND (default 50, like a fast LLM; 0 = no pause). A
long history is "compressed" (a ``context_compressed`` event) as a real agent
would. Stop is honoured between any two tokens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Any, AsyncIterator

from navi_actor.agents import tokens_per_second
from navi_actor.events import (
    ContextCompressed,
    PlanningStatus,
    PlanReady,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ThinkingEnd,
    ToolEvent,
    ToolStarted,
)
from navi_actor.turn import Turn

HISTORY_BUDGET = 40  # messages kept before the demo "compresses" the context
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def add_numbers(text: str) -> dict[str, Any]:
    """The demo's tool: the exact sum of the numbers written in ``text``."""
    numbers = []
    for match in _NUMBER.findall(text):
        try:
            numbers.append(Decimal(match))
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            continue
    total = sum(numbers, Decimal(0))
    return {"numbers": [str(n) for n in numbers], "sum": str(total)}


def server_time() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def tokens(text: str) -> list[str]:
    """Split text the way an LLM streams it: words with their leading space."""
    return re.findall(r"\s*\S+", text)


async def agent(turn: Turn) -> AsyncIterator[Any]:
    rate = tokens_per_second()
    delay = 1.0 / rate if rate > 0 else 0.0

    async def pause() -> bool:
        """Wait one token's time; True when the user asked to stop."""
        if turn.stop_event.is_set():
            return True
        if delay:
            try:
                await asyncio.wait_for(turn.stop_event.wait(), delay)
            except TimeoutError:
                pass
        return turn.stop_event.is_set()

    if len(turn.history) > HISTORY_BUDGET:
        yield ContextCompressed(len(turn.history), HISTORY_BUDGET, "Earlier turns summarised.")

    yield PlanningStatus("thinking", "Reading your message")
    numbers = add_numbers(turn.display_content)
    use_sum = bool(numbers["numbers"])
    thought = (
        f"The user wrote {len(turn.display_content)} characters. "
        + ("There are numbers in it, so I will add them up." if use_sum else "No numbers, so I will check the clock.")
    )
    for tok in tokens(thought):
        yield ThinkingDelta(tok)
        if await pause():
            return
    yield ThinkingEnd()

    tool = "add_numbers" if use_sum else "server_time"
    args: dict[str, Any] = {"text": turn.display_content} if use_sum else {}
    yield PlanReady([f"call {tool}", "write the answer"])
    yield ToolStarted(tool, args)
    if await pause():
        return
    result: Any = numbers if use_sum else server_time()
    yield ToolEvent(tool, args, result, True)

    if use_sum:
        finding = f"The numbers you wrote ({', '.join(numbers['numbers'])}) add up to {numbers['sum']}."
    else:
        finding = f"There were no numbers to add, so I looked at the clock: it is {result} on this server."
    answer = (
        f"You said: “{turn.display_content[:200]}”. {finding} "
        f"This is turn {sum(1 for m in turn.history if m.get('role') == 'user') + 1} of this session. "
        "I am the demo agent of navi-actor: I run in my own process, my events reach you "
        "over a pipe and a WebSocket, and if you reconnect in the middle of this sentence "
        "you will see every word again, exactly once."
    )
    count = 0
    for tok in tokens(answer):
        yield TextDelta(tok)
        count += 1
        if await pause():
            return
    yield StreamEnd(token_count=count)
