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
actor process is created lazily inside the running loop. The pure parts (SSE
decoding, chunk handling, tool-call assembly, history and trimming, error
messages) are separate so they can be tested without a server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import importlib
import json
import math
import os
import time
from typing import Any, AsyncIterator, Awaitable, Mapping, TypeVar

import aiohttp

from navi_actor.agents.tools import BUILTIN_TOOLS, ToolError, Tools, as_tools, result_text
from navi_actor.events import (
    AgentError,
    ContextCompressed,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ThinkingEnd,
    ToolEvent,
    ToolStarted,
)
from navi_actor.turn import Turn

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. When a tool gives a more reliable answer than you can "
    "(arithmetic, the current date and time, files the user uploaded), call it."
)
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_STEPS = 8
DEFAULT_CONTEXT_CHARS = 24_000
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF = 0.5
MAX_RETRY_WAIT = 60.0  # a retry-after longer than this is not waited for: the turn fails at once
MAX_BACKOFF = 10.0
MAX_TOOL_RESULT_CHARS = 100_000  # a tool result sent back to the model is cut to this
HISTORY_RESULT_CHARS = 500  # a past tool result, summarised in the history, is cut to this
SHOW_CHARS = 200  # how much of a bad chunk or an error body an error message quotes


class ConfigError(ValueError):
    """A ``NAVI_OPENAI_*`` variable has a bad value (raised by the factory)."""


