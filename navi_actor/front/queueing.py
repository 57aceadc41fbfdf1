"""Messages sent while their session is busy: refused, queued, or interrupting (issue 15).

What a message does then is decided by :mod:`navi_actor.busy` (pure), from
its ``if_busy``, the session's own policy (``PATCH /sessions/{id}``) and the
server's ``--if-busy``. A queued message is saved in the store's queue
before any viewer hears of it (``queued``, to every viewer of the session);
it enters the session's messages only when its turn begins. When a turn
ends, after its result is committed, the session's next queued message
starts (:meth:`Queueing.kick`), with the usual ``stream_start``. An
``interrupt`` is queued at the head, then the running turn is stopped
through the normal ladder with reason ``interrupted_by_new_message``.

A message with a ``client_message_id`` the session has already seen starts
nothing: its sender gets the ``queued`` answer again, follows the turn it
began, or is told to sync (:meth:`Queueing._resent`).

Per session, messages are handled one at a time (a lock), so that the
client-id check, the decision and the write see the same state. The front
keeps only the queues' lengths, rebuilt from the store at start
(:meth:`Queueing.restore`): a session with queued messages and no running
turn then starts its next one. A queued message that cannot start (no
actor free, the store failing) stays queued and is retried every tick.

With a store several nodes share, a message for a session whose turn runs on
another node is queued here and handed to that node (:mod:`navi_actor.front.elsewhere`);
a node told so reads the session's queue again (:meth:`Queueing.from_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, Protocol, TypeVar

from navi_actor import busy, logs, protocol
from navi_actor.config import Config
from navi_actor.front import elsewhere as elsewhere_mod, turns
from navi_actor.front.actorset import ActorSet
from navi_actor.front.runs import Run, RunViewer
from navi_actor.front.storekeeper import StoreKeeper
from navi_actor.protocol import ClientError, UserMessage
from navi_actor.store import QueueFull, SessionNotFound, SessionStore, StoreError

log = logs.get("navi.front")
T = TypeVar("T")

INTERRUPTED = {
    "code": protocol.INTERRUPTED_BY_NEW_MESSAGE,
    "message": "The turn was stopped for a new message sent with if_busy 'interrupt'.",
}


class Runtime(Protocol):
    """What the queue reaches of the runtime (:class:`navi_actor.front.runtime.Runtime`)."""

    loop: asyncio.AbstractEventLoop
    config: Config
    store_backend: SessionStore
    store_keeper: StoreKeeper
    actor_set: ActorSet
    runs: Mapping[str, Run]
    viewers: Mapping[str, Iterable[RunViewer]]
    reconciled: asyncio.Event
    shutting_down: bool
    cluster: Any  #: front.cluster.FrontCluster with a store several nodes share, else None
    relay: Any  #: front.relay.Relay, with a cluster

    async def store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def start_turn(self, viewer: Any, message: UserMessage) -> None: ...

    async def launch(self, run: Run, viewer: Any, begin: Callable[..., turns.Begun], *args: Any) -> None: ...

    def join(self, viewer: RunViewer, run: Run, after: int | None) -> None: ...

    def stop(self, session_id: str, reason: dict[str, str] | None = None) -> bool: ...


class Queueing:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.lengths: dict[str, int] = {}  #: session id → messages in its queue (the store has them)
        #: session id → the queued messages this node's viewers were told of (``queued``), so that a
        #: change made on another node is told as the difference (_announce).
        self.told: dict[str, set[str]] = {}
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # session → its lock, and its users
        self._starting: set[str] = set()  # sessions whose next message is being started
        self.restore_pending = False  #: the queues could not be read at start; retried each tick

    @contextlib.asynccontextmanager
    async def _serial(self, sid: str) -> AsyncIterator[None]:
        """One message (or queue start) of the session at a time. The lock lives while someone
        holds or waits for it: the front keeps none for idle sessions."""
        entry = self._locks.get(sid)
        if entry is None:
            entry = self._locks[sid] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[sid]

    def _count(self, sid: str, delta: int) -> None:
        n = self.lengths.get(sid, 0) + delta
        if n > 0:
            self.lengths[sid] = n
        else:
            self.lengths.pop(sid, None)

    def _broadcast(self, sid: str, data: bytes) -> None:
        for viewer in self.rt.viewers.get(sid, ()):
            viewer.send(data)

    # ── a client's message ────────────────────────────────────────────────
    async def on_message(self, viewer: Any, message: UserMessage) -> None:
        """A message from ``viewer``: start its turn, queue it, interrupt, or refuse (ClientError)."""
        rt = self.rt
        sid = viewer.session_id
        await rt.reconciled.wait()
        elsewhere = False  # the session's turn runs on another node (front/elsewhere.py)
        async with self._serial(sid):
            action = await self._decide(viewer, message)
            if action == busy.START:
                try:
                    return await rt.start_turn(viewer, message)
                except elsewhere_mod.BusyElsewhere:
                    action, elsewhere = await self._busy_elsewhere(sid, message), True
            if action is not None:
                await self._enqueue(sid, message, action, count=not elsewhere)
        if elsewhere:
            if not await elsewhere_mod.hand_over(rt, list(rt.viewers.get(sid, ())), sid, action):
                with contextlib.suppress(StoreError):  # (then counted at the next start's failure)
                    await self.reread(sid)  # the owner was not told: this node starts it once it may
            return
        if action == busy.INTERRUPT:
            rt.stop(sid, INTERRUPTED)
        self.kick(sid)  # nothing runs (a queue that could not start yet): try now

    async def _decide(self, viewer: Any, message: UserMessage) -> str | None:
        """What to do with the message (None: it was a resend, answered here); raises ClientError."""
        rt = self.rt
        sid = viewer.session_id
        if rt.shutting_down:
            raise ClientError(protocol.SHUTTING_DOWN, "Server is shutting down; try again in a moment.")
        if message.client_message_id is not None:
            found = await rt.store(rt.store_backend.find_client_message, sid, message.client_message_id)
            if found is not None:
                self._resent(viewer, message, found)
                return None
        running, queued = sid in rt.runs, self.lengths.get(sid, 0)
        if not running and not queued:
            return busy.START
        own = await rt.store(rt.store_backend.get_if_busy, sid) if message.if_busy is None else None
        policy = busy.effective(message.if_busy, own, rt.config.if_busy)
        action = busy.decide(policy, running, queued, rt.config.max_queued)
        if action == busy.REJECT:
            raise ClientError(protocol.ALREADY_RUNNING, "Agent is already running for this session.")
        if action == busy.QUEUE_FULL:
            raise self._full()
        rt.store_keeper.refuse_if_cannot_write(sid)
        return action

    async def _busy_elsewhere(self, sid: str, message: UserMessage) -> str:
        """``enqueue`` or ``interrupt`` for a message whose session's turn runs on another node; raises
        ClientError for ``reject`` (already_running, as before) and without room in the queue."""
        action = await elsewhere_mod.action_for(self.rt, sid, message)
        if action == busy.QUEUE_FULL:
            raise self._full()
        return action

    def _full(self) -> ClientError:
        n = self.rt.config.max_queued
        return ClientError(protocol.QUEUE_FULL, f"The session's queue is full: at most {n} messages may wait "
                                                "(--max-queued). Send it again when a queued turn has started.")

    async def _enqueue(self, sid: str, message: UserMessage, action: str, count: bool = True) -> None:
        """Save the message in the session's queue and tell this node's viewers; ``count``: this node
        runs it (False: the node running the session's turn is told, front/elsewhere.py)."""
        rt = self.rt
        mid = uuid.uuid4().hex  # its turn's run id, once it starts
        try:
            position = await rt.store(
                rt.store_backend.enqueue, sid, mid, content=message.display_content, agent_content=message.content,
                images=message.images, files=message.files, client_message_id=message.client_message_id,
                at_head=action == busy.INTERRUPT, limit=busy.limit_for(action, rt.config.max_queued))
        except QueueFull:
            raise self._full() from None
        except SessionNotFound:
            raise ClientError(protocol.SESSION_NOT_FOUND, "Session not found") from None
        except StoreError as exc:
            raise turns.not_saved(sid, exc) from None
        if count:
            self._count(sid, 1)
        log.info("front.queued", session_id=sid, message_id=mid, position=position, action=action)
        if count:  # (else the node that runs it tells its viewers, this node's among them once relayed)
            self._told(sid, mid, True)
        self._broadcast(sid, protocol.queued(position, mid, message.client_message_id, message.display_content))

    def _told(self, sid: str, mid: str, queued: bool) -> None:
        ids = self.told.setdefault(sid, set())
        if queued:
            ids.add(mid)
        else:
            ids.discard(mid)
            if not ids:
                del self.told[sid]

    def _resent(self, viewer: Any, message: UserMessage, found: dict[str, Any]) -> None:
        """A message whose client id the session has seen: nothing new starts."""
        rt = self.rt
        if found["state"] == "queued":
            viewer.send(protocol.queued(found["position"], found["message_id"], message.client_message_id,
                                        message.display_content))
            return
        run = rt.runs.get(viewer.session_id)
        if run is not None and run.run_id == found["run_id"]:
            if viewer.run is not run:
                rt.join(viewer, run, viewer.resume_after)
            return  # it follows that turn (attached at connect, or now)
        last_seq = found["last_seq"] if found["status"] != "running" else None
        viewer.send(protocol.session_sync(last_seq))

    async def cancel(self, viewer: Any, message_id: str) -> None:
        """``cancel_queued``: take the message out of the queue, and tell every viewer; raises ClientError."""
        rt = self.rt
        sid = viewer.session_id
        async with self._serial(sid):
            try:
                cancelled = await rt.store(rt.store_backend.cancel_queued, sid, message_id)
            except StoreError as exc:
                raise ClientError(protocol.STORE_ERROR, f"The message could not be cancelled: {exc}") from None
            if not cancelled:
                raise ClientError(protocol.NOT_QUEUED, "No message with this message_id is queued in this "
                                                       "session: it is unknown, cancelled, or its turn started.")
            self._count(sid, -1)
        self._told(sid, message_id, False)
        log.info("front.queue_cancelled", session_id=sid, message_id=message_id)
        self._broadcast(sid, protocol.queue_cancelled(message_id))
        if rt.cluster is not None and sid not in rt.runs:  # it may wait for another node's turn: tell it
            rt.loop.create_task(elsewhere_mod.queue_changed(rt, sid))

    async def reread(self, sid: str) -> None:
        """The session's queue changed on another node (a shared store): its length read again, then its
        next message started if no turn runs here. StoreError leaves the count as it was."""
        async with self._serial(sid):
            await self._recount(sid)
        self.kick(sid)

    async def _recount(self, sid: str) -> list[dict[str, Any]]:
        """The session's queue length, as the store has it (another node may have changed it); the queue."""
        queue = await self.rt.store(self.rt.store_backend.queue, sid)
        self._count(sid, len(queue) - self.lengths.get(sid, 0))
        return queue

    def _announce(self, sid: str, queue: list[dict[str, Any]]) -> None:
        """Tell this node's viewers what another node changed in the session's queue: ``queued`` for
        each message they were not told of, ``queue_cancelled`` for each one told that is gone."""
        told = self.told.pop(sid, set())
        now = {entry["message_id"] for entry in queue}
        if now:
            self.told[sid] = now
        for gone in sorted(told - now):
            self._broadcast(sid, protocol.queue_cancelled(gone))
        for entry in queue:
            if entry["message_id"] not in told:
                self._broadcast(sid, protocol.queued(entry["position"], entry["message_id"],
                                                     entry["client_message_id"], entry["content"]))

    async def from_elsewhere(self, sid: str, op: str) -> str:
        """Another node queued (or cancelled) a message of a session whose turn runs here: ``op`` is
        ``queue`` or ``interrupt`` (then the turn is stopped for it). This node's viewers are told the
        change. The outcome, for that node."""
        try:
            async with self._serial(sid):
                self._announce(sid, await self._recount(sid))
        except StoreError as exc:
            return f"failed: {exc}"
        self.kick(sid)
        if op == elsewhere_mod.INTERRUPT and self.rt.stop(sid, INTERRUPTED):
            return "interrupting"
        return "queued" if self.lengths.get(sid) else "nothing queued"

    # ── the next turn ─────────────────────────────────────────────────────
    def kick(self, sid: str) -> None:
        """Start the session's next queued message, if it has one and no turn runs."""
        rt = self.rt
        if self.lengths.get(sid) and sid not in rt.runs and sid not in self._starting and not rt.shutting_down:
            self._starting.add(sid)
            rt.loop.create_task(self._start_next(sid))

    def tick(self) -> None:
        """Retry what waits: the queues' restore, and queued messages that could not start."""
        if self.restore_pending:
            self.restore_pending = False
            self.rt.loop.create_task(self.restore())
            return
        for sid in list(self.lengths):
            self.kick(sid)

    def forget(self, sid: str) -> None:
        """The session is being deleted: its queue starts nothing more (the store drops it)."""
        self.lengths.pop(sid, None)
        self.told.pop(sid, None)

    async def _start_next(self, sid: str) -> None:
        rt = self.rt
        try:
            async with self._serial(sid):
                if sid in rt.runs or not self.lengths.get(sid) or rt.shutting_down:
                    return
                keeper = rt.store_keeper
                if keeper.failing is not None or keeper.unsaved.waiting_in(sid):
                    return  # retried at the next tick
                rt.actor_set.make_room(sid)
                run = Run(uuid.uuid4().hex, sid)
                try:
                    await rt.launch(run, None, turns.begin_next)
                except ClientError as err:
                    if rt.cluster is not None and err.code == protocol.STORE_ERROR:
                        await self._recount(sid)  # another node may have begun or cancelled it
                    raise
                self._count(sid, -1)
                self._told(sid, run.run_id, False)  # (its run id is its message id)
        except ClientError as err:  # no actor free, the store failing, the session gone: it stays queued
            if err.code == protocol.SESSION_NOT_FOUND:
                self.forget(sid)
            log.info("front.queue_waits", session_id=sid, code=err.code, reason=err.message)
        except Exception:
            log.exception("front.queue_start_failed", session_id=sid)
        finally:
            self._starting.discard(sid)

    async def restore(self) -> None:
        """At start: the queues' lengths from the store; sessions with no running turn start their next."""
        rt = self.rt
        try:
            sessions = await rt.store(rt.store_backend.queued_sessions)
            lengths = {sid: len(await rt.store(rt.store_backend.queue, sid)) for sid in sessions}
        except StoreError as exc:
            log.error("front.queue_restore_failed", error=str(exc))
            self.restore_pending = True
            return
        self.lengths.update({sid: n for sid, n in lengths.items() if n})
        if lengths:
            log.info("front.queues_restored", sessions=len(lengths), messages=sum(lengths.values()))
        for sid in lengths:
            self.kick(sid)
