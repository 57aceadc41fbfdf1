"""The events an agent yields, named and shaped as the original endpoint's.

An agent is an async generator of these objects (or of plain JSON-able dicts
with a ``"type"`` key, forwarded as they are). :func:`event_to_wire` turns one
into the dict a client receives; this module is pure and has no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(slots=True)
class TextDelta:
    """A piece of the answer's text (wire type ``stream_delta``)."""

    delta: str


@dataclasses.dataclass(slots=True)
class ThinkingDelta:
    """A piece of the agent's visible reasoning (wire type ``thinking_delta``)."""

    delta: str


@dataclasses.dataclass(slots=True)
class ThinkingEnd:
    """The reasoning block is complete (wire type ``thinking_end``)."""


@dataclasses.dataclass(slots=True)
class ToolStarted:
    """A tool call began (wire type ``tool_started``)."""

    tool_name: str
    arguments: dict[str, Any]
    is_subagent: bool = False


@dataclasses.dataclass(slots=True)
class ToolEvent:
    """A tool call finished with its result (wire type ``tool_call``)."""

    tool_name: str
    arguments: dict[str, Any]
    result: Any
    success: bool
    is_subagent: bool = False
    metadata: dict[str, Any] | None = None


@dataclasses.dataclass(slots=True)
class ContextCompressed:
    """The conversation was summarised to fit the context (``context_compressed``)."""

    messages_before: int
    messages_after: int
    summary: str = ""


@dataclasses.dataclass(slots=True)
class TurnThinking:
    """A whole reasoning block at once (wire type ``turn_thinking``)."""

    thinking: str
    is_subagent: bool = False


@dataclasses.dataclass(slots=True)
class ProfileSwitched:
    """The agent switched to another profile (wire type ``profile_switched``)."""

    profile_id: str
    profile_name: str


@dataclasses.dataclass(slots=True)
class PlanningStatus:
    """Progress of a planning phase (wire type ``planning_status``)."""

    phase: str
    label: str
    is_subagent: bool = False


@dataclasses.dataclass(slots=True)
class PlanReady:
    """A plan is ready (wire type ``plan_ready``)."""

    plan: Any
    is_subagent: bool = False


#: What ``stream_end``'s ``finish_reason`` may say (see :class:`StreamEnd`).
FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "unknown")


@dataclasses.dataclass(slots=True)
class StreamEnd:
    """Optional last event: the agent's own final text and token figures.

    Yielding it does not end the stream by itself; the runtime sends
    ``stream_end`` when the generator finishes, using these fields. Fields left
    ``None`` are filled by the runtime (content = the concatenated deltas).
    """

    full_content: str | None = None
    token_count: int | None = None
    context_tokens: int | None = None
    max_context_tokens: int | None = None
    elapsed_seconds: float | None = None
    tool_call_count: int | None = None
    #: Why the answer ended, as the model server said: ``stop``, ``length`` (cut
    #: off at its length limit), ``content_filter``, ``tool_calls``, or
    #: ``unknown`` (the server did not say; any other value is sent as that).
    #: None: the agent does not say, and ``stream_end`` carries null.
    finish_reason: str | None = None


class AgentError(Exception):
    """Raise it to end the turn with an error the user can act on.

    The client gets ``error`` with ``message`` as it is (no "Internal error:"
    prefix) and ``code`` (lower-case letters, digits and ``_``), e.g.
    ``AgentError("The model server refused the API key; check MY_KEY.", "model_auth")``.
    Any other exception is an internal error (code ``agent_error``).
    """

    def __init__(self, message: str, code: str = "agent_error") -> None:
        super().__init__(message)
        if not (isinstance(code, str) and 0 < len(code) <= 64 and code.replace("_", "a").isalnum()
                and code.lower() == code):
            raise ValueError(f"AgentError code must be lower-case letters, digits and _, got {code!r}")
        self.message = message
        self.code = code


def event_to_wire(event: Any) -> dict[str, Any]:
    """Return the wire dict of an agent event (without ``seq``).

    Raises :class:`TypeError` for an object that is not an event, naming it, so
    the agent's author sees what was yielded.
    """
    cls = type(event)
    if cls is TextDelta:
        return {"type": "stream_delta", "delta": event.delta}
    if cls is ThinkingDelta:
        return {"type": "thinking_delta", "delta": event.delta}
    if cls is ThinkingEnd:
        return {"type": "thinking_end"}
    if cls is ToolStarted:
        return {
            "type": "tool_started",
            "tool": event.tool_name,
            "args": event.arguments,
            "is_subagent": event.is_subagent,
        }
    if cls is ToolEvent:
        return {
            "type": "tool_call",
            "tool": event.tool_name,
            "args": event.arguments,
            "result": event.result,
            "success": event.success,
            "is_subagent": event.is_subagent,
            "metadata": event.metadata,
        }
    if cls is ContextCompressed:
        return {
            "type": "context_compressed",
            "messages_before": event.messages_before,
            "messages_after": event.messages_after,
            "summary": event.summary,
        }
    if cls is TurnThinking:
        return {"type": "turn_thinking", "thinking": event.thinking, "is_subagent": event.is_subagent}
    if cls is ProfileSwitched:
        return {
            "type": "profile_switched",
            "profile_id": event.profile_id,
            "profile_name": event.profile_name,
        }
    if cls is PlanningStatus:
        return {
            "type": "planning_status",
            "phase": event.phase,
            "label": event.label,
            "is_subagent": event.is_subagent,
        }
    if cls is PlanReady:
        return {"type": "plan_ready", "plan": event.plan, "is_subagent": event.is_subagent}
    if isinstance(event, dict):
        kind = event.get("type")
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"agent yielded a dict without a string 'type' key: {event!r:.200}")
        if kind in RESERVED_TYPES:
            raise TypeError(f"agent yielded a dict of reserved type {kind!r}; the runtime sends it")
        return dict(event)
    raise TypeError(
        f"agent yielded {cls.__name__} ({event!r:.200}); yield an event from "
        "navi_actor.events or a dict with a 'type' key"
    )


#: Wire types only the runtime may send: an agent's dict of these is refused.
RESERVED_TYPES = frozenset(
    {
        "stream_start",
        "stream_end",
        "stream_stopped",
        "error",
        "heartbeat",
        "session_sync",
        "replay_start",
        "replay_end",
    }
)

__all__ = [
    "AgentError",
    "ContextCompressed",
    "PlanReady",
    "PlanningStatus",
    "ProfileSwitched",
    "RESERVED_TYPES",
    "FINISH_REASONS",
    "StreamEnd",
    "TextDelta",
    "ThinkingDelta",
    "ThinkingEnd",
    "ToolEvent",
    "ToolStarted",
    "TurnThinking",
    "event_to_wire",
]
