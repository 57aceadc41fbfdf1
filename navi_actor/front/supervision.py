"""The front's side of its link to the supervisor: requests, status reports, and news of actors.

The supervisor tells the front when an actor's channel is ready
(``spawned``), could not be started, exited (with the cause), or is being
stopped by an operator; the front reports what only it knows of each actor
(:meth:`Supervision.push_status`), and asks the supervisor for operators'
requests (:meth:`Supervision.control`). Adoption, shutdown and reload are the
runtime's (:meth:`navi_actor.front.runtime.Runtime._on_supervisor`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Collection, Mapping

from navi_actor import protocol
from navi_actor.front.actorset import ActorSet
from navi_actor.front.link import SupervisorLink
from supervisor.fdchannel import FdChannel


class Supervision:
    def __init__(self, loop: asyncio.AbstractEventLoop, link: SupervisorLink, actors: ActorSet,
                 viewers: Mapping[str, Collection[object]], owners: Mapping[str, str],
                 queued: Mapping[str, int]) -> None:
        """``viewers``: session id → its viewers; ``owners``: session id → its owner; ``queued``:
        session id → messages in its queue (the runtime's)."""
        self.loop = loop
        self.link = link
        self.actors = actors
        self.viewers = viewers
        self.owners = owners
        self.queued = queued
        self._control_seq = 0
        self._control_waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def on_message(self, op: Any, msg: dict[str, Any], chan: FdChannel) -> None:
        """A message about an actor, a status request or a control reply; others are ignored."""
        by_id = self.actors.by_id
        if op == "spawned":
            fd = chan.take_fd()
            actor = by_id.get(msg["actor_id"])
            if actor is None:
                os.close(fd)
                return
            actor.take_channel(fd, msg["pid"])
        elif op == "no_warm":
            actor = by_id.get(msg["actor_id"])
            if actor is not None:
                self.actors.no_warm(actor)
        elif op == "spawn_failed":
            actor = by_id.get(msg["actor_id"])
            if actor is not None:
                actor.fatal = {"code": protocol.AGENT_FAILED_TO_START,
                               "message": f"could not start the agent process: {msg.get('message')}"}
                actor.note_exit({"message": msg.get("message")})
        elif op == "exit":
            actor = by_id.get(msg["actor_id"])
            if actor is not None:
                actor.note_exit(msg)
        elif op == "status_request":  # an operator lists actors: answer as of now
            self.push_status()
        elif op == "operator_stop":
            actor = by_id.get(msg.get("actor_id"))
            run = actor.run if actor is not None else None
            if run is not None and run.operator_stop_at is None:
                run.operator_stop_at = time.monotonic()
        elif op == "control_reply":
            waiter = self._control_waiting.pop(msg.get("req"), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg.get("reply") or {})

    async def control(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Ask the supervisor (list, status, stop, kill) and wait for its answer.

        Raises TimeoutError, or ConnectionError when the supervisor is gone.
        """
        if self.link.closed:
            raise ConnectionError("the supervisor is gone")
        self._control_seq += 1
        req = self._control_seq
        waiter: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._control_waiting[req] = waiter
        self.link.send({"op": "control", "req": req, "request": request})
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._control_waiting.pop(req, None)

    def push_status(self) -> None:
        """Tell the supervisor what only the front knows of each actor (for ops tools).

        When the supervisor asks (an operator lists actors), and once a second
        from the ticker, for lists made while the front cannot answer: its size
        grows with the actors, so it is not sent per turn (with thousands of
        actors that made turns quadratic).
        """
        actors = {}
        for actor in self.actors.by_id.values():
            run = actor.run
            if not actor.hello.is_set():
                state = "starting"
            elif run is None:
                state = "idle"
            elif run.stop_requested_at is not None:
                state = "stopping"
            else:
                state = "running"
            actors[actor.actor_id] = {
                "state": state,
                "run_id": run.run_id if run else None,
                "turn_started": run.started_wall if run else None,
                "idle_since": time.time() - (time.monotonic() - actor.idle_since) if run is None else None,
                "events": run.events if run else 0,
                "viewers": len(self.viewers.get(actor.session_id, ())),
                "owner": self.owners.get(actor.session_id),
                "queued": self.queued.get(actor.session_id, 0),
            }
        self.link.send({"op": "status", "actors": actors})
