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

#: After a new actor takes the last free slot, the longest-idle one is retired this much later
#: (seconds), so that the next new session finds a slot: its exit, the supervisor's reaping and
#: the warm pool's refill then run off that session's first turn.
EVICT_AHEAD_DELAY = 0.01


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
        self._evict_timer: asyncio.TimerHandle | None = None

    def for_session(self, sid: str) -> ActorHandle:
        """The session's live actor, or a new one asked of the supervisor."""
        actor = self.by_session.get(sid)
        if actor is not None and actor.alive and not actor.retiring:
            if actor.prebound:
                self.claim(actor)
            return actor
        return self._ask(sid, warm_only=False)

    def prebind(self, sid: str) -> None:
        """A client connected to a session with no actor: take a warm one for it now, if one is
        ready and there is room without evicting, so its first turn skips the handover
        (confining the actor to the session, making its agent). Nothing is forked for it."""
        if self.config.no_prebind or len(self.by_id) >= self.config.max_actors:
            return
        current = self.by_session.get(sid)
        if current is None or not current.alive or current.retiring:
            self._ask(sid, warm_only=True).prebound = True

    def claim(self, actor: ActorHandle) -> None:
        """A turn needs the prebound actor: if the supervisor had no warm one, it forks one now
        (it ignores this second ask when the warm one was handed over)."""
        actor.prebound = False
        if not actor.has_channel:
            self.link.send({"op": "spawn", "actor_id": actor.actor_id, "session_id": actor.session_id})

    def no_warm(self, actor: ActorHandle) -> None:
        """The supervisor had no warm actor for a prebind: forget the handle, unless a turn
        claimed it meanwhile (the claim's ask forks one)."""
        if actor.prebound:
            self.gone(actor)
            actor.note_exit({"message": "no warm actor was ready"})

    def release_prebound(self, sid: str) -> None:
        """The session's last client left before any turn: its prebound actor goes."""
        actor = self.by_session.get(sid)
        if actor is not None and actor.prebound and actor.run is None:
            log.info("front.prebound_released", actor_id=actor.actor_id, session_id=sid)
            self.retire(actor)

    def _ask(self, sid: str, warm_only: bool) -> ActorHandle:
        actor = ActorHandle(uuid.uuid4().hex[:16], sid, self.owner)
        actor.requested_at = time.monotonic()
        self.by_session[sid] = actor
        self.by_id[actor.actor_id] = actor
        msg = {"op": "spawn", "actor_id": actor.actor_id, "session_id": sid}
        if warm_only:
            msg["warm_only"] = True
        self.link.send(msg)
        self._watch(actor)
        if len(self.by_id) >= self.config.max_actors and self._evict_timer is None:
            self._evict_timer = self.loop.call_later(EVICT_AHEAD_DELAY, self._evict_ahead)
        return actor

    def _evict_ahead(self) -> None:
        """The slots are full: retire the longest-idle actor now, ahead of the next session's need."""
        self._evict_timer = None
        live = [a for a in self.by_id.values() if a.alive and not a.retiring]
        idle = [a for a in live if a.run is None and not a.prebound]
        if len(live) >= self.config.max_actors and idle:
            victim = min(idle, key=lambda a: a.idle_since)
            log.info("front.actor_evicted", actor_id=victim.actor_id, session_id=victim.session_id, ahead=True)
            self.retire(victim)

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
