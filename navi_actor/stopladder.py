"""The stop ladder's decisions: which step comes after which, when, and what ends a stopped turn.

A stop is a message, then a ladder of ever firmer steps (DESIGN.md, invariant 6)::

    event     at 0               the agent's stop event is set (in the actor)
    cancel    at --stop-grace    the agent task is cancelled (in the actor)
    sigterm   at --stop-term-after               SIGTERM to the actor's process group
    sigkill   --stop-kill-after after sigterm    SIGKILL to it

The first two steps happen inside the actor; the front takes the last two, by
asking the supervisor to signal the actor (:mod:`navi_actor.front.stopping`
keeps the timers). Each step's name is the ``stop_step`` a turn that it ended
reports. This module only decides: it does no I/O and keeps no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT = "event"
CANCEL = "cancel"
SIGTERM = "sigterm"
SIGKILL = "sigkill"
#: Every step, the gentlest first.
STEPS = (EVENT, CANCEL, SIGTERM, SIGKILL)


@dataclass(frozen=True)
class Step:
    name: str  #: the ``stop_step`` of a turn this step ends
    after: float  #: seconds after the stop request
    signal: str | None  #: what the supervisor sends the actor's process group ("TERM", "KILL"); None: the actor's own step


def ladder(grace: float, term_after: float, kill_after: float) -> tuple[Step, ...]:
    """The whole ladder, in order, for these settings (``--stop-grace`` and the two below)."""
    _check("stop_grace", grace)
    return (Step(EVENT, 0.0, None), Step(CANCEL, grace, None)) + signals(term_after, kill_after)


def signals(term_after: float, kill_after: float) -> tuple[Step, ...]:
    """The steps the front takes, with when to take each, from the stop request:
    ``--stop-term-after`` and ``--stop-kill-after``."""
    _check("stop_term_after", term_after)
    _check("stop_kill_after", kill_after)
    return (Step(SIGTERM, term_after, "TERM"), Step(SIGKILL, term_after + kill_after, "KILL"))


def _check(name: str, seconds: float) -> None:
    if not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")


def next_step(name: str | None) -> str | None:
    """The step after ``name`` (None: before the first); None after the last."""
    if name is None:
        return STEPS[0]
    if name not in STEPS:
        raise ValueError(f"unknown stop step {name!r}; the steps are {', '.join(STEPS)}")
    i = STEPS.index(name)
    return STEPS[i + 1] if i + 1 < len(STEPS) else None


def is_due(*, finishing: bool, ended: bool, has_actor: bool) -> bool:
    """Whether a signal step still applies when its time comes: not once the turn is ending
    or ended (its result arrived), and not without an actor to signal."""
    return not (finishing or ended) and has_actor


def step_at_death(taken: str | None) -> str:
    """The ``stop_step`` of a stopped turn whose actor died before it answered: the last
    signal the front sent, or ``sigterm`` when the front sent none (something else ended
    the process: the supervisor's own ladder, an operator, a signal from outside)."""
    return taken or SIGTERM


def counted_step(stop_step: str | None) -> str:
    """The step a ``stream_stopped`` is counted under: its ``stop_step``, or ``event``
    (an agent that stopped at the event says no more)."""
    return stop_step or EVENT
