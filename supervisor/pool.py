"""The warm pool: actors forked ahead of need, each waiting for its first session.

A warm actor has imported nothing new (it is a fork of the preloaded
supervisor), has called the agent's factory and said hello into its channel;
the supervisor holds the front's end of that channel until a session needs
an actor, so taking one costs a descriptor pass, not a fork. Refills are
immediate while forks succeed; a warm actor that dies (its agent factory
fails, say) puts the pool in backoff, doubling up to 30 s with jitter, so a
broken agent does not become a fork loop. No I/O here: the supervisor forks.
"""

from __future__ import annotations

import random
import socket
from collections import OrderedDict

from supervisor.actors import Actor

MAX_BACKOFF = 30.0


class WarmPool:
    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        if size < 0:
            raise ValueError(f"the warm pool size must be >= 0, got {size}")
        self.size = size
        self._ready: OrderedDict[int, tuple[Actor, socket.socket]] = OrderedDict()
        self._failures = 0
        self._not_before = 0.0
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        return len(self._ready)

    def __repr__(self) -> str:
        return f"<WarmPool {len(self._ready)}/{self.size} failures={self._failures}>"

    def wants_one(self, now: float) -> bool:
        return len(self._ready) < self.size and now >= self._not_before

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

    def drain(self) -> list[Actor]:
        """Empty the pool (its actors run old code after a reload); return them to be ended."""
        actors = [actor for actor, _chan in self._ready.values()]
        self.close()
        return actors

    def close(self) -> None:
        for _actor, chan in self._ready.values():
            chan.close()
        self._ready.clear()
