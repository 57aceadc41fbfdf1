"""``echo``: streams the user's message back word by word.

Written as a factory (``agent()`` returns an object with ``run_stream``) so the
runtime's second agent form is exercised too.
"""

from __future__ import annotations

import asyncio
import re
from typing import AsyncIterator

from navi_actor.agents import tokens_per_second
from navi_actor.events import TextDelta
from navi_actor.turn import Turn


class EchoAgent:
    def __init__(self) -> None:
        rate = tokens_per_second()
        self.delay = 1.0 / rate if rate > 0 else 0.0

    async def run_stream(self, turn: Turn) -> AsyncIterator[TextDelta]:
        for word in re.findall(r"\s*\S+", turn.display_content):
            if turn.stop_event.is_set():
                return
            yield TextDelta(word)
            if self.delay:
                try:
                    await asyncio.wait_for(turn.stop_event.wait(), self.delay)
                except TimeoutError:
                    pass


def agent() -> EchoAgent:
    return EchoAgent()
