"""A factory-style agent with a tool call and proper stop handling.

Run it from the repository root with ``PYTHONPATH=. scripts/serve --agent examples.tool_agent:agent``.

``agent()`` is called once per actor process (one process per active session),
so put what is costly to make (clients, models, caches) in ``__init__``.
``run_stream(turn)`` is called once per turn. This one counts the words of the
message with a "tool", announced with ``ToolStarted`` and reported with
``ToolEvent``, then streams its answer word by word at
``NAVI_AGENT_TOKENS_PER_SECOND`` (default 50). The tool and every pause race
the stop event, so Stop takes effect at once rather than after the next word.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, AsyncIterator

from navi_actor.agents import tokens_per_second
from navi_actor.events import StreamEnd, TextDelta, ToolEvent, ToolStarted
from navi_actor.turn import Turn


async def stopped_within(turn: Turn, seconds: float) -> bool:
    """Wait up to ``seconds``, returning early (True) if the user asks to stop."""
    if seconds > 0:
        try:
            await asyncio.wait_for(turn.stop_event.wait(), seconds)
        except TimeoutError:
            pass
    return turn.stop_event.is_set()


async def run_tool_or_stop(turn: Turn, func: Any, *args: Any) -> tuple[bool, Any]:
    """Run a blocking tool in a thread, racing the stop event: (finished, result)."""
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    stop = asyncio.ensure_future(turn.stop_event.wait())
    await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not work.done():
        return False, None  # the thread finishes on its own; its result is dropped
    return True, work.result()


def count_words(text: str) -> dict[str, Any]:
    """The tool: how many words the text has, and the most common one."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    words = [w for w in words if w]
    common = collections.Counter(words).most_common(1)
    return {"words": len(words), "most_common": common[0][0] if common else None}


class WordCountAgent:
    def __init__(self) -> None:
        rate = tokens_per_second()  # a bad NAVI_AGENT_TOKENS_PER_SECOND fails here: agent_failed_to_start
        self.delay = 1.0 / rate if rate > 0 else 0.0

    async def run_stream(self, turn: Turn) -> AsyncIterator[Any]:
        args = {"text": turn.display_content}
        yield ToolStarted("count_words", args)
        finished, result = await run_tool_or_stop(turn, count_words, turn.display_content)
        if not finished:
            yield ToolEvent("count_words", args, "stopped", False)
            return
        yield ToolEvent("count_words", args, result, True)

        answer = f"Your message has {result['words']} words"
        if result["most_common"]:
            answer += f", and the most common one is “{result['most_common']}”"
        words = (answer + ".").split(" ")
        for i, word in enumerate(words):
            yield TextDelta(word if i == 0 else " " + word)
            if await stopped_within(turn, self.delay):
                return  # the runtime sends stream_stopped with the text so far
        yield StreamEnd(token_count=len(words))


def agent() -> WordCountAgent:
    return WordCountAgent()
