"""Find the agent named by ``--agent`` and make a per-process runner of it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from typing import Any, AsyncIterator, Callable

from navi_actor.turn import Turn

#: Short names for the built-in agents.
ALIASES = {
    "demo": "navi_actor.agents.demo:agent",
    "echo": "navi_actor.agents.echo:agent",
    "openai": "navi_actor.agents.openai:agent",
}


class AgentLoadError(Exception):
    """The agent spec cannot be imported or is not an agent."""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSpec:
    """A resolved ``MODULE:ATTR``: either a generator function or a factory."""

    name: str  # as the user gave it
    target: str  # MODULE:ATTR after aliases
    obj: Any
    is_function: bool  # an async generator function of (turn)

    def make_runner(self) -> Callable[[Turn], AsyncIterator[Any]]:
        """Return ``run(turn)`` for this process; calls a factory once, here.

        A factory's object may have ``async def aclose(self)``: the actor awaits
        it (for at most 5 s) when it exits in order, to close clients or files.
        """
        if self.is_function:
            return self.obj
        instance = self.obj()
        run_stream = getattr(instance, "run_stream", None)
        if not inspect.isasyncgenfunction(run_stream):
            raise AgentLoadError(
                f"agent factory {self.target} returned {type(instance).__name__}, which has no "
                "async generator method run_stream(turn)"
            )
        return run_stream


def _current_folder_importable() -> None:
    """Let ``--agent myagent:agent`` find ``./myagent.py``, as ``python -m`` and uvicorn do."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load(name: str, reload: bool = False) -> AgentSpec:
    """Import the agent named ``name`` (an alias or ``MODULE:ATTR``).

    ``reload`` imports the module's current source again (for SIGHUP); only
    that module is reloaded, not what it imports.
    """
    target = ALIASES.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise AgentLoadError(
            f"agent {name!r} is neither a built-in ({', '.join(ALIASES)}) nor MODULE:ATTR"
        )
    _current_folder_importable()
    try:
        importlib.invalidate_caches()
        module = importlib.import_module(module_name)
        if reload:
            module = importlib.reload(module)
    except Exception as exc:  # the agent's own import errors, whatever they are
        raise AgentLoadError(f"cannot import agent module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AgentLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if inspect.isasyncgenfunction(obj):
        return AgentSpec(name, target, obj, True)
    if callable(obj):
        return AgentSpec(name, target, obj, False)
    raise AgentLoadError(
        f"{target} is {type(obj).__name__}: expected an async generator function (turn) or a "
        "zero-argument factory of an object with run_stream(turn)"
    )
