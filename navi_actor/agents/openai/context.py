"""Ask the model server how large its context is, once per actor, to size the history.

Servers that say it:

- llama.cpp's ``llama-server``: ``GET /props`` → ``default_generation_settings.n_ctx``
  (the context of one slot);
- vLLM: ``GET /v1/models`` → the model's ``max_model_len``;
- Ollama: ``POST /api/show`` → ``num_ctx`` in the model's parameters when it
  is set there, else the model's ``*.context_length``, at most
  :data:`OLLAMA_NUM_CTX` (the window Ollama runs a model with unless told).

OpenAI and llama-cpp-python's server say none of these: the configured
``NAVI_OPENAI_CONTEXT_CHARS`` (or its default) stays. The parsers are pure;
:func:`probe_context` does the requests (the agent gives them
:data:`PROBE_SECONDS` in all) and never raises.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Awaitable, Callable

OLLAMA_NUM_CTX = 4096  # Ollama's default window (OLLAMA_CONTEXT_LENGTH), used when the model sets no num_ctx
PROBE_SECONDS = 3.0  # all the questions together; a server that is slow to say is not waited for


def server_root(base_url: str) -> str:
    """``http://host:8080/v1`` → ``http://host:8080``: where /props and /api/show live."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def llama_props_n_ctx(body: Any) -> int | None:
    """``n_ctx`` from llama-server's ``/props``."""
    if not isinstance(body, dict):
        return None
    settings = body.get("default_generation_settings")
    if isinstance(settings, dict) and _positive_int(settings.get("n_ctx")):
        return settings["n_ctx"]
    return _positive_int(body.get("n_ctx"))


def vllm_max_model_len(body: Any, model: str) -> int | None:
    """``max_model_len`` of ``model`` from vLLM's ``/v1/models``."""
    data = body.get("data") if isinstance(body, dict) else None
    for entry in data if isinstance(data, list) else ():
        if isinstance(entry, dict) and entry.get("id") == model:
            return _positive_int(entry.get("max_model_len"))
    return None


def ollama_context(body: Any) -> int | None:
    """The window Ollama runs the model with, from ``/api/show``."""
    if not isinstance(body, dict):
        return None
    params = body.get("parameters")
    if isinstance(params, str):
        found = re.search(r"(?m)^\s*num_ctx\s+(\d+)\s*$", params)
        if found and int(found.group(1)) > 0:
            return int(found.group(1))
    info = body.get("model_info")
    if isinstance(info, dict):
        for key, value in info.items():
            if key.endswith(".context_length") and _positive_int(value):
                return min(value, OLLAMA_NUM_CTX)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    """What the server said: its context in tokens and which answer said it (None: none did)."""

    n_ctx: int | None
    where: str = ""
    reached: bool = True  # False: the server could not be reached, so ask again later


#: ``fetch(method, url, json_body)`` → the parsed JSON, or None (any failure);
#: it raises ConnectionError when nothing listens.
Fetch = Callable[[str, str, "dict[str, Any] | None"], Awaitable[Any]]


async def probe_context(fetch: Fetch, base_url: str, model: str) -> Probe:
    """Ask llama-server, vLLM and Ollama's questions in turn; the first figure wins."""
    root = server_root(base_url)
    questions: list[tuple[str, str, dict[str, Any] | None, Callable[[Any], int | None], str]] = [
        ("GET", root + "/props", None, llama_props_n_ctx, "llama-server GET /props n_ctx"),
        ("GET", base_url + "/models", None, lambda b: vllm_max_model_len(b, model), "GET /models max_model_len"),
        ("POST", root + "/api/show", {"model": model}, ollama_context, "Ollama POST /api/show"),
    ]
    for method, url, body, parse, where in questions:
        try:
            answer = await fetch(method, url, body)
        except ConnectionError:
            return Probe(None, reached=False)
        n_ctx = parse(answer)
        if n_ctx:
            return Probe(n_ctx, where)
    return Probe(None)