class ModelServerError(AgentError):
    """The model server failed; the message says what happened and what to check.

    An AgentError: the user gets the message as it is, with code ``model_server_error``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, "model_server_error")


class _Stopped(Exception):
    """The user asked to stop: unwind and return."""


def _short(text: str, limit: int = SHOW_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


# ── settings ─────────────────────────────────────────────────────────────────


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The agent's configuration, from the ``NAVI_OPENAI_*`` environment variables."""

    base_url: str = DEFAULT_BASE_URL
    model: str = ""
    api_key: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_steps: int = DEFAULT_MAX_STEPS
    context_chars: int = DEFAULT_CONTEXT_CHARS
    retries: int = DEFAULT_RETRIES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    builtin_tools: tuple[str, ...] = tuple(BUILTIN_TOOLS)
    extra_tools: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable; raise :class:`ConfigError` naming a bad one."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get("NAVI_OPENAI_" + name)
            return value.strip() if value is not None and value.strip() else None

        def number(name: str, kind: type, low: float, high: float | None, what: str) -> Any:
            raw = get(name)
            if raw is None:
                return None
            try:
                value = kind(raw)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or value < low or (high is not None and value > high):
                raise ConfigError(f"NAVI_OPENAI_{name}={raw!r} is not {what}")
            return value

        base_url = (get("BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"NAVI_OPENAI_BASE_URL={base_url!r} is not an http:// or https:// URL "
                f"(for Ollama it is {DEFAULT_BASE_URL})"
            )
        model = get("MODEL")
        if model is None:
            raise ConfigError(
                "NAVI_OPENAI_MODEL is not set: name the model to use, e.g. llama3.2 for Ollama "
                "or gpt-4o-mini for OpenAI"
            )
        system_prompt = env.get("NAVI_OPENAI_SYSTEM_PROMPT")
        builtin_raw = env.get("NAVI_OPENAI_BUILTIN_TOOLS")
        if builtin_raw is None:
            builtin = tuple(BUILTIN_TOOLS)
        else:
            builtin = tuple(n.strip() for n in builtin_raw.split(",") if n.strip())
            unknown = [n for n in builtin if n not in BUILTIN_TOOLS]
            if unknown:
                raise ConfigError(
                    f"NAVI_OPENAI_BUILTIN_TOOLS names unknown tools {', '.join(unknown)}; "
                    f"the built-in tools are {', '.join(BUILTIN_TOOLS)} (empty: none)"
                )
        extra = tuple(s.strip() for s in (get("TOOLS") or "").split(",") if s.strip())
        for spec in extra:
            module, sep, attr = spec.partition(":")
            if not sep or not module or not attr:
                raise ConfigError(f"NAVI_OPENAI_TOOLS={spec!r} is not MODULE:ATTR")
        timeout = number("TIMEOUT", float, 0.001, None, "a number of seconds above 0")
        backoff = number("RETRY_BACKOFF", float, 0, MAX_BACKOFF, f"a number of seconds from 0 to {MAX_BACKOFF:g}")
        return cls(
            base_url=base_url,
            model=model,
            api_key=get("API_KEY"),
            system_prompt=DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt.strip(),
            temperature=number("TEMPERATURE", float, 0, 2, "a number from 0 to 2"),
            max_tokens=number("MAX_TOKENS", int, 1, None, "a whole number above 0"),
            timeout=_or(timeout, DEFAULT_TIMEOUT),
            max_steps=_or(number("MAX_STEPS", int, 1, 100, "a whole number from 1 to 100"), DEFAULT_MAX_STEPS),
            context_chars=_or(number("CONTEXT_CHARS", int, 100, None, "a whole number of characters, at least 100"),
                              DEFAULT_CONTEXT_CHARS),
            retries=_or(number("RETRIES", int, 0, 10, "a whole number from 0 to 10"), DEFAULT_RETRIES),
            retry_backoff=_or(backoff, DEFAULT_RETRY_BACKOFF),
            builtin_tools=builtin,
            extra_tools=extra,
        )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def load_tools(settings: Settings) -> Tools:
    """The built-ins chosen by NAVI_OPENAI_BUILTIN_TOOLS plus the registries named by NAVI_OPENAI_TOOLS."""
    tools = Tools(BUILTIN_TOOLS[name] for name in settings.builtin_tools)
    for spec in settings.extra_tools:
        module_name, _, attr = spec.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(f"NAVI_OPENAI_TOOLS: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ConfigError(f"NAVI_OPENAI_TOOLS: module {module_name!r} has no attribute {attr!r}") from None
        try:
            tools.extend(as_tools(obj, f"NAVI_OPENAI_TOOLS {spec}"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"NAVI_OPENAI_TOOLS: {exc}") from None
    return tools


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

    def feed_data(self, data: str) -> list[Any]:
        """Handle one event's data (a JSON chunk or ``[DONE]``)."""
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise ModelServerError(
                f"the model server sent a chunk that is not JSON: {_short(data)!r}; is NAVI_OPENAI_BASE_URL "
                "an OpenAI-compatible endpoint?"
            ) from None
        if not isinstance(chunk, dict):
            raise ModelServerError(f"the model server sent a chunk that is not a JSON object: {_short(data)!r}")
        return self.feed(chunk)

    def feed(self, chunk: dict[str, Any]) -> list[Any]:
        if chunk.get("error"):
            raise ModelServerError(f"the model server reported an error mid-answer: {error_text(chunk)}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        events: list[Any] = []
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ModelServerError(
                f"the model server sent a chunk whose choices are not a list: {_short(json.dumps(chunk))!r}"
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
                                           f"{_short(json.dumps(tool_calls))!r}") from None
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


# ── conversation ─────────────────────────────────────────────────────────────


def _tool_note(msg: dict[str, Any]) -> str:
    name = msg.get("tool") or "?"
    args = msg.get("args")
    args_text = json.dumps(args, ensure_ascii=False, default=str) if args is not None else "{}"
    result = msg.get("content")
    result = result if isinstance(result, str) else result_text(result)
    outcome = "it returned" if msg.get("success", True) else "it failed"
    return f"(tool {name} was called with {_short(args_text, HISTORY_RESULT_CHARS)}; {outcome}: " \
           f"{_short(result, HISTORY_RESULT_CHARS)})"


def history_messages(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The session's history as Chat Completions messages.

    User messages and assistant answers (partial ones too) go as they are. The
    tool messages of a turn are summarised, one line each, at the start of
    that turn's answer (the OpenAI tool-call structure is not rebuilt: old
    call ids do not exist, and a summary survives trimming). Empty answers,
    as of a turn that failed before any text, are left out.
    """
    out: list[dict[str, str]] = []
    notes: list[str] = []
    for msg in history:
        role = msg.get("role")
        content = msg.get("content")
        text = content if isinstance(content, str) else ("" if content is None else result_text(content))
        if role == "user":
            notes = []  # tool messages with no answer after them belong to no turn we can show
            out.append({"role": "user", "content": text})
        elif role == "tool":
            notes.append(_tool_note(msg))
        elif role == "assistant":
            if notes:
                text = "\n".join(notes) + ("\n\n" + text if text else "")
                notes = []
            if text.strip():
                out.append({"role": "assistant", "content": text})
    return out


def trim_history(messages: list[dict[str, str]], budget: int, fixed: int = 0) -> list[dict[str, str]]:
    """The newest messages whose text, with ``fixed`` characters more, fits in ``budget``.

    Messages are dropped from the oldest; the kept part starts with a user message.
    """
    room = budget - fixed
    kept: list[dict[str, str]] = []
    for msg in reversed(messages):
        size = len(msg.get("content") or "")
        if size > room:
            break
        room -= size
        kept.append(msg)
    kept.reverse()
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def build_messages(settings: Settings, turn: Turn) -> tuple[list[dict[str, Any]], ContextCompressed | None]:
    """The request's messages for this turn, and the event to yield if history was trimmed."""
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    past = history_messages(turn.history)
    fixed = len(settings.system_prompt) + len(turn.content)
    kept = trim_history(past, settings.context_chars, fixed)
    compressed = None
    if len(kept) < len(past):
        dropped = len(past) - len(kept)
        chars = sum(len(m["content"]) for m in past[:dropped])
        compressed = ContextCompressed(
            len(past),
            len(kept),
            f"The {dropped} oldest messages ({chars} characters) were left out to fit "
            f"NAVI_OPENAI_CONTEXT_CHARS={settings.context_chars}.",
        )
    return [*system, *kept, {"role": "user", "content": turn.content}], compressed


# ── errors ───────────────────────────────────────────────────────────────────


def error_text(body: Any) -> str:
    """The human part of an error body: ``error.message``, ``error``, ``detail``, or the text."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError:
            return _short(body) or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message") or err
        if isinstance(err, str):
            return _short(err)
        return _short(json.dumps(body if err is None else err))
    return _short(json.dumps(body))


def http_error_message(status: int, body: str, settings: Settings, attempts: int = 1) -> str:
    """What to tell the user when the model server answered ``status``."""
    what = error_text(body)
    where = f"the model server at {settings.base_url}"
    tried = f" (tried {attempts} times)" if attempts > 1 else ""
    if status in (401, 403):
        key = "NAVI_OPENAI_API_KEY is set" if settings.api_key else "NAVI_OPENAI_API_KEY is not set"
        return f"{where} refused the request with HTTP {status} ({what}); check NAVI_OPENAI_API_KEY ({key})"
    if status == 404:
        return (f"{where} answered HTTP 404 for {settings.url} ({what}); check NAVI_OPENAI_MODEL="
                f"{settings.model!r} (is the model installed or pulled?) and NAVI_OPENAI_BASE_URL "
                "(it usually ends in /v1)")
    if status == 429:
        return (f"{where} is rate-limiting requests (HTTP 429: {what}){tried}; wait a moment and try again, "
                "or check your plan's quota")
    if status >= 500:
        return f"{where} failed with HTTP {status} ({what}){tried}; check the model server's logs"
    hint = ""
    if status == 400 and "tool" in what.lower():
        hint = "; if the model cannot call tools, set NAVI_OPENAI_BUILTIN_TOOLS to empty"
    return f"{where} rejected the request with HTTP {status} ({what}){hint}"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``retry-after`` header (a number, or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


# ── the agent ────────────────────────────────────────────────────────────────


def _silence(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class _StopRace:
    """Await things while watching the turn's stop event; a stop raises :class:`_Stopped` at once."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        self.waiter: asyncio.Task[Any] | None = None

    async def run(self, aw: Awaitable[T]) -> T:
        fut = asyncio.ensure_future(aw)
        if self.event.is_set():
            fut.cancel()
            fut.add_done_callback(_silence)
            raise _Stopped
        if self.waiter is None:
            self.waiter = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait((fut, self.waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fut.done():
                fut.cancel()
                fut.add_done_callback(_silence)
        if fut.done() and not fut.cancelled():
            return fut.result()
        raise _Stopped

    def close(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()


class OpenAIAgent:
    """Streams an OpenAI-compatible server, running tools in a loop (see the module doc)."""

    def __init__(self, settings: Settings, tools: Tools) -> None:
        self.settings = settings
        self.tools = tools
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The process's HTTP session, made on first use inside the running loop."""
        if self._session is None or self._session.closed:
            t = self.settings.timeout
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if len(self.tools):
            body["tools"] = self.tools.specs()
        return body

    def headers(self) -> dict[str, str]:
        h = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self.settings.api_key:
            h["Authorization"] = f"Bearer {self.settings.api_key}"
        return h

    async def run_stream(self, turn: Turn) -> AsyncIterator[Any]:
        stop = _StopRace(turn.stop_event)
        try:
            async for event in self._turn(turn, stop):
                yield event
        except _Stopped:
            return
        finally:
            stop.close()

    async def _turn(self, turn: Turn, stop: _StopRace) -> AsyncIterator[Any]:
        s = self.settings
        messages, compressed = build_messages(s, turn)
        if compressed is not None:
            yield compressed
        completion_tokens: int | None = None
        prompt_tokens: int | None = None
        text_so_far = ""
        for step in range(1, s.max_steps + 1):
            state = StreamState()
            separated = False
            async for event in self._stream(messages, state, stop):
                if type(event) is TextDelta and text_so_far and not separated:
                    separated = True
                    if not text_so_far[-1].isspace():
                        yield TextDelta("\n\n")  # keep the text of two requests apart
                yield event
            text_so_far += "".join(state.text)
            usage = state.usage or {}
            if isinstance(usage.get("completion_tokens"), int):
                completion_tokens = (completion_tokens or 0) + usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                prompt_tokens = usage["prompt_tokens"]
            calls = state.tools.calls()
            if not calls:
                break
            if step == s.max_steps:
                raise ModelServerError(
                    f"the model still wanted to call tools after {s.max_steps} requests "
                    f"(NAVI_OPENAI_MAX_STEPS={s.max_steps}), so the turn was ended; ask for something "
                    "simpler or raise NAVI_OPENAI_MAX_STEPS"
                )
            async for event in self._run_tools(turn, step, calls, "".join(state.text), messages, stop):
                yield event
        if completion_tokens is not None or prompt_tokens is not None:
            yield StreamEnd(token_count=completion_tokens, context_tokens=prompt_tokens, max_context_tokens=None)

    async def _run_tools(self, turn: Turn, step: int, calls: list[ToolCall], text: str,
                         messages: list[dict[str, Any]], stop: _StopRace) -> AsyncIterator[Any]:
        parsed: list[tuple[ToolCall, dict[str, Any] | None, str]] = []
        for call in calls:
            if not call.id:
                call.id = f"call_{step}_{call.index}"
            try:
                parsed.append((call, call.parsed_arguments(), ""))
            except ValueError as exc:
                parsed.append((call, None, str(exc)))
        messages.append({
            "role": "assistant",
            "content": text or None,
            "tool_calls": [
                {"id": c.id, "type": "function",
                 # bad arguments are not echoed back: some servers parse them and would fail the request
                 "function": {"name": c.name, "arguments": c.arguments if args is not None else "{}"}}
                for c, args, _ in parsed
            ],
        })
        for call, args, bad in parsed:
            meta = {"tool_call_id": call.id}
            tool = self.tools.get(call.name)
            if args is None:
                shown = {"raw_arguments": _short(call.arguments, 1000)}
                yield ToolStarted(call.name, shown)
                result, ok = (f"error: {bad}; the tool was not run. Your arguments were: "
                              f"{_short(call.arguments, 1000)}"), False
            elif tool is None:
                yield ToolStarted(call.name, args)
                have = ", ".join(self.tools.names()) or "none"
                result, ok = f"error: there is no tool named {call.name!r}; the tools are: {have}", False
            else:
                yield ToolStarted(call.name, args)
                try:
                    value = await stop.run(tool.run(args, turn))
                except _Stopped:
                    yield ToolEvent(call.name, args, "stopped by the user", False, metadata=meta)
                    raise
                except ToolError as exc:
                    result, ok = f"error: {exc}", False
                except Exception as exc:
                    result, ok = f"error: {type(exc).__name__}: {exc}", False
                else:
                    result, ok = value, True
            text_result = result_text(result)
            if len(text_result) > MAX_TOOL_RESULT_CHARS:
                text_result = text_result[:MAX_TOOL_RESULT_CHARS] + "\n[truncated]"
            yield ToolEvent(call.name, args if args is not None else {"raw_arguments": _short(call.arguments, 1000)},
                            result, ok, metadata=meta)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": text_result})
            if turn.stop_event.is_set():
                raise _Stopped

    async def _stream(self, messages: list[dict[str, Any]], state: StreamState,
                      stop: _StopRace) -> AsyncIterator[Any]:
        """One request: yield its events; the response is closed at once on stop or error."""
        resp = await self._open(self.request_body(messages), stop)
        clean = False
        try:
            decoder = SSEDecoder()
            while not state.done:
                try:
                    data = await stop.run(resp.content.readany())
                except aiohttp.ClientPayloadError as exc:
                    raise self._cut(state, f"the connection closed before the answer was finished "
                                           f"({type(exc).__name__})") from None
                except asyncio.TimeoutError:
                    raise self._cut(state, f"no data for NAVI_OPENAI_TIMEOUT={self.settings.timeout:g} s") from None
                except aiohttp.ClientError as exc:
                    raise self._cut(state, f"{type(exc).__name__}: {exc}") from None
                if not data:
                    for payload in decoder.feed(b"\n\n") if decoder.pending() else ():
                        for event in state.feed_data(payload):  # a last event without its blank line
                            yield event
                    if not state.finished:
                        raise self._cut(state, "the connection ended before the answer was finished")
                    break
                for payload in decoder.feed(data):
                    for event in state.feed_data(payload):
                        yield event
                    if state.done:
                        break
            for event in state.end_thinking():
                yield event
            clean = True
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # the model server sees the connection go and stops generating

    def _cut(self, state: StreamState, detail: str) -> ModelServerError:
        kept = " (the text so far was kept)" if state.text else ""
        return ModelServerError(
            f"the model server's stream broke off mid-answer: {detail}{kept}; check that the model server "
            f"at {self.settings.base_url} is still running, and its logs"
        )

    async def _open(self, body: dict[str, Any], stop: _StopRace) -> aiohttp.ClientResponse:
        """POST the request, retrying 429 and 5xx answers (nothing has streamed yet)."""
        s = self.settings
        session = self.session()
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await stop.run(session.post(s.url, json=body, headers=self.headers()))
            except aiohttp.ClientConnectorError as exc:
                os_error = getattr(exc, "os_error", None)
                reason = getattr(os_error, "strerror", None) or exc
                if isinstance(os_error, PermissionError):  # Landlock refused the port
                    raise ModelServerError(
                        f"cannot connect to the model server at {s.base_url}: the sandbox does not allow "
                        f"connecting to port {exc.port}; add it to the server's --sandbox-net-connect"
                    ) from None
                raise ModelServerError(
                    f"cannot connect to the model server at {s.base_url} ({reason}); "
                    "is it running? Set NAVI_OPENAI_BASE_URL to its address"
                ) from None
            except asyncio.TimeoutError:
                raise ModelServerError(
                    f"the model server at {s.base_url} did not answer within NAVI_OPENAI_TIMEOUT="
                    f"{s.timeout:g} s; is it overloaded, or still loading the model?"
                ) from None
            except aiohttp.ClientError as exc:
                raise ModelServerError(
                    f"the request to the model server at {s.base_url} failed: {type(exc).__name__}: {exc}"
                ) from None
            if resp.status == 200:
                ctype = resp.headers.get("Content-Type", "")
                if "json" in ctype:
                    text = await self._body(resp, stop)
                    raise ModelServerError(
                        f"the model server at {s.base_url} answered with JSON instead of an event stream "
                        f"({error_text(text)}); does it support stream: true?"
                    )
                return resp
            text = await self._body(resp, stop)
            retryable = resp.status == 429 or resp.status >= 500
            if not retryable or attempt > s.retries:
                raise ModelServerError(http_error_message(resp.status, text, s, attempt))
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            if wait is None:
                wait = min(s.retry_backoff * 2 ** (attempt - 1), MAX_BACKOFF)
            elif wait > MAX_RETRY_WAIT:
                raise ModelServerError(
                    http_error_message(resp.status, text, s, attempt)
                    + f"; it asked to retry after {wait:.0f} s, longer than the {MAX_RETRY_WAIT:.0f} s this agent waits"
                )
            await stop.run(asyncio.sleep(wait))

    async def _body(self, resp: aiohttp.ClientResponse, stop: _StopRace) -> str:
        """Up to 4 KiB of an error body; the response is closed."""
        try:
            data = await stop.run(resp.content.read(4096))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            data = b""
        finally:
            resp.close()
        return data.decode("utf-8", errors="replace")


def agent() -> OpenAIAgent:
    """The factory (``--agent openai``): read the settings and tools, or fail naming the bad variable."""
    settings = Settings.from_env()
    return OpenAIAgent(settings, load_tools(settings))


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
