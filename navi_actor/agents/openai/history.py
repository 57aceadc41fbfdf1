"""The conversation sent to the model: the session's history as messages, cut to the budget.

Pure: the saved history in, Chat Completions messages and a
:class:`ContextCompressed` (when something was left out) out.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from navi_actor.agents.openai.errors import short
from navi_actor.agents.openai.settings import Settings
from navi_actor.agents.tools import result_text
from navi_actor.events import ContextCompressed
from navi_actor.turn import Turn

HISTORY_RESULT_CHARS = 500  # a past tool result, summarised in the history, is cut to this


# ── conversation ─────────────────────────────────────────────────────────────


def _tool_note(msg: dict[str, Any]) -> str:
    name = msg.get("tool") or "?"
    args = msg.get("args")
    args_text = json.dumps(args, ensure_ascii=False, default=str) if args is not None else "{}"
    result = msg.get("content")
    result = result if isinstance(result, str) else result_text(result)
    outcome = "it returned" if msg.get("success", True) else "it failed"
    return f"(tool {name} was called with {short(args_text, HISTORY_RESULT_CHARS)}; {outcome}: " \
           f"{short(result, HISTORY_RESULT_CHARS)})"


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


CHARS_PER_TOKEN = 3  # a cautious figure: English runs near 4 characters a token, code and JSON nearer 3


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """How many characters a request's prompt may take, and where that figure comes from."""

    chars: int
    source: str  # said in context_compressed's summary and in the log
    n_ctx: int | None = None  # the server's context in tokens, when it said

    @classmethod
    def configured(cls, settings: Settings) -> Budget:
        return cls(settings.context_chars, f"NAVI_OPENAI_CONTEXT_CHARS={settings.context_chars}")

    @classmethod
    def from_context(cls, n_ctx: int, max_tokens: int | None, where: str) -> Budget:
        """The budget for a server context of ``n_ctx`` tokens, keeping room for the answer.

        The answer gets ``max_tokens`` (NAVI_OPENAI_MAX_TOKENS) or a quarter of
        the context, at most half; the rest is the prompt's, at
        :data:`CHARS_PER_TOKEN` characters a token.
        """
        answer = min(max_tokens or n_ctx // 4, n_ctx // 2)
        chars = max(MIN_BUDGET_CHARS, (n_ctx - answer) * CHARS_PER_TOKEN)
        return cls(chars, f"the model server's context of {n_ctx} tokens ({where}), about {chars} characters",
                   n_ctx)


MIN_BUDGET_CHARS = 100


def tools_chars(specs: list[dict[str, Any]]) -> int:
    """What the tools' JSON schemas take of the prompt: they are sent with every request."""
    return len(json.dumps(specs, ensure_ascii=False)) if specs else 0


def build_messages(settings: Settings, turn: Turn, budget: Budget | None = None,
                   fixed_extra: int = 0) -> tuple[list[dict[str, Any]], ContextCompressed | None]:
    """The request's messages for this turn, and the event to yield if history was trimmed.

    The system prompt, the new message and ``fixed_extra`` (the tools'
    schemas, :func:`tools_chars`) come out of the budget first; the history
    gets the rest, newest first.
    """
    budget = budget or Budget.configured(settings)
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    past = history_messages(turn.history)
    fixed = len(settings.system_prompt) + len(turn.content) + fixed_extra
    kept = trim_history(past, budget.chars, fixed)
    compressed = None
    if len(kept) < len(past):
        dropped = len(past) - len(kept)
        chars = sum(len(m["content"]) for m in past[:dropped])
        tools = f" (the tools' schemas take {fixed_extra} characters of it)" if fixed_extra else ""
        compressed = ContextCompressed(
            len(past),
            len(kept),
            f"The {dropped} oldest messages ({chars} characters) were left out to fit "
            f"{budget.source}{tools}.",
        )
    return [*system, *kept, {"role": "user", "content": turn.content}], compressed
