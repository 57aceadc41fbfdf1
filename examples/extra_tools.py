"""Extra tools for the ``openai`` agent: a registry named by NAVI_OPENAI_TOOLS.

Run from the repository root with
``PYTHONPATH=. NAVI_OPENAI_MODEL=llama3.2 NAVI_OPENAI_TOOLS=examples.extra_tools:tools scripts/serve --agent openai``.
"""

from __future__ import annotations

import asyncio

from navi_actor.agents.tools import ToolError, Tools

tools = Tools()


@tools.tool(parameters={
    "type": "object",
    "properties": {"text": {"type": "string", "description": "the text to count the words of"}},
    "required": ["text"],
})
def word_count(text: str) -> dict:
    """Count the words in a text."""
    return {"words": len(text.split())}


@tools.tool(parameters={
    "type": "object",
    "properties": {"seconds": {"type": "number", "description": "how long to wait, at most 5"}},
    "required": ["seconds"],
})
async def pause(seconds: float, *, turn) -> str:
    """Wait a few seconds (an async tool that honours Stop through the turn)."""
    if not 0 <= seconds <= 5:
        raise ToolError("seconds must be from 0 to 5")
    try:
        await asyncio.wait_for(turn.stop_event.wait(), seconds)
        return "stopped early"
    except TimeoutError:
        return f"waited {seconds:g} s"
