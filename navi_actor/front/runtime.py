"""The front's runtime: sessions' viewers, running turns, and their actors.

The front holds nothing that only it knows for good: the turn's events and
replay buffer live in the actor, results go to the store. It routes: a
message starts a turn in the session's actor, the actor's events go to every
viewer of the session, a reconnecting viewer gets the actor's replay, and a
turn's end is made durable before any viewer sees it. When the store cannot
write it (a full disk), the turn ends with ``store_error`` all the same and
:mod:`navi_actor.front.storekeeper` keeps the result and retries it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any, Callable, TypeVar

import orjson

from navi_actor import logs, protocol
from navi_actor.config import Config
from navi_actor.events import RESERVED_TYPES
from navi_actor.front import resume
from navi_actor.front.actors import ActorHandle
from navi_actor.front.link import SupervisorLink
from navi_actor.front.metrics import Metrics
from navi_actor.front.runs import LOST_IN_RESTART, Run
from navi_actor.front.storekeeper import StoreKeeper
from navi_actor.front.storeq import StoreQueue
from navi_actor.front.viewer import Viewer
from navi_actor.protocol import ClientError, UserMessage
from navi_actor.store import SessionNotFound, SessionStore, StoreError, StoreFailure

log = logs.get("navi.front")
T = TypeVar("T")

CHECKPOINT_EVERY = 1.0  # seconds between saves of running turns' partial text
ADOPT_WAIT = 3.0  # seconds a new front waits for adopted actors to report their runs


def _not_saved(sid: str, exc: StoreError) -> ClientError:
    """The turn cannot start: its message could not be made durable. Logged here, told to the client."""
    log.error("front.store_failed", session_id=sid, error=str(exc))
    return ClientError(protocol.STORE_ERROR, f"Your message was not saved and no turn started: {exc}")


class Runtime:
    def __init__(self, config: Config, store: SessionStore, link_fd: int) -> None:
        self.config = config
        self.uploads_dir = config.data_path / "uploads"  # resolved once: resolve() costs a stat per component
        self.store_backend = store
        self.loop = asyncio.get_running_loop()
        self.store_queue = StoreQueue(store, self.loop)
        self.link = SupervisorLink(link_fd, self._on_supervisor, self._on_supervisor_lost)
        self.viewers: dict[str, set[Viewer]] = {}
        self.runs: dict[str, Run] = {}
        self.actors: dict[str, ActorHandle] = {}  # session id → its live actor
        self.actors_by_id: dict[str, ActorHandle] = {}
        self.shutting_down = False
        self.shutdown_requested = asyncio.Event()
        self.drain = True
        self._ticker = self.loop.create_task(self._tick_forever())
        self._last_checkpoint = time.monotonic()
        self.reconciled = asyncio.Event()
        self._adopted: list[ActorHandle] = []
        self.metrics = Metrics()
        self.metrics.bind(self)
        self.events_forwarded = 0
        self.bytes_forwarded = 0
        self.replays_served = 0
        self.sandbox_failures = 0  # actors whose sandbox failed (their fatal said sandbox_failed)
        self._control_seq = 0
        self._control_waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        #: session id → its owner (user id), set by the HTTP layer when a viewer connects; for push_status.
        self.session_owners: dict[str, str] = {}
        self.store_keeper = StoreKeeper(self)  # while the store cannot write (navi_actor.front.storekeeper)
        self.loop.call_soon(lambda: self.loop.create_task(self._reconcile()))

    async def store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the store's own thread, committed with the others waiting (group commit)."""
        return await self.store_queue.call(fn, *args, **kwargs)

    # ── viewers ───────────────────────────────────────────────────────────
    def attach(self, viewer: Viewer, after: int | None) -> None:
        """A client connected: replay the running turn, or the one that ended while it was
        away (front/resume.py), or tell it to sync."""
        self.viewers.setdefault(viewer.session_id, set()).add(viewer)
        viewer.resume_after = after
        run = self.runs.get(viewer.session_id)
        if run is None:
            if not resume.ask(self, viewer, after):
                viewer.send(protocol.SESSION_SYNC)
            return
        self._join(viewer, run, after)

    def resumed(self, viewer: Viewer, last_seq: int | None) -> None:
        """The viewer has what the actor kept of the ended turn (``last_seq``, or None: not
        that turn): it follows the turn started meanwhile, or is told to sync."""
        if viewer.closed:
            return
        run = self.runs.get(viewer.session_id)
        if run is not None and viewer.run is None:
            self._join(viewer, run, last_seq if last_seq is not None else viewer.resume_after)
        else:
            viewer.send(protocol.session_sync(last_seq))

    def _join(self, viewer: Viewer, run: Run, after: int | None) -> None:
        viewer.needs_sync = True
        viewer.run = run
        if run.start_bytes is None:  # nothing sent yet: it sees the whole turn live
            run.viewers.add(viewer)
            return
        assert run.actor is not None
        run.pending_replays[viewer.id] = viewer
        run.actor.send({"op": "replay", "viewer": viewer.id, "after": after})

    def detach(self, viewer: Viewer) -> None:
        viewer.detach()
        resume.forget(viewer)
        peers = self.viewers.get(viewer.session_id)
        if peers is not None:
            peers.discard(viewer)
            if not peers:
                del self.viewers[viewer.session_id]
        run = viewer.run
        if run is not None:
            run.viewers.discard(viewer)
            run.pending_replays.pop(viewer.id, None)

    def _on_replay(self, actor: ActorHandle, msg: dict[str, Any]) -> None:
        run = actor.run
        if run is None or msg.get("run_id") != run.run_id:
            return  # the turn ended, and the viewer was told to sync or asked for it again
        viewer = run.pending_replays.pop(msg["viewer"], None)
        if viewer is None:
            return  # the viewer left
        assert run.start_bytes is not None
        self.replays_served += 1
        viewer.send(run.start_bytes, run.first_seq)
        events = msg["events"]
        if events:
            viewer.send(protocol.replay_start(len(events), bool(msg.get("truncated")), msg.get("first_seq")))
            for ev in events:
                viewer.send(orjson.dumps(ev), ev["seq"])
            viewer.send(protocol.REPLAY_END)
        run.viewers.add(viewer)

    # ── turns ─────────────────────────────────────────────────────────────
    async def start_turn(self, viewer: Viewer, message: UserMessage) -> None:
        """Start a turn for the viewer's session; raise ClientError when refused."""
        sid = viewer.session_id
        await self.reconciled.wait()
        if self.shutting_down:
            raise ClientError(protocol.SHUTTING_DOWN, "Server is shutting down; try again in a moment.")
        if sid in self.runs:
            raise ClientError(protocol.ALREADY_RUNNING, "Agent is already running for this session.")
        self.store_keeper.refuse_if_cannot_write(sid)
        self._make_room(sid)
        run = Run(uuid.uuid4().hex, sid)
        try:
            # The store thread gets the message first; then the actor is asked for, and a
            # warm one is handed over while the message is being made durable (an fsync).
            # (Asked first, the supervisor's wake-up took the CPU before the store had it.)
            stored = self.store_queue.submit(self._begin, sid, run.run_id, message)
        except StoreError as exc:
            raise _not_saved(sid, exc) from None
        self.runs[sid] = run
        actor = self._actor_for(sid)
        for peer in self.viewers.get(sid, ()):
            if (peer.run is not None and peer.run is not run) or peer.resuming is not None:
                continue  # (a resuming one joins when it has the turn before: resumed())
            peer.run = run
            peer.needs_sync = peer is not viewer
            run.viewers.add(peer)
        try:
            base, history = await stored
        except SessionNotFound:
            self._drop_run(run)
            raise ClientError(protocol.SESSION_NOT_FOUND, "Session not found") from None
        except StoreError as exc:
            self._drop_run(run)
            raise _not_saved(sid, exc) from None
        start = protocol.stream_start(base + 1, run.run_id)
        run.first_seq = run.last_seq = run.checkpointed_seq = base + 1
        run.start_bytes = orjson.dumps(start)
        run.last_event_at = time.monotonic()
        run.broadcast(run.start_bytes, run.first_seq)
        log.info("front.turn_start", session_id=sid, run_id=run.run_id)
        if not actor.alive or actor.retiring:  # it died during the commit
            actor = self._actor_for(sid)
        run.actor = actor
        actor.run = run
        actor.send(
            {
                "op": "turn",
                "run_id": run.run_id,
                "start": start,
                "turn": {
                    "session_id": sid,
                    "content": message.content,
                    "display_content": message.display_content,
                    "images": message.images,
                    "files": message.files,
                    "history": history,
                    "upload_dir": str(self.uploads_dir / sid),
                },
            }
        )
        if run.stop_requested_at is not None:
            actor.send({"op": "stop", "run_id": run.run_id, "reason": run.stop_reason})

    def _make_room(self, sid: str) -> None:
        """Keep at most --max-actors: evict the longest-idle actor, or refuse when all are busy."""
        current = self.actors.get(sid)
        if current is not None and current.alive and not current.retiring:
            return
        if len(self.actors_by_id) < self.config.max_actors:
            return  # the common case, without a pass over every actor
        live = [a for a in self.actors_by_id.values() if a.alive and not a.retiring]
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
        actor.retiring = True
        if self.actors.get(actor.session_id) is actor:
            del self.actors[actor.session_id]
        actor.send({"op": "shutdown"})

    def _begin(self, sid: str, run_id: str, message: UserMessage) -> tuple[int, list[dict[str, Any]]]:
        history = self.store_backend.history(sid)
        base = self.store_backend.begin_run(
            sid,
            run_id,
            content=message.display_content,
            agent_content=message.content,
            images=len(message.images),
            files=message.files,
        )
        return base, history

    def _drop_run(self, run: Run) -> None:
        if self.runs.get(run.session_id) is run:
            del self.runs[run.session_id]
        for timer in run.ladder:
            timer.cancel()
        last_seq = run.last_seq if run.finishing else None  # its final event's, once it ended
        for viewer in list(run.viewers) + list(run.pending_replays.values()):
            if viewer.run is run:
                viewer.run = None
            if viewer.needs_sync:
                viewer.needs_sync = False
                if viewer.id in run.pending_replays and last_seq is not None:
                    # It ended before the actor's replay came: ask again (after `persisted`).
                    if resume.ask(self, viewer, viewer.resume_after):
                        continue
                viewer.send(protocol.session_sync(last_seq))
        run.viewers.clear()
        run.pending_replays.clear()
        if run.actor is not None and run.actor.run is run:
            run.actor.run = None
            run.actor.idle_since = time.monotonic()
        run.ended.set()

    def stop(self, session_id: str, reason: dict[str, str] | None = None) -> bool:
        """Ask the running turn to stop; False when none runs. Idempotent.

        ``reason`` (``{code, message}``) when a limit, not a user, stops it.
        """
        run = self.runs.get(session_id)
        if run is None or run.finishing:
            return False
        if run.stop_requested_at is None:
            run.stop_requested_at = time.monotonic()
            run.stop_reason = reason
            log.info("front.stop", session_id=session_id, run_id=run.run_id, reason=reason and reason["code"])
            if run.actor is not None:
                run.actor.send({"op": "stop", "run_id": run.run_id, "reason": reason})
            cfg = self.config
            run.ladder = [
                self.loop.call_later(cfg.stop_term_after, self._escalate, run, "TERM"),
                self.loop.call_later(cfg.stop_term_after + cfg.stop_kill_after, self._escalate, run, "KILL"),
            ]
        return True

    def _escalate(self, run: Run, sig: str) -> None:
        if run.finishing or run.ended.is_set() or run.actor is None:
            return
        run.stop_step = "sigterm" if sig == "TERM" else "sigkill"
        log.warning("front.stop_escalate", session_id=run.session_id, run_id=run.run_id, step=run.stop_step)
        self.link.send({"op": "signal", "actor_id": run.actor.actor_id, "sig": sig})

    async def _finish(self, run: Run, final: dict[str, Any], result: dict[str, Any]) -> None:
        """Make the result durable, then show every viewer the end of the turn."""
        run.finishing = True
        sent = None  # the final event the viewers got, when it is not the actor's
        for timer in run.ladder:
            timer.cancel()
        saved = {
            "status": result["status"],
            "content": result["content"],
            "tool_calls": result.get("tool_calls") or [],
            "thinking": result.get("thinking") or "",
            "error": result.get("error"),
            "error_code": result.get("error_code"),
            "stats": result.get("stats"),
        }
        kept = False
        try:
            await self.store(self.store_backend.finish_run, run.run_id, last_seq=final["seq"], **saved)
        except StoreFailure as exc:  # the database cannot write: the keeper keeps the result and retries
            final, kept = self.store_keeper.keep(run, final, saved, exc), True
        except StoreError as exc:
            log.error("front.finish_failed", run_id=run.run_id, error=str(exc))
            final = protocol.error_event(f"The answer could not be saved: {exc}", protocol.STORE_ERROR,
                                         final["seq"], run_id=run.run_id)
            sent = final
        except Exception as exc:  # never leave the turn without an end for its viewers
            log.exception("front.finish_failed", run_id=run.run_id)
            final = protocol.error_event(f"The answer could not be saved: {exc!r}", protocol.STORE_ERROR,
                                         final["seq"], run_id=run.run_id)
            sent = final
        run.broadcast(orjson.dumps(final), final["seq"])
        now = time.monotonic()
        self.metrics.turns.labels(result["status"]).inc()
        if final["type"] == "stream_stopped":  # every stop counted is timed, from its first request
            self.metrics.stops.labels(final.get("stop_step", "event")).inc()
            asked = min((t for t in (run.stop_requested_at, run.operator_stop_at) if t is not None), default=None)
            self.metrics.stop_latency.observe(now - asked if asked is not None else 0.0)  # 0: the agent stopped itself
        log.info(
            "front.turn_end", session_id=run.session_id, run_id=run.run_id, outcome=result["status"],
            seconds=round(time.monotonic() - run.started_at, 3), stop_step=final.get("stop_step"),
        )
        actor = run.actor
        if actor is not None and actor.alive and not kept:  # a kept result's actor keeps its turn_done
            # The actor keeps the turn for late resumes, ending with what the viewers got.
            actor.send({"op": "persisted", "run_id": run.run_id, **({"final": sent} if sent else {})})
        self._drop_run(run)
        if actor is not None and actor.retiring and actor.alive:
            actor.send({"op": "shutdown"})

    # ── a new front adopts running actors ─────────────────────────────────
    async def _reconcile(self) -> None:
        """Wait for adopted actors to report their runs; interrupt runs nobody has.

        A turn that was running when the previous front died either lives on
        in its actor (adopted here, with its replay buffer) or is gone with it;
        the store must not keep the latter "running".
        """
        await asyncio.sleep(0)  # let the supervisor's adopt messages arrive first
        for actor in list(self._adopted):
            await actor.wait_hello_or_gone(ADOPT_WAIT)
        keep = [run.run_id for run in self.runs.values()]
        try:
            lost = await self.store(self.store_backend.recover_interrupted, LOST_IN_RESTART, keep=keep)
        except StoreError as exc:
            log.error("front.reconcile_failed", error=str(exc))
            self.store_keeper.recover_pending = isinstance(exc, StoreFailure)  # the keeper retries it
            lost = []
        if self._adopted or lost:
            log.info("front.adopted", actors=len(self._adopted), runs=len(keep), interrupted=len(lost))
        self._adopted.clear()
        self.reconciled.set()

    def _adopt(self, actor_id: str, pid: int, session_id: str, fd: int) -> None:
        actor = ActorHandle(actor_id, session_id, self)
        self.actors_by_id[actor_id] = actor
        current = self.actors.get(session_id)
        if current is None or not current.alive:
            self.actors[session_id] = actor
        if not self.reconciled.is_set():
            self._adopted.append(actor)
        actor.take_channel(fd, pid)
        self.loop.create_task(self._watch(actor))

    def _adopt_run(self, actor: ActorHandle, state: dict[str, Any]) -> None:
        """Rebuild the front's view of a turn an adopted actor is running."""
        sid = actor.session_id
        if sid in self.runs:
            return self.on_actor_violation(actor, "reported a run for a session that has another")
        run = Run(state["run_id"], sid)
        start = state["start"]
        run.first_seq = start["seq"]
        run.last_seq = run.checkpointed_seq = state["last_seq"]
        run.text = [state["text"]]
        run.start_bytes = orjson.dumps(start)
        run.actor = actor
        actor.run = run
        self.runs[sid] = run
        if state["stopping"]:
            run.stop_requested_at = None
            self.stop(sid)
        log.info("front.run_adopted", session_id=sid, run_id=run.run_id, last_seq=run.last_seq,
                 done=state["done"])

    # ── actors ────────────────────────────────────────────────────────────
    def _actor_for(self, sid: str) -> ActorHandle:
        actor = self.actors.get(sid)
        if actor is not None and actor.alive and not actor.retiring:
            return actor
        actor = ActorHandle(uuid.uuid4().hex[:16], sid, self)
        actor.requested_at = time.monotonic()
        self.actors[sid] = actor
        self.actors_by_id[actor.actor_id] = actor
        self.link.send({"op": "spawn", "actor_id": actor.actor_id, "session_id": sid})
        self.loop.create_task(self._watch(actor))
        return actor

    async def _watch(self, actor: ActorHandle) -> None:
        """Wait for the actor's end; explain it to its turn's viewers."""
        await actor.wait_gone()
        self.actors_by_id.pop(actor.actor_id, None)
        if self.actors.get(actor.session_id) is actor:
            del self.actors[actor.session_id]
        resume.release(self, actor)  # viewers waiting for its ended turn: told to sync
        actor.close()
        run = actor.run
        if run is None or run.finishing or run.ended.is_set():
            return
        message = actor.death_message()
        run.last_seq += 1
        content = "".join(run.text)
        if run.stop_requested_at is not None and not actor.violation:
            step = run.stop_step or "sigterm"
            final = protocol.stream_stopped(run.last_seq, run.run_id, step, content, run.stop_reason)
            status = "stopped"
            error = run.stop_reason["message"] if run.stop_reason else None
            code = run.stop_reason["code"] if run.stop_reason else None
        else:
            code = (
                protocol.ACTOR_PROTOCOL_VIOLATION if actor.violation
                else str(actor.fatal.get("code", protocol.ACTOR_DIED)) if actor.fatal
                else str((actor.exit or {}).get("code") or protocol.ACTOR_DIED)
            )
            final = protocol.error_event(message, code, run.last_seq, run_id=run.run_id)
            status, error = "failed", message
            if code == protocol.SANDBOX_FAILED:
                self.sandbox_failures += 1
        log.warning("front.actor_died", session_id=run.session_id, run_id=run.run_id, cause=message)
        stats: dict[str, Any] = {"elapsed_seconds": round(time.monotonic() - run.started_at, 3)}
        if status == "stopped":
            stats["stop_step"] = final["stop_step"]
        result = {"status": status, "content": content, "error": error, "error_code": code, "stats": stats,
                  "tool_calls": protocol.tool_calls_seen(run.tool_events)}
        await self._finish(run, final, result)

    def on_actor_event(self, actor: ActorHandle, event: dict[str, Any], payload: bytes) -> None:
        run = actor.run
        seq = event["seq"]
        if run is None or run.finishing:
            return self.on_actor_violation(actor, "event outside a turn")
        if seq != run.last_seq + 1:
            return self.on_actor_violation(actor, f"seq {seq} does not follow {run.last_seq}")
        if event["type"] in RESERVED_TYPES:
            return self.on_actor_violation(actor, f"event type {event['type']!r} is the runtime's")
        run.last_seq = seq
        now = time.monotonic()
        if not run.events:
            self.metrics.first_event.observe(now - run.started_at)
        run.events += 1
        run.last_event_at = now
        self.events_forwarded += 1
        self.bytes_forwarded += len(payload) * len(run.viewers)
        kind = event["type"]
        if kind == "stream_delta":
            delta = event.get("delta")
            if type(delta) is str:
                run.text.append(delta)
        elif kind == "tool_started" or kind == "tool_call":
            run.tool_events.append(event)
        delta = event.get("delta") if len(event) == 3 and event["type"] == "stream_delta" else None
        for viewer in run.viewers:
            viewer.send(payload, seq, delta if type(delta) is str else None)

    def on_actor_control(self, actor: ActorHandle, msg: dict[str, Any]) -> None:
        op = msg["op"]
        run = actor.run
        if op == "turn_done":
            if run is None or run.finishing or msg["run_id"] != run.run_id:
                return self.on_actor_violation(actor, "turn_done for no running turn")
            if msg["final"]["seq"] != run.last_seq + 1:
                return self.on_actor_violation(actor, "turn_done seq does not follow the events")
            run.last_seq = msg["final"]["seq"]
            self.loop.create_task(self._finish(run, msg["final"], msg["result"]))
        elif op == "replay":
            self._on_replay(actor, msg)
        elif op == "replay_ended":
            resume.answer(self, actor, msg)
        elif op == "fatal":
            log.error("front.actor_fatal", actor_id=actor.actor_id, message=msg["message"])
            actor.fatal = msg
        elif op == "hello":
            log.info("front.actor_attached", actor_id=actor.actor_id, actor_pid=msg["pid"],
                     session_id=actor.session_id)
            if msg.get("run") is not None and run is None:
                self._adopt_run(actor, msg["run"])
            elif actor.requested_at is not None:
                self.metrics.actor_start.observe(time.monotonic() - actor.requested_at)
            actor.hello.set()
        elif op == "rejected":
            # Cannot happen with our actor; a foreign one is treated as broken.
            self.on_actor_violation(actor, f"refused a turn ({msg['code']})")

    def on_actor_violation(self, actor: ActorHandle, reason: str) -> None:
        if actor.violation:
            return
        actor.violation = reason
        log.error("front.actor_protocol_violation", actor_id=actor.actor_id, session_id=actor.session_id,
                  reason=reason)
        self.link.send({"op": "signal", "actor_id": actor.actor_id, "sig": "KILL"})

    def _on_supervisor(self, msg: dict[str, Any], chan: Any) -> None:
        op = msg.get("op")
        if op == "spawned":
            fd = chan.take_fd()
            actor = self.actors_by_id.get(msg["actor_id"])
            if actor is None:
                os.close(fd)
                return
            actor.take_channel(fd, msg["pid"])
        elif op == "adopt":
            self._adopt(msg["actor_id"], msg["pid"], msg["session_id"], chan.take_fd())
        elif op == "spawn_failed":
            actor = self.actors_by_id.get(msg["actor_id"])
            if actor is not None:
                actor.fatal = {"code": protocol.AGENT_FAILED_TO_START,
                               "message": f"could not start the agent process: {msg.get('message')}"}
                actor.note_exit({"message": msg.get("message")})
        elif op == "exit":
            actor = self.actors_by_id.get(msg["actor_id"])
            if actor is not None:
                actor.note_exit(msg)
        elif op == "status_request":  # an operator lists actors: answer as of now
            self.push_status()
        elif op == "operator_stop":
            actor = self.actors_by_id.get(msg.get("actor_id"))
            run = actor.run if actor is not None else None
            if run is not None and run.operator_stop_at is None:
                run.operator_stop_at = time.monotonic()
        elif op == "control_reply":
            waiter = self._control_waiting.pop(msg.get("req"), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg.get("reply") or {})
        elif op == "shutdown":
            self.request_shutdown(bool(msg.get("drain", True)))
        elif op == "reload":
            self.retire_all()

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
        for actor in self.actors_by_id.values():
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
                "owner": self.session_owners.get(actor.session_id),
            }
        self.link.send({"op": "status", "actors": actors})

    def retire_all(self) -> None:
        """New agent code (SIGHUP): idle actors exit now, busy ones after their turn."""
        n = 0
        for actor in list(self.actors_by_id.values()):
            if not actor.retiring:
                n += 1
                if actor.run is None:
                    self.retire(actor)
                else:
                    actor.retiring = True
                    if self.actors.get(actor.session_id) is actor:
                        del self.actors[actor.session_id]
        log.info("front.reload", actors_retired=n)

    def _on_supervisor_lost(self) -> None:
        self.request_shutdown(drain=False)

    # ── periodic work ─────────────────────────────────────────────────────
    async def _tick_forever(self) -> None:
        period = min(1.0, self.config.heartbeat_interval / 2)
        while True:
            await asyncio.sleep(period)
            try:
                await self._tick()
            except Exception:
                log.exception("front.tick_failed")

    async def _tick(self) -> None:
        now = time.monotonic()
        cfg = self.config
        for run in list(self.runs.values()):
            if run.start_bytes is not None and now - run.last_event_at >= cfg.heartbeat_interval:
                run.last_event_at = now
                run.broadcast(protocol.HEARTBEAT)
            if now - run.started_at >= cfg.turn_timeout and run.stop_requested_at is None:
                limit = f"{cfg.turn_timeout:g} s"
                self.stop(run.session_id, {
                    "code": protocol.TURN_TIMEOUT,
                    "message": f"The turn ran longer than its wall-time limit of {limit} and was stopped.",
                })
        for actor in list(self.actors.values()):
            if actor.run is None and not actor.retiring and now - actor.idle_since >= cfg.idle_timeout:
                log.info("front.actor_idle_exit", actor_id=actor.actor_id, session_id=actor.session_id)
                self.retire(actor)
        if now - self._last_checkpoint >= CHECKPOINT_EVERY:
            self._last_checkpoint = now
            self.push_status()
            items = []
            for run in self.runs.values():
                if run.last_seq > run.checkpointed_seq and not run.finishing:
                    run.checkpointed_seq = run.last_seq
                    text = "".join(run.text)
                    run.text = [text]
                    items.append((run.run_id, text, run.last_seq))
            if items:
                try:
                    await self.store(self.store_backend.checkpoint_runs, items)
                except StoreError as exc:
                    log.warning("front.checkpoint_failed", runs=len(items), error=str(exc))
                    for run in self.runs.values():  # written again at the next checkpoint
                        run.checkpointed_seq = min(run.checkpointed_seq, run.first_seq)
        self.store_keeper.tick()

    # ── shutdown ──────────────────────────────────────────────────────────
    def request_shutdown(self, drain: bool = True) -> None:
        if not drain:
            self.drain = False
        self.shutting_down = True
        self.shutdown_requested.set()

    async def shutdown(self) -> None:
        """Refuse new turns, let running ones finish (drain), stop the rest, close."""
        cfg = self.config
        if self.drain and self.runs:
            log.info("front.draining", runs=len(self.runs), timeout=cfg.drain_timeout)
            await self._wait_runs(cfg.drain_timeout, until_no_drain=True)
        if self.runs:
            log.info("front.stopping_runs", runs=len(self.runs))
            for sid in list(self.runs):
                self.stop(sid)
            await self._wait_runs(cfg.stop_term_after + cfg.stop_kill_after + 2.0)
        for viewers in list(self.viewers.values()):
            for viewer in list(viewers):
                await viewer.flush_and_close(1001, "server shutting down")
        for actor in list(self.actors_by_id.values()):
            actor.send({"op": "shutdown"})
        self._ticker.cancel()
        self.link.close()
        await self.store_keeper.close()
        await self.store_queue.close()

    async def _wait_runs(self, timeout: float, until_no_drain: bool = False) -> None:
        deadline = self.loop.time() + timeout
        while self.runs and self.loop.time() < deadline:
            if until_no_drain and not self.drain:
                return
            waits = [asyncio.ensure_future(r.ended.wait()) for r in self.runs.values()]
            waits.append(asyncio.ensure_future(self._drain_cancelled()))
            await asyncio.wait(waits, timeout=deadline - self.loop.time(), return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    async def _drain_cancelled(self) -> None:
        while self.drain:
            self.shutdown_requested.clear()
            await self.shutdown_requested.wait()
