"""The warm pool: actors forked ahead of need, each waiting for its first session.

A warm actor has imported nothing new (it is a fork of the preloaded
supervisor), has called the agent's factory and said hello into its channel;
the supervisor holds the front's end of that channel until a session needs
an actor, so taking one costs a descriptor pass, not a fork. Refills are
immediate while forks succeed; a warm actor that dies (its agent factory
fails, say) puts the pool in backoff, doubling up to 30 s with jitter, so a
broken agent does not become a fork loop. No I/O here: the supervisor forks.

Backoff only slows a loop down. An agent whose factory raises in
MAX_START_FAILURES actors in a row (a bad setting, say: the actor exits with
EXIT_AGENT_FAILED and leaves the error as its last word) *pauses* the pool:
no warm actor is forked until an actor forked after the last failure has
started its agent, or the operator sends SIGHUP. The supervisor takes the
front's word for a start: an actor it reports past ``starting`` (it said
hello). With the sandbox on, a warm actor says hello before it is given its
session and makes its agent, so there a hello is a hint, not proof; a
failure after it starts a new count, and such a pool does not loop anyway
(its actors call the factory only when a turn takes them).
Meanwhile a new session's turn still gets an actor, forked for it: the turn
ends with the agent's start error while the cause lasts, and that actor's
start is what ends the pause once the cause is gone.
"""

from __future__ import annotations

import random
import socket
from collections import OrderedDict
from typing import Any

from supervisor.actors import Actor

MAX_BACKOFF = 30.0
MAX_START_FAILURES = 3  # agent starts that fail in a row before the pool stops forking


class WarmPool:
    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        if size < 0:
            raise ValueError(f"the warm pool size must be >= 0, got {size}")
        self.size = size
        self._ready: OrderedDict[int, tuple[Actor, socket.socket]] = OrderedDict()
        self._failures = 0
        self._not_before = 0.0
        self._rng = rng or random.Random()
        self.start_failures = 0  # actors in a row whose agent failed to start
        self.start_error: str | None = None  # the last of those failures, as the actor said it
        self._failed_serial = 0  # the serial of the last actor whose agent failed to start

    def __len__(self) -> int:
        return len(self._ready)

    def __repr__(self) -> str:
        paused = " paused" if self.paused else ""
        return (f"<WarmPool {len(self._ready)}/{self.size} failures={self._failures} "
                f"start_failures={self.start_failures}{paused}>")

    @property
    def paused(self) -> bool:
        """Whether the agent failed to start too often in a row for warm actors to be forked."""
        return self.start_failures >= MAX_START_FAILURES

    def wants_one(self, now: float) -> bool:
        return len(self._ready) < self.size and now >= self._not_before and not self.paused

    def add(self, actor: Actor, chan_front: socket.socket) -> None:
        self._ready[actor.pid] = (actor, chan_front)

    def take(self) -> tuple[Actor, socket.socket] | None:
        """The oldest warm actor (the likeliest to have finished starting), or None."""
        if not self._ready:
            return None
        self._failures = 0  # it lived long enough to be used
        return self._ready.popitem(last=False)[1]

    def holds(self, pid: int) -> bool:
        return pid in self._ready

    def discard(self, pid: int) -> bool:
        """Forget a warm actor that exited; True if it was one."""
        entry = self._ready.pop(pid, None)
        if entry is None:
            return False
        entry[1].close()
        return True

    def failed(self, now: float) -> float:
        """A warm actor died or could not be forked: back off; return the delay."""
        self._failures += 1
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (self._failures - 1))
        delay *= 0.5 + self._rng.random()  # jitter
        self._not_before = now + delay
        return delay

    def agent_failed(self, serial: int, error: str) -> bool:
        """The agent failed to start in the actor forked ``serial``-th (warm or not).

        Returns True when this failure pauses the pool.
        """
        self.start_failures += 1
        self.start_error = error
        self._failed_serial = max(self._failed_serial, serial)
        return self.start_failures == MAX_START_FAILURES

    def agent_started(self, serial: int) -> bool:
        """The agent started in the actor forked ``serial``-th: a streak of failures before it ends.

        An actor forked before the last failure proves nothing (it may run older
        code, or have started before the cause appeared). Returns True when
        this ends a pause.
        """
        if not self.start_failures or serial <= self._failed_serial:
            return False
        return self.resume()

    def resume(self) -> bool:
        """Forget the start failures and the backoff (SIGHUP); True if the pool was paused."""
        was_paused = self.paused
        self.start_failures = 0
        self.start_error = None
        self._failures = 0
        self._not_before = 0.0
        return was_paused

    def start_state(self) -> dict[str, Any]:
        """For operators (status, ``/healthz``, ``ps``): whether the agent starts, and if not why."""
        return {"ok": self.start_failures == 0, "failures": self.start_failures, "error": self.start_error,
                "paused": self.paused}

    def drain(self) -> list[Actor]:
        """Empty the pool (its actors run old code after a reload); return them to be ended."""
        actors = [actor for actor, _chan in self._ready.values()]
        self.close()
        return actors

    def close(self) -> None:
        for _actor, chan in self._ready.values():
            chan.close()
        self._ready.clear()
