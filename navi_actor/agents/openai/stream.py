"""The HTTP stream parser: server-sent events, chunks, tool-call fragments.

:class:`SSEDecoder` splits a ``text/event-stream`` body into event data;
:class:`StreamState` turns each chunk into navi events and keeps what the
response said (text, tool calls, finish reason, usage). Pure: bytes and dicts
in, events out; no I/O.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from navi_actor.agents.openai.errors import ModelServerError, error_text, short
from navi_actor.events import FINISH_REASONS, TextDelta, ThinkingDelta, ThinkingEnd

# ── server-sent events ───────────────────────────────────────────────────────


class SSEDecoder:
    """Split a ``text/event-stream`` body into the data of its events.

    ``data:`` lines of one event are joined with newlines; comments (``:``) and
    other fields (``event:``, ``id:``, ``retry:``) are ignored.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        out = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data).decode("utf-8", errors="replace"))
                    self._data = []
                continue
            if line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return out

    def pending(self) -> bool:
        """True when an unfinished event is buffered."""
        return bool(self._data or self._buf.strip())


# ── tool-call assembly ───────────────────────────────────────────────────────


@dataclasses.dataclass(slots=True)
class ToolCall:
    """One tool call, put together from its streamed fragments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; raise ValueError saying why they are not a JSON object."""
        raw = self.arguments.strip() or "{}"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the arguments are not valid JSON ({exc.msg} at position {exc.pos})") from None
        if not isinstance(value, dict):
            raise ValueError(f"the arguments are JSON {type(value).__name__}, not an object")
        return value


class ToolCallAssembler:
    """Collect ``delta.tool_calls`` fragments: id and name come first, the arguments in pieces.

    Fragments are matched by ``index``; a server that leaves ``index`` out is
    matched by ``id`` (a new id starts a new call, no id continues the last one).
    """

    def __init__(self) -> None:
        self._calls: dict[int, ToolCall] = {}
        self._last: int | None = None

    def feed(self, fragments: Any) -> None:
        if not isinstance(fragments, list):
            raise ValueError(f"delta.tool_calls is {type(fragments).__name__}, not a list")
        for frag in fragments:
            if not isinstance(frag, dict):
                raise ValueError(f"a tool_calls entry is {type(frag).__name__}, not an object")
            index = frag.get("index")
            frag_id = frag.get("id") or ""
            if not isinstance(index, int):
                known = next((c.index for c in self._calls.values() if frag_id and c.id == frag_id), None)
                if known is not None:
                    index = known
                elif frag_id or self._last is None:
                    index = max(self._calls, default=-1) + 1
                else:
                    index = self._last
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = ToolCall(index)
            self._last = index
            if frag_id and not call.id:
                call.id = str(frag_id)
            fn = frag.get("function") or {}
            name = fn.get("name")
            if name and not call.name:
                call.name = str(name)
            args = fn.get("arguments")
            if isinstance(args, str):
                call.arguments += args
            elif isinstance(args, dict):  # a server that sends the object itself
                call.arguments += json.dumps(args)

    def calls(self) -> list[ToolCall]:
        return [self._calls[i] for i in sorted(self._calls)]

    def __bool__(self) -> bool:
        return bool(self._calls)


# ── one streamed response ────────────────────────────────────────────────────


class StreamState:
    """What one streamed response said so far; :meth:`feed` turns a chunk into events."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tools = ToolCallAssembler()
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.thinking = False  # a reasoning block is open
        self.done = False  # "[DONE]" arrived
        self.chunks = 0  # JSON chunks received: none at all means the server answered nothing

    def feed_data(self, data: str) -> list[Any]:
        """Handle one event's data (a JSON chunk or ``[DONE]``)."""
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise ModelServerError(
                f"the model server sent a chunk that is not JSON: {short(data)!r}; is NAVI_OPENAI_BASE_URL "
                "an OpenAI-compatible endpoint?"
            ) from None
        if not isinstance(chunk, dict):
            raise ModelServerError(f"the model server sent a chunk that is not a JSON object: {short(data)!r}")
        return self.feed(chunk)

    def feed(self, chunk: dict[str, Any]) -> list[Any]:
        self.chunks += 1
        if chunk.get("error"):
            raise ModelServerError(f"the model server reported an error mid-answer: {error_text(chunk)}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        events: list[Any] = []
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ModelServerError(
                f"the model server sent a chunk whose choices are not a list: {short(json.dumps(chunk))!r}"
            )
        for choice in choices[:1]:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self.thinking = True
                events.append(ThinkingDelta(reasoning))
            content = delta.get("content")
            tool_calls = delta.get("tool_calls")
            if (isinstance(content, str) and content) or tool_calls:
                events.extend(self.end_thinking())
            if isinstance(content, str) and content:
                self.text.append(content)
                events.append(TextDelta(content))
            if tool_calls:
                try:
                    self.tools.feed(tool_calls)
                except ValueError as exc:
                    raise ModelServerError(f"the model server sent a malformed tool call ({exc}): "
                                           f"{short(json.dumps(tool_calls))!r}") from None
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return events

    def end_thinking(self) -> list[Any]:
        if self.thinking:
            self.thinking = False
            return [ThinkingEnd()]
        return []

    @property
    def finished(self) -> bool:
        """The response is complete: ``[DONE]``, or a finish reason (then EOF is accepted)."""
        return self.done or self.finish_reason is not None

    @property
    def outcome(self) -> str:
        """The finish reason as reported to the client: one of :data:`FINISH_REASONS`."""
        return normalize_finish_reason(self.finish_reason)


_FINISH_ALIASES = {"function_call": "tool_calls", "eos": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def normalize_finish_reason(raw: str | None) -> str:
    """A server's ``finish_reason`` as one of :data:`FINISH_REASONS` (older and other servers' names mapped).

    None or empty is ``unknown``: the stream ended with ``[DONE]`` alone, as
    llama-cpp-python's does when it cuts a running answer off for a new request.
    """
    if not raw:
        return "unknown"
    reason = _FINISH_ALIASES.get(raw, raw)
    return reason if reason in FINISH_REASONS else "unknown"
