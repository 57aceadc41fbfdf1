"""The openai agent's configuration: the ``NAVI_OPENAI_*`` variables, checked once.

:meth:`Settings.from_env` reads every variable and raises :class:`ConfigError`
naming a bad one; :func:`load_tools` builds the tool registry they choose.
Nothing here does network I/O.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from typing import Any, Mapping

from navi_actor.agents.tools import BUILTIN_TOOLS, Tools, as_tools

DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. When a tool gives a more reliable answer than you can "
    "(arithmetic, the current date and time, files the user uploaded), call it."
)
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_STEPS = 8
DEFAULT_CONTEXT_CHARS = 4_000  # fits llama-cpp-python's default context of 2,048 tokens, tools included
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF = 0.5
MAX_RETRY_WAIT = 60.0  # a retry-after longer than this is not waited for: the turn fails at once
MAX_BACKOFF = 10.0


class ConfigError(ValueError):
    """A ``NAVI_OPENAI_*`` variable has a bad value (raised by the factory)."""



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
    context_chars_set: bool = False  # NAVI_OPENAI_CONTEXT_CHARS was given: the server is not asked its context
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
        context_chars = number("CONTEXT_CHARS", int, 100, None, "a whole number of characters, at least 100")
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
            context_chars=_or(context_chars, DEFAULT_CONTEXT_CHARS),
            context_chars_set=context_chars is not None,
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
