"""The front's runtime: sessions' viewers, running turns, and their actors.

The front holds nothing that only it knows for good: the turn's events and
replay buffer live in the actor, results go to the store. It routes: a
message starts a turn in the session's actor, the actor's events go to every
viewer of the session, a reconnecting viewer gets the actor's replay, and a
turn's end is made durable before any viewer sees it. When the store cannot
write it (a full disk), the turn ends with ``store_error`` all the same and
:mod:`navi_actor.front.storekeeper` keeps the result and retries it.

The parts it routes between have modules of their own: which actor serves a
session (:mod:`~navi_actor.front.actorset`), the stop ladder's timers
(:mod:`~navi_actor.front.stopping`, deciding with :mod:`navi_actor.stopladder`),
how a dead actor's turn ends (:mod:`~navi_actor.front.deaths`), the
supervisor's messages (:mod:`~navi_actor.front.supervision`) and a new
front's adoption of running actors (:mod:`~navi_actor.front.adoption`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Awaitable, Callable, TypeVar

import orjson

from navi_actor import logs, protocol, stopladder
from navi_actor.config import Config
from navi_actor.events import RESERVED_TYPES
from navi_actor.front import deaths, resume, turns
from navi_actor.front.actors import ActorHandle
from navi_actor.front.adoption import Adoption
from navi_actor.front.actorset import ActorSet
from navi_actor.front.elsewhere import BusyElsewhere
from navi_actor.front.link import SupervisorLink
from navi_actor.front.metrics import Metrics
from navi_actor.front.queueing import Queueing
from navi_actor.front.runs import Run, RunViewer
from navi_actor.front.stopping import StopTimers
from navi_actor.front.storekeeper import StoreKeeper
from navi_actor.front.storeq import StoreQueue
from navi_actor.front.supervision import Supervision
from navi_actor.front.viewer import Viewer
from navi_actor.protocol import ClientError, UserMessage
from navi_actor.store import SessionBusy, SessionNotFound, SessionStore, StoreError, StoreFailure
from supervisor.fdchannel import FdChannel

log = logs.get("navi.front")
#: Tells an idle actor that a turn for it is being saved (see Actor._expect).
_EXPECT = {"op": "expect"}
T = TypeVar("T")

CHECKPOINT_EVERY = 1.0  # seconds between saves of running turns' partial text


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
        self.actor_set = ActorSet(self.loop, config, self.link, self, self._watch)  # front/actorset.py
        self.actors = self.actor_set.by_session  # session id → its live actor
        self.actors_by_id = self.actor_set.by_id
        self.stop_timers = StopTimers(self.loop, config, self._signal)  # the ladder's signals (front/stopping.py)
        self.shutting_down = False
        self.shutdown_requested = asyncio.Event()
        self.drain = True
        self._ticker = self.loop.create_task(self._tick_forever())
        self._last_checkpoint = time.monotonic()
        self.adoption = Adoption(self)  # the actors a former front started (front/adoption.py)
        self.reconciled = self.adoption.reconciled  # set once turns may start
        self.metrics = Metrics()
        self.metrics.bind(self)
        self._turns_saving = 0  # turns whose message the store thread is saving
        self.events_forwarded = 0
        self.bytes_forwarded = 0
        self.replays_served = 0
        self.sandbox_failures = 0  # actors whose sandbox failed (their fatal said sandbox_failed)
        #: session id → its owner (user id), set by the HTTP layer when a viewer connects; for push_status.
        self.session_owners: dict[str, str] = {}
        self.queueing = Queueing(self)  # messages sent while a turn runs (front/queueing.py)
        self.queue_lengths = self.queueing.lengths
        self.supervision = Supervision(self.loop, self.link, self.actor_set, self.viewers, self.session_owners,
                                       self.queueing.lengths)
        self.store_keeper = StoreKeeper(self)  # while the store cannot write (navi_actor.front.storekeeper)
        self.cluster: Any = None  # front.cluster.FrontCluster, with a store several nodes share
        self.relay: Any = None  # front.relay.Relay, with a cluster secret too: turns of other nodes relayed
        self.loop.call_soon(lambda: self.loop.create_task(self.adoption.reconcile()))

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
                self.actor_set.prebind(viewer.session_id)  # its first turn skips the handover
            return
        self.join(viewer, run, after)

    def resumed(self, viewer: RunViewer, last_seq: int | None) -> None:
        """The viewer has what the actor kept of the ended turn (``last_seq``, or None: not
        that turn): it follows the turn started meanwhile, or is told to sync."""
        if viewer.closed:
            return
        run = self.runs.get(viewer.session_id)
        if run is not None and viewer.run is None:
            self.join(viewer, run, last_seq if last_seq is not None else viewer.resume_after)
        else:
            viewer.send(protocol.session_sync(last_seq))

    def join(self, viewer: RunViewer, run: Run, after: int | None) -> None:
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
        self.unlist(viewer)
        run = viewer.run
        if run is not None:
            run.viewers.discard(viewer)
            run.pending_replays.pop(viewer.id, None)

    def unlist(self, viewer: Viewer) -> None:
        """The viewer is no longer this node's (it left, or another node serves it now); the
        session's last one takes a prebound actor along (front/actorset.py)."""
        peers = self.viewers.get(viewer.session_id)
        if peers is not None:
            peers.discard(viewer)
            if not peers:
                del self.viewers[viewer.session_id]
                self.actor_set.release_prebound(viewer.session_id)

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
        self.actor_set.make_room(sid)
        await self.launch(Run(uuid.uuid4().hex, sid), viewer, turns.begin_turn, message)

    async def launch(self, run: Run, viewer: Viewer | None, begin: Callable[..., turns.Begun], *args: Any) -> None:
        """Save the turn's message (``begin`` on the store's thread), then start it in the
        session's actor; ``viewer`` sent it (None: it was queued). Raises ClientError."""
        sid = run.session_id
        try:
            # The store thread gets the message first; then the actor is asked for, and a
            # warm one is handed over while the message is being made durable (an fsync).
            # (Asked first, the supervisor's wake-up took the CPU before the store had it.)
            stored = self.store_queue.submit(begin, self.store_backend, sid, run.run_id, *args)
        except StoreError as exc:
            raise turns.not_saved(sid, exc) from None
        self.runs[sid] = run
        prior = self.actor_set.by_session.get(sid)
        was_prebound = prior is not None and prior.prebound
        actor = self.actor_set.for_session(sid)
        if self._turns_saving == 0 and actor.run is None and actor.hello.is_set() and self.config.turn_poll_ms:
            # The only turn starting: its actor polls for it while the commit runs, so it
            # does not have to be woken (0.1-0.25 ms on a VM) when the turn is sent.
            actor.send(_EXPECT)
        for peer in self.viewers.get(sid, ()):
            if (peer.run is not None and peer.run is not run) or peer.resuming is not None:
                continue  # (a resuming one joins when it has the turn before: resumed())
            peer.run = run
            peer.needs_sync = peer is not viewer
            run.viewers.add(peer)
        try:
            base, history, message, run.run_id = await self._saved(stored)
        except (SessionNotFound, SessionBusy, StoreError) as exc:
            self._drop_run(run)
            if was_prebound and actor.run is None:
                actor.prebound = True  # no turn took it: it still goes when the last client leaves
            if isinstance(exc, SessionNotFound):
                raise ClientError(protocol.SESSION_NOT_FOUND, "Session not found") from None
            if isinstance(exc, SessionBusy):  # its turn runs on another node (a shared PostgreSQL store)
                log.info("front.busy_elsewhere", session_id=sid, node=exc.node)
                raise BusyElsewhere(exc.node) from None  # already_running, or queued there (front/elsewhere.py)
            raise turns.not_saved(sid, exc) from None
        start = protocol.stream_start(base + 1, run.run_id)
        run.first_seq = run.last_seq = run.checkpointed_seq = base + 1
        if not actor.alive or actor.retiring:  # it died during the commit
            actor = self.actor_set.for_session(sid)
        run.actor = actor
        actor.run = run
        # The actor first: it wakes while stream_start is written and the line logged. Its
        # first event is read by this loop, so viewers still get stream_start before it.
        actor.send(turns.turn_request(run.run_id, start, message, history, sid, self.uploads_dir / sid))
        if run.stop_requested_at is not None:
            actor.send({"op": "stop", "run_id": run.run_id, "reason": run.stop_reason})
        run.start_bytes = orjson.dumps(start)
        run.last_event_at = time.monotonic()
        run.broadcast(run.start_bytes, run.first_seq)
        log.info("front.turn_start", session_id=sid, run_id=run.run_id, queued=viewer is None)

    async def _saved(self, stored: Awaitable[turns.Begun]) -> turns.Begun:
        """``stored``, counted in ``_turns_saving`` while it is awaited."""
        self._turns_saving += 1
        try:
            return await stored
        finally:
            self._turns_saving -= 1

    def retire(self, actor: ActorHandle) -> None:
        """The actor takes no new turn and exits (front/actorset.py)."""
        self.actor_set.retire(actor)

    def _drop_run(self, run: Run) -> None:
        if self.runs.get(run.session_id) is run:
            del self.runs[run.session_id]
        self.stop_timers.cancel(run)
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
            self.stop_timers.start(run)
        return True

    def _signal(self, actor_id: str, sig: str) -> None:
        """Ask the supervisor to signal the actor's process group ("TERM", "KILL")."""
        self.link.send({"op": "signal", "actor_id": actor_id, "sig": sig})

    async def _finish(self, run: Run, final: dict[str, Any], result: dict[str, Any]) -> None:
        """Make the result durable, then show every viewer the end of the turn."""
        run.finishing = True
        sent = None  # the final event the viewers got, when it is not the actor's
        self.stop_timers.cancel(run)
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
            self.metrics.stops.labels(stopladder.counted_step(final.get("stop_step"))).inc()
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
        self.queueing.kick(run.session_id)  # the next queued message, if any, starts now;
        self.queueing.tick()  # and those another session's queue could not start (its actor is free now)

    # ── actors ────────────────────────────────────────────────────────────
    async def _watch(self, actor: ActorHandle) -> None:
        """Wait for the actor's end; explain it to its turn's viewers (front/deaths.py)."""
        await actor.wait_gone()
        self.actor_set.gone(actor)
        resume.release(self, actor)  # viewers waiting for its ended turn: told to sync
        actor.close()
        run = actor.run
        if run is None or run.finishing or run.ended.is_set():
            return
        run.last_seq += 1
        final, result = deaths.outcome(run, actor, run.last_seq, time.monotonic() - run.started_at)
        if result["status"] == "failed" and result["error_code"] == protocol.SANDBOX_FAILED:
            self.sandbox_failures += 1
        log.warning("front.actor_died", session_id=run.session_id, run_id=run.run_id, cause=actor.death_message())
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
                self.adoption.adopt_run(actor, msg["run"])
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

    def _on_supervisor(self, msg: dict[str, Any], chan: FdChannel) -> None:
        op = msg.get("op")
        if op == "adopt":
            self.adoption.adopt(msg["actor_id"], msg["pid"], msg["session_id"], chan.take_fd())
        elif op == "shutdown":
            self.request_shutdown(bool(msg.get("drain", True)))
        elif op == "reload":
            self.actor_set.retire_all()
        else:  # news of actors, status requests, control replies (front/supervision.py)
            self.supervision.on_message(op, msg, chan)

    async def control(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Ask the supervisor (list, status, stop, kill) and wait for its answer.

        Raises TimeoutError, or ConnectionError when the supervisor is gone.
        """
        return await self.supervision.control(request, timeout)

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
        self.actor_set.retire_idle(now)
        self.queueing.tick()  # queued messages left waiting (no actor free, the store failing)
        if now - self._last_checkpoint >= CHECKPOINT_EVERY:
            self._last_checkpoint = now
            self.supervision.push_status()
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
