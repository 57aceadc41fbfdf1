"""``openai``: a real LLM agent for any OpenAI-compatible Chat Completions server.

Run it with ``--agent openai`` (or ``navi_actor.agents.openai:agent``). It
streams ``POST {NAVI_OPENAI_BASE_URL}/chat/completions`` with ``stream: true``
over aiohttp and turns the server-sent events into navi events:

- ``delta.content`` → :class:`TextDelta`; ``delta.reasoning_content`` or
  ``delta.reasoning`` → :class:`ThinkingDelta`, closed by :class:`ThinkingEnd`
  when the answer or a tool call begins;
- ``delta.tool_calls`` fragments are assembled by ``index``; each finished call
  is announced (:class:`ToolStarted`), run, reported (:class:`ToolEvent`) and
  its result sent back to the model as a ``role: "tool"`` message, until the
  model answers in text or ``NAVI_OPENAI_MAX_STEPS`` requests were made;
- the usage of the last chunk → :class:`StreamEnd` (completion tokens summed
  over the turn's requests, prompt tokens of the last one).

Configuration is read from ``NAVI_OPENAI_*`` environment variables once, by the
factory :func:`agent` (called once per actor process), and a bad value fails
there with a message naming the variable. One ``aiohttp.ClientSession`` per
actor process is created lazily inside the running loop.

The package's modules, each holding one part:

- :mod:`.settings`: the ``NAVI_OPENAI_*`` variables and the tool registry;
- :mod:`.stream`: the HTTP stream parser (SSE, chunks, tool-call fragments), pure;
- :mod:`.history`: the history as messages, cut to the context budget, pure;
- :mod:`.errors`: what to tell the user when the server fails, pure;
- :mod:`.context`: asking the server its context size (the parsers pure);
- :mod:`.client`: the HTTP requests, retries and the stop race;
- :mod:`.loop`: the turn and its tool loop (:class:`OpenAIAgent`).
"""

from __future__ import annotations

from navi_actor.agents.openai.loop import OpenAIAgent
from navi_actor.agents.openai.errors import ModelServerError, error_text, http_error_message, retry_after_seconds
from navi_actor.agents.openai.history import build_messages, history_messages, trim_history
from navi_actor.agents.openai.settings import ConfigError, Settings, load_tools
from navi_actor.agents.openai.stream import SSEDecoder, StreamState, ToolCall, ToolCallAssembler


def agent() -> OpenAIAgent:
    """The factory (``--agent openai``): read the settings and tools, or fail naming the bad variable."""
    settings = Settings.from_env()
    instance = OpenAIAgent(settings, load_tools(settings))
    try:
        instance.start()  # ask the server its context size while the actor waits for a turn
    except RuntimeError:  # no running loop: the first turn asks
        pass
    return instance


__all__ = [
    "ConfigError",
    "ModelServerError",
    "OpenAIAgent",
    "SSEDecoder",
    "Settings",
    "StreamState",
    "ToolCall",
    "ToolCallAssembler",
    "agent",
    "build_messages",
    "error_text",
    "history_messages",
    "http_error_message",
    "load_tools",
    "retry_after_seconds",
    "trim_history",
]
