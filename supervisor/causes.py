"""Why a process ended, in words a user understands. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import os
import signal


#: A child that exits with this code cannot start (port taken, unusable data
#: folder, an agent that fails to load): restarting it would only loop.
EXIT_CANNOT_START = 2
#: An actor that exits with this code could not start its agent (the factory
#: raised; its last word on the lifeline says why): the same cause would fail
#: the next one, so the warm pool stops forking after a few (supervisor/pool.py).
#: The actor's side of this protocol is ``navi_actor.actor.EXIT_AGENT_FAILED``.
EXIT_AGENT_FAILED = 3


@dataclasses.dataclass(frozen=True, slots=True)
class ExitCause:
    """How a child ended: ``exitcode`` or ``signal``, and a sentence saying so."""

    exitcode: int | None
    signal: int | None
    message: str

    @property
    def signal_name(self) -> str | None:
        return _signal_name(self.signal) if self.signal is not None else None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)  # a real-time signal has no name: "signal 40"


def describe_status(status: int, what: str = "agent process") -> ExitCause:
    """Explain a raw ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        return describe(None, os.WTERMSIG(status), what)
    return describe(os.WEXITSTATUS(status), None, what)


def describe(exitcode: int | None, signum: int | None, what: str = "agent process") -> ExitCause:
    if signum is not None:
        name = _signal_name(signum)
        if signum == signal.SIGKILL:
            text = f"{what} was killed ({name}; perhaps out of memory?)"
        elif signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            text = f"{what} was terminated ({name})"
        else:
            text = f"{what} crashed (signal {name})"
        return ExitCause(None, signum, text)
    code = exitcode or 0
    return ExitCause(code, None, f"{what} exited with code {code}")
