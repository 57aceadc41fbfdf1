"""The openai agent's turn: the tool loop over one model client.

:class:`OpenAIAgent` builds the request's messages from the history, streams
the answer, runs the tools the model called, sends their results back, and
asks again, until the model answers in text or ``NAVI_OPENAI_MAX_STEPS``
requests were made.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from navi_actor import logs
from navi_actor.agents.openai.client import ModelClient, StopRace, Stopped
from navi_actor.agents.openai.context import PROBE_SECONDS, Probe, probe_context
from navi_actor.agents.openai.errors import ModelServerError, short
from navi_actor.agents.openai.history import Budget, build_messages, tools_chars
from navi_actor.agents.openai.settings import Settings
from navi_actor.agents.openai.stream import StreamState, ToolCall
from navi_actor.agents.tools import ToolError, Tools, result_text
from navi_actor.events import StreamEnd, TextDelta, ToolEvent, ToolStarted
from navi_actor.turn import Turn

MAX_TOOL_RESULT_CHARS = 100_000  # a tool result sent back to the model is cut to this

log = logs.get("navi.openai")


class OpenAIAgent:
    """Streams an OpenAI-compatible server, running tools in a loop (see the package doc)."""

    def __init__(self, settings: Settings, tools: Tools) -> None:
        self.settings = settings
        self.tools = tools
        self.client = ModelClient(settings)
        self.tools_chars = tools_chars(tools.specs())  # sent with every request: part of the budget
        self.budget: Budget | None = Budget.configured(settings) if settings.context_chars_set else None
        self._probe: asyncio.Task[Budget | None] | None = None

    def start(self) -> None:
        """Ask the server its context size now (at actor start), if it is not configured."""
        if self.budget is None and self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._find_budget())

    async def _find_budget(self) -> Budget | None:
        """The server's context as a budget, or the configured default; None: ask again next turn."""
        s = self.settings
        try:  # the questions together get PROBE_SECONDS: a slow server is not waited for longer
            found = await asyncio.wait_for(probe_context(self.client.fetch_json, s.base_url, s.model), PROBE_SECONDS)
        except asyncio.TimeoutError:
            found = Probe(None)
        if found.n_ctx is not None:
            budget = Budget.from_context(found.n_ctx, s.max_tokens, found.where)
        elif found.reached:
            budget = Budget(s.context_chars, f"NAVI_OPENAI_CONTEXT_CHARS={s.context_chars} (the default; "
                                             "the model server did not say its context size)")
        else:
            log.info("openai.context_unknown", base_url=s.base_url, reason="the model server could not be reached")
            return None
        log.info("openai.context", n_ctx=budget.n_ctx, context_chars=budget.chars, source=budget.source,
                 tools_chars=self.tools_chars)
        self.budget = budget
        return budget

    async def _budget(self, stop: StopRace) -> Budget:
        if self.budget is not None:
            return self.budget
        if self._probe is None:
            self.start()
        assert self._probe is not None
        try:
            found = await stop.run(asyncio.shield(self._probe))
        finally:
            if self._probe.done():
                self._probe = None  # a probe that found nothing is made again next turn
        return found or Budget.configured(self.settings)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.close()

    aclose = close  # the actor awaits it when it exits in order

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

    async def run_stream(self, turn: Turn) -> AsyncIterator[Any]:
        stop = StopRace(turn.stop_event)
        try:
            async for event in self._turn(turn, stop):
                yield event
        except Stopped:
            return
        finally:
            stop.close()

    async def _turn(self, turn: Turn, stop: StopRace) -> AsyncIterator[Any]:
        s = self.settings
        budget = await self._budget(stop)
        messages, compressed = build_messages(s, turn, budget, self.tools_chars)
        if compressed is not None:
            yield compressed
        completion_tokens: int | None = None
        prompt_tokens: int | None = None
        text_so_far = ""
        for step in range(1, s.max_steps + 1):
            state = StreamState()
            separated = False
            async for event in self.client.stream(self.request_body(messages), state, stop):
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
        yield StreamEnd(token_count=completion_tokens, context_tokens=prompt_tokens,
                        max_context_tokens=budget.n_ctx, finish_reason=state.outcome)

    async def _run_tools(self, turn: Turn, step: int, calls: list[ToolCall], text: str,
                         messages: list[dict[str, Any]], stop: StopRace) -> AsyncIterator[Any]:
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
                shown = {"raw_arguments": short(call.arguments, 1000)}
                yield ToolStarted(call.name, shown)
                result, ok = (f"error: {bad}; the tool was not run. Your arguments were: "
                              f"{short(call.arguments, 1000)}"), False
            elif tool is None:
                yield ToolStarted(call.name, args)
                have = ", ".join(self.tools.names()) or "none"
                result, ok = f"error: there is no tool named {call.name!r}; the tools are: {have}", False
            else:
                yield ToolStarted(call.name, args)
                try:
                    value = await stop.run(tool.run(args, turn))
                except Stopped:
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
            yield ToolEvent(call.name, args if args is not None else {"raw_arguments": short(call.arguments, 1000)},
                            result, ok, metadata=meta)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": text_result})
            if turn.stop_event.is_set():
                raise Stopped
