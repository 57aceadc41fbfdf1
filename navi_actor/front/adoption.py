"""A new front adopts the actors a former one started, with the turns they run.

When the front restarts, the supervisor passes it every live actor's channel
(``adopt``). Each actor says hello with the turn it is running, if any; the
front rebuilds its view of that turn (:meth:`Adoption.adopt_run`), with the
replay buffer still in the actor: a front restart loses sockets, not runs.
Once every adopted actor has answered (or :data:`ADOPT_WAIT` has passed),
turns the store still has as running but no actor has are marked
interrupted (:meth:`Adoption.reconcile`), the queues of waiting messages are read
from the store, and only then do turns start.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol, TypeVar

import orjson

from navi_actor import logs
from navi_actor.front.actors import ActorHandle
from navi_actor.front.actorset import ActorSet
from navi_actor.front.runs import LOST_IN_RESTART, Run
from navi_actor.front.storekeeper import StoreKeeper
from navi_actor.store import SessionStore, StoreError, StoreFailure

log = logs.get("navi.front")
T = TypeVar("T")

ADOPT_WAIT = 3.0  # seconds a new front waits for adopted actors to report their runs


class Queues(Protocol):
    """The queues of messages waiting for their turn (:class:`navi_actor.front.queueing.Queueing`)."""

    async def restore(self) -> None: ...


class Runtime(Protocol):
    """What adoption reaches of the runtime (:class:`navi_actor.front.runtime.Runtime`)."""

    queueing: Queues

    runs: dict[str, Run]  # session id → its running turn
    actor_set: ActorSet
    store_backend: SessionStore
    store_keeper: StoreKeeper

    async def store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def stop(self, session_id: str, reason: dict[str, str] | None = None) -> bool: ...

    def on_actor_violation(self, actor: ActorHandle, reason: str) -> None: ...


class Adoption:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.reconciled = asyncio.Event()  # set once turns may start
        self._adopted: list[ActorHandle] = []

    def adopt(self, actor_id: str, pid: int, session_id: str, fd: int) -> None:
        """The supervisor passed the channel of an actor a former front started."""
        actor = self.rt.actor_set.adopt(actor_id, pid, session_id, fd)
        if not self.reconciled.is_set():
            self._adopted.append(actor)

    async def reconcile(self) -> None:
        """Wait for adopted actors to report their runs; interrupt runs nobody has.

        A turn that was running when the previous front died either lives on
        in its actor (adopted here, with its replay buffer) or is gone with it;
        the store must not keep the latter "running".
        """
        rt = self.rt
        await asyncio.sleep(0)  # let the supervisor's adopt messages arrive first
        for actor in list(self._adopted):
            await actor.wait_hello_or_gone(ADOPT_WAIT)
        keep = [run.run_id for run in rt.runs.values()]
        try:
            lost = await rt.store(rt.store_backend.recover_interrupted, LOST_IN_RESTART, keep=keep)
        except StoreError as exc:
            log.error("front.reconcile_failed", error=str(exc))
            rt.store_keeper.recover_pending = isinstance(exc, StoreFailure)  # the keeper retries it
            lost = []
        if self._adopted or lost:
            log.info("front.adopted", actors=len(self._adopted), runs=len(keep), interrupted=len(lost))
        self._adopted.clear()
        await rt.queueing.restore()  # queued messages of sessions with no running turn start now
        self.reconciled.set()

    def adopt_run(self, actor: ActorHandle, state: dict[str, Any]) -> None:
        """Rebuild the front's view of a turn an adopted actor is running (its hello's ``run``)."""
        rt = self.rt
        sid = actor.session_id
        if sid in rt.runs:
            return rt.on_actor_violation(actor, "reported a run for a session that has another")
        run = Run(state["run_id"], sid)
        start = state["start"]
        run.first_seq = start["seq"]
        run.last_seq = run.checkpointed_seq = state["last_seq"]
        run.text = [state["text"]]
        run.start_bytes = orjson.dumps(start)
        run.actor = actor
        actor.run = run
        rt.runs[sid] = run
        if state["stopping"]:
            run.stop_requested_at = None
            rt.stop(sid)
        log.info("front.run_adopted", session_id=sid, run_id=run.run_id, last_seq=run.last_seq,
                 done=state["done"])
