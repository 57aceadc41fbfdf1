"""The conversation sent to the model: the session's history as messages, cut to the budget.

Pure: the saved history in, Chat Completions messages and a
:class:`ContextCompressed` (when something was left out) out.
"""

from __future__ import annotations

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
