"""The front's actors: which one serves a session, and which one goes to make room.

A session's turn goes to its live actor, or to a new one asked of the
supervisor (a warm one is handed over). At most ``--max-actors`` live: when
all are taken, the longest-idle one is retired; when all are busy, the turn
is refused with ``capacity``. A retired actor takes no new turn and exits
(after its turn, when it has one).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Callable, Coroutine

from navi_actor import logs, protocol
from navi_actor.config import Config
from navi_actor.front.actors import ActorEvents, ActorHandle
from navi_actor.front.link import SupervisorLink
from navi_actor.protocol import ClientError

log = logs.get("navi.front")


class ActorSet:
    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, link: SupervisorLink,
                 owner: ActorEvents, watch: Callable[[ActorHandle], Coroutine[Any, Any, None]]) -> None:
        """``owner`` gets each actor's frames; ``watch(actor)`` runs (as a task) until it is gone."""
        self.loop = loop
        self.config = config
        self.link = link
        self.owner = owner
        self.watch = watch
        self.by_session: dict[str, ActorHandle] = {}  # session id → its live actor
        self.by_id: dict[str, ActorHandle] = {}  # every actor the front knows, retiring ones too

    def for_session(self, sid: str) -> ActorHandle:
        """The session's live actor, or a new one asked of the supervisor."""
        actor = self.by_session.get(sid)
        if actor is not None and actor.alive and not actor.retiring:
            return actor
        actor = ActorHandle(uuid.uuid4().hex[:16], sid, self.owner)
        actor.requested_at = time.monotonic()
        self.by_session[sid] = actor
        self.by_id[actor.actor_id] = actor
        self.link.send({"op": "spawn", "actor_id": actor.actor_id, "session_id": sid})
        self._watch(actor)
        return actor

    def adopt(self, actor_id: str, pid: int, session_id: str, fd: int) -> ActorHandle:
        """An actor a former front started (the supervisor passed its channel)."""
        actor = ActorHandle(actor_id, session_id, self.owner)
        self.by_id[actor_id] = actor
        current = self.by_session.get(session_id)
        if current is None or not current.alive:
            self.by_session[session_id] = actor
        actor.take_channel(fd, pid)
        self._watch(actor)
        return actor

    def _watch(self, actor: ActorHandle) -> None:
        self.loop.create_task(self.watch(actor))

    def gone(self, actor: ActorHandle) -> None:
        """The actor is gone: forget it."""
        self.by_id.pop(actor.actor_id, None)
        if self.by_session.get(actor.session_id) is actor:
            del self.by_session[actor.session_id]

    def make_room(self, sid: str) -> None:
        """Keep at most --max-actors: evict the longest-idle actor, or refuse when all are busy."""
        current = self.by_session.get(sid)
        if current is not None and current.alive and not current.retiring:
            return
        if len(self.by_id) < self.config.max_actors:
            return  # the common case, without a pass over every actor
        live = [a for a in self.by_id.values() if a.alive and not a.retiring]
        if len(live) < self.config.max_actors:
            return
        idle = [a for a in live if a.run is None]
        if not idle:
            raise ClientError(
                protocol.CAPACITY,
                f"The server is at capacity: all {self.config.max_actors} agent processes are busy. "
                "Try again in a moment.",
            )
        victim = min(idle, key=lambda a: a.idle_since)
        log.info("front.actor_evicted", actor_id=victim.actor_id, session_id=victim.session_id)
        self.retire(victim)

    def retire(self, actor: ActorHandle) -> None:
        """The actor takes no new turn and is told to exit."""
        self._unassign(actor)
        actor.send({"op": "shutdown"})

    def retire_all(self) -> None:
        """New agent code (SIGHUP): idle actors exit now, busy ones after their turn."""
        n = 0
        for actor in list(self.by_id.values()):
            if not actor.retiring:
                n += 1
                if actor.run is None:
                    self.retire(actor)
                else:
                    self._unassign(actor)
        log.info("front.reload", actors_retired=n)

    def retire_idle(self, now: float) -> None:
        """Actors idle for --idle-timeout exit."""
        for actor in list(self.by_session.values()):
            if actor.run is None and not actor.retiring and now - actor.idle_since >= self.config.idle_timeout:
                log.info("front.actor_idle_exit", actor_id=actor.actor_id, session_id=actor.session_id)
                self.retire(actor)

    def _unassign(self, actor: ActorHandle) -> None:
        actor.retiring = True
        if self.by_session.get(actor.session_id) is actor:
            del self.by_session[actor.session_id]
