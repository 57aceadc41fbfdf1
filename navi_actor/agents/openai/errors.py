"""What the openai agent tells the user when the model server fails.

Pure text: the error type, the human part of an error body, the message for
each HTTP status, and the retry-after header. No I/O.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

from navi_actor.agents.openai.settings import Settings
from navi_actor.events import AgentError

SHOW_CHARS = 200  # how much of a bad chunk or an error body an error message quotes
LOGS_HINT = "; check the model server's logs"


class ModelServerError(AgentError):
    """The model server failed; the message says what happened and what to check.

    An AgentError: the user gets the message as it is, with code ``model_server_error``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, "model_server_error")



def short(text: str, limit: int = SHOW_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"



def error_text(body: Any) -> str:
    """The human part of an error body: ``error.message``, ``error``, ``detail``, or the text."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError:
            return short(body) or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message") or err
        if isinstance(err, str):
            return short(err)
        return short(json.dumps(body if err is None else err))
    return short(json.dumps(body))


def names_tools(body: str) -> bool:
    """True when a server's error message is about tools (then retrying cannot help)."""
    return "tool" in error_text(body).lower()


def tools_hint(what: str) -> str:
    """What to do when the server refused the request because of its tools."""
    jinja = " (llama.cpp's llama-server takes tools only when started with --jinja)" if "jinja" in what.lower() else ""
    return f"; if the model or the server cannot take tools{jinja}, set NAVI_OPENAI_BUILTIN_TOOLS to empty"


def http_error_message(status: int, body: str, settings: Settings, attempts: int = 1) -> str:
    """What to tell the user when the model server answered ``status``.

    Any status whose message names tools gets the tools hint (llama-server
    without ``--jinja`` answers 500, Ollama and vLLM 400).
    """
    what = error_text(body)
    where = f"the model server at {settings.base_url}"
    tried = f" (tried {attempts} times)" if attempts > 1 else ""
    hint = tools_hint(what) if names_tools(body) else ""
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
        return f"{where} failed with HTTP {status} ({what}){tried}{hint or LOGS_HINT}"
    return f"{where} rejected the request with HTTP {status} ({what}){hint}"


def no_answer_message(settings: Settings) -> str:
    """The server ended its stream cleanly without a single chunk: nothing was answered."""
    return (f"the model server at {settings.base_url} sent no answer (its event stream ended empty); "
            "this is what a server does when the prompt does not fit its context (llama-cpp-python does): "
            "lower NAVI_OPENAI_CONTEXT_CHARS, or give the server a larger context (llama.cpp: -c / --n_ctx)")


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
