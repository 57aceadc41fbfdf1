"""The front's half of the stop ladder: the timers that send SIGTERM, then SIGKILL.

What comes when is decided by :mod:`navi_actor.stopladder`; this module sets
one timer per signal step when a stop is asked for, and when one fires asks
the supervisor to signal the actor's process group. The turn's end (its
result, or its actor's death) cancels the timers.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from navi_actor import logs, stopladder
from navi_actor.config import Config
from navi_actor.front.runs import Run

log = logs.get("navi.front")


class StopTimers:
    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config,
                 signal: Callable[[str, str], None]) -> None:
        """``signal(actor_id, sig)`` asks the supervisor to send ``sig`` ("TERM", "KILL")."""
        self.loop = loop
        self.steps = stopladder.signals(config.stop_term_after, config.stop_kill_after)
        self._signal = signal

    def start(self, run: Run) -> None:
        """The stop was just asked for: time its signal steps."""
        run.ladder = [self.loop.call_later(step.after, self._take, run, step) for step in self.steps]

    @staticmethod
    def cancel(run: Run) -> None:
        for timer in run.ladder:
            timer.cancel()

    def _take(self, run: Run, step: stopladder.Step) -> None:
        if not stopladder.is_due(finishing=run.finishing, ended=run.ended.is_set(), has_actor=run.actor is not None):
            return
        assert run.actor is not None and step.signal is not None
        run.stop_step = step.name
        log.warning("front.stop_escalate", session_id=run.session_id, run_id=run.run_id, step=run.stop_step)
        self._signal(run.actor.actor_id, step.signal)
