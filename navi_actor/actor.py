"""The actor process: one session's agent, its replay buffer and its stop event.

An actor is forked by the supervisor with one end of a socketpair; the front
holds the other end. It runs on uvloop and serves one turn at a time:

front → actor: ``turn``, ``stop``, ``replay``, ``replay_ended``, ``persisted``,
``shutdown``
actor → front: ``hello``, events (``E`` frames), ``turn_done``, ``replay``,
``replay_ended``, ``fatal`` (the agent could not start), ``rejected``.

If the front dies, the actor carries on: events go to the replay buffer, the
turn's end waits, and when the supervisor hands over a channel to the new
front (through the actor's lifeline) the actor says ``hello`` with its run's
state and re-sends a ``turn_done`` not yet acknowledged. When the lifeline
reaches end of file the supervisor is gone, and the actor kills its whole
process group, the agent's own child processes included.

A turn's events are encoded to JSON once, here; the front forwards those bytes.
The final event (``stream_end``/``stream_stopped``/``error``) travels inside
``turn_done`` with the result, so the front can make the result durable before
any viewer sees the end. When the front says ``persisted``, the run is
over for the front; the actor keeps only its replay buffer, with that final
event at its end (:class:`~navi_actor.replay.EndedTurn`, within ``--replay-max-bytes``), so that a
client that was away when the turn ended can still resume it with
``?after=SEQ``. It is kept until the session's next turn starts or the actor
exits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any, AsyncIterator, Callable

import orjson
import structlog

from navi_actor import framing, logs, protocol
from navi_actor.agent_loader import AgentSpec
from navi_actor.channel import Channel
from navi_actor.config import Config
from navi_actor.events import FINISH_REASONS, AgentError, StreamEnd, TextDelta, event_to_wire
from navi_actor.lifeline import read_on_loop as read_lifeline_on_loop
from navi_actor.lifeline import start_thread as start_lifeline_thread
from navi_actor.replay import EndedTurn, ReplayBuffer
from navi_actor.sandbox import policy
from navi_actor.turn import Turn, current_stop_event
from supervisor import proctitle

EXIT_OK = 0
EXIT_AGENT_FAILED = 3  # the agent factory raised: the supervisor must not respawn in a loop
EXIT_UNCAUGHT = 70  # a BaseException escaped the agent
EXIT_SANDBOX_FAILED = 4  # the sandbox could not be applied: no agent code ran under it

_JSON_OPTS = orjson.OPT_NON_STR_KEYS
_dumps = orjson.dumps  # a text delta needs no fallback: str, str, int

log = logs.get("navi.actor")


def _give_back_memory() -> None:
    """Between turns an actor may idle for long: free the turn's cycles now (an agent's
    exception with its traceback, say), not at some later allocation."""
    import gc

    gc.collect()


def _finish_reason(reason: Any) -> str | None:
    """The agent's finish reason as ``stream_end`` carries it: one of FINISH_REASONS, or null."""
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "unknown"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> bytes:
    """JSON for the wire; objects JSON cannot hold become their ``str``."""
    return orjson.dumps(obj, default=_json_default, option=_JSON_OPTS)


def _with_events(head: dict[str, Any], events: list[bytes]) -> bytes:
    """``head`` as JSON with an ``events`` list of already-encoded events (their bytes, not re-encoded)."""
    return dumps(head)[:-1] + b',"events":[' + b",".join(events) + b"]}"


class _Run:
    __slots__ = (
        "run_id", "seq", "start", "buffer", "stop_event", "task", "text", "thinking",
        "tool_calls", "end", "t0", "cancelled", "grace_timer", "done", "done_frame", "stop_reason",
    )

    def __init__(self, run_id: str, start: dict[str, Any], max_bytes: int) -> None:
        self.run_id = run_id
        self.start = start
        self.seq: int = start["seq"]
        self.buffer = ReplayBuffer(max_bytes)
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.end: StreamEnd | None = None
        self.t0 = time.monotonic()
        self.cancelled = False
        self.grace_timer: asyncio.TimerHandle | None = None
        self.done = False
        self.done_frame: bytes | None = None  # turn_done, kept until the front says persisted
        self.stop_reason: dict[str, str] | None = None  # why the runtime stopped it, if not the user


class Actor:
    """Serve turns for one session until told to shut down or the front goes."""

    def __init__(self, spec: AgentSpec, config: Config, actor_id: str, session_id: str,
                 sock: socket.socket) -> None:
        self.spec = spec
        self.config = config
        self.actor_id = actor_id
        self.session_id = session_id
        self.sock = sock
        self.run: _Run | None = None
        self.ended: EndedTurn | None = None  # the last turn, finished and persisted, for late resumes
        self.runner: Callable[[Turn], AsyncIterator[Any]] | None = None
        self.channel: Channel | None = None
        self._closing = False
        self.lifeline: socket.socket | None = None
        self.lifeline_reader: Any = None
        self.plan: policy.Plan = policy.current()
        # A warm actor is confined once it learns its session; until then its turns wait.
        self.confined = not self.plan.on or bool(session_id)
        self.sandbox_error: str | None = None  # why the sandbox failed at the actor's start
        self._pending_turn: dict[str, Any] | None = None

    titled = True  # False for prewarm's rehearsal: the template process keeps its own title

    def _title(self, state: str) -> None:
        """``navi-actor: actor SESSION STATE`` in ps/top: on state changes only (warm, idle, running, stopping, exiting)."""
        if self.titled:
            proctitle.set_title(proctitle.actor_title(self.session_id, state), comm=b"navi-actor")

    async def serve(self) -> int:
        self._title("idle" if self.session_id else "warm")
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.finished = loop.create_future()
        await self._connect(self.sock)
        # Only now: an assign read from the lifeline needs the channel to answer on.
        if self.lifeline is None:  # the template's rehearsal has none
            pass
        elif self.confined:
            start_lifeline_thread(self, loop)
        else:
            read_lifeline_on_loop(self, loop)
        # A warm actor makes its agent once it is confined (see assign), so that
        # whatever the factory starts (threads, clients) is confined too.
        if self.confined and not self._make_runner():
            self._close_channel()
            return EXIT_AGENT_FAILED
        self._hello()
        code = await self.finished
        await self._close_agent()
        self._close_channel()
        return code

    def _make_runner(self) -> bool:
        """Call the agent's factory (once per actor); on failure, tell the front and the supervisor."""
        try:
            self.runner = self.spec.make_runner()
            return True
        except Exception as exc:
            log.error("actor.agent_failed_to_start", agent=self.spec.target, error=repr(exc))
            fatal = framing.control(
                {
                    "op": "fatal",
                    "code": protocol.AGENT_FAILED_TO_START,
                    "message": f"agent {self.spec.name} failed to start: {type(exc).__name__}: {exc}",
                }
            )
            self._tell_supervisor(fatal)
            self._send(fatal)
            return False

    async def _close_agent(self) -> None:
        """Await the factory object's ``aclose()``, if it has one (orderly exits only)."""
        aclose = getattr(getattr(self.runner, "__self__", None), "aclose", None)
        if aclose is None:
            return
        try:
            await asyncio.wait_for(aclose(), 5.0)
        except Exception:
            log.exception("actor.agent_aclose_failed")

    def _tell_supervisor(self, frame: bytes) -> None:
        """Leave a last word on the lifeline: the supervisor reads it when it reaps us,
        so the cause reaches the front with the exit notice even if our pipe's data
        cannot be read there (the front may write to us just as we close)."""
        if self.lifeline is not None:
            try:
                self.lifeline.sendall(frame)
            except OSError:
                pass

    async def _connect(self, sock: socket.socket) -> None:
        # Its flusher thread may start only once the actor is confined (the sandbox
        # confines the thread that applies it); until then the loop drains it.
        self.channel = Channel(self.loop, sock, self.on_message, self.on_channel_lost,
                               allow_thread=self.confined)

    def _hello(self) -> None:
        """Introduce this actor (and its run, if any) to the front on the channel."""
        run = self.run
        state = None
        if run is not None:
            state = {
                "run_id": run.run_id,
                "start": run.start,
                "last_seq": run.seq if not run.done else run.seq - 1,
                "done": run.done,
                "stopping": run.stop_event.is_set(),
                "text": "".join(run.text),
            }
        hello = {"op": "hello", "pid": os.getpid(), "actor_id": self.actor_id,
                 "session_id": self.session_id, "run": state}
        self._send(framing.control(hello))
        if run is not None and run.done_frame is not None:
            self._send(run.done_frame)

    def attach_front(self, fd: int) -> None:
        """A new front: switch the channel to it (called on the loop from the lifeline thread)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        old = self.channel

        async def switch() -> None:
            if old is not None:
                old.close()  # what it still held was for the old front; the replay has it
            await self._connect(sock)
            log.info("actor.front_attached", run_id=self.run.run_id if self.run else None)
            if not self.finished.done():
                self._hello()

        self.loop.create_task(switch())

    # ── output (see navi_actor.channel: written even while the agent blocks the loop) ──
    def _send(self, data: bytes) -> None:
        """Write framed bytes (a control message) after every frame queued before them."""
        if self.channel is not None:
            self.channel.send(data)

    async def _drain(self) -> None:
        """Write what is still queued, for up to a second (the actor is about to exit)."""
        if self.channel is not None:
            self.channel.drain(1.0)

    def _close_channel(self) -> None:
        """The actor's last writes: what is still queued gets up to a second to leave."""
        if self.channel is not None:
            self.channel.close(linger=1.0)

    # ── input ─────────────────────────────────────────────────────────────
    def on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "turn":
            self._start_turn(msg)
        elif op == "stop":
            self._stop(msg.get("run_id"), msg.get("reason"))
        elif op == "replay":
            self._replay(msg["viewer"], msg.get("after"))
        elif op == "replay_ended":
            after = msg.get("after")
            self._send(framing.frame(self._replay_ended(msg["viewer"], after if type(after) is int else None)))
        elif op == "persisted":
            run = self.run
            if run is not None and run.run_id == msg.get("run_id") and run.done:
                self.run = None
                self.ended = self._keep_ended(run, msg.get("final"))
                if self._closing:
                    self._finish(EXIT_OK)
                else:
                    self.loop.call_soon(_give_back_memory)
        elif op == "shutdown":
            self._closing = True
            self._title("exiting" if self.run is None else "stopping")
            if self.run is None:
                self._finish(EXIT_OK)
            else:
                self._stop(self.run.run_id)
        else:
            log.warning("actor.unknown_op", op=op)

    def assign(self, actor_id: str, session_id: str) -> None:
        """A warm actor is given its session: confine it to that session, then serve its turns.

        Runs on the loop (a warm actor reads its lifeline there), while the
        actor is still single-threaded; its lifeline thread starts after.
        From now on every line of this process carries the assigned id, as the
        supervisor's and the front's do; this line also names the warm one.
        """
        warm_id, self.actor_id, self.session_id = self.actor_id, actor_id, session_id
        logs.bind_process(actor_id=actor_id, session_id=session_id, warm_id=None)
        log.info("actor.assigned", warm_id=warm_id)
        self._title("running" if self.run is not None else "idle")
        if self.confined:
            return
        try:
            if self.sandbox_error is not None:
                raise policy.SandboxFailed(self.sandbox_error)
            policy.confine_session(self.plan, session_id)
        except policy.SandboxFailed as exc:
            self.sandbox_failed(str(exc))
            return
        self.confined = True
        if self.channel is not None:
            self.channel.allow_thread = True
        start_lifeline_thread(self, self.loop)
        if self.runner is None and not self._make_runner():
            self._finish(EXIT_AGENT_FAILED)
            return
        pending, self._pending_turn = self._pending_turn, None
        if pending is not None:
            self._start_turn(pending)

    def sandbox_failed(self, message: str) -> None:
        """The sandbox could not be applied: say why to the front and the supervisor, and exit."""
        log.error("actor.sandbox_failed", error=message)
        fatal = framing.control({"op": "fatal", "code": protocol.SANDBOX_FAILED,
                                 "message": f"the agent's sandbox could not be applied: {message}"})
        self._tell_supervisor(fatal)
        self._send(fatal)
        self._finish(EXIT_SANDBOX_FAILED)

    def operator_stop(self, reason: dict[str, str] | None) -> None:
        """An operator's stop, by the supervisor: stop the turn, then exit once it is saved."""
        log.info("actor.operator_stop", run_id=self.run.run_id if self.run else None)
        self._closing = True
        self._title("exiting" if self.run is None else "stopping")
        if self.run is None:
            self._finish(EXIT_OK)
        else:
            self._stop(self.run.run_id, reason)

    def on_channel_lost(self, channel: Channel) -> None:
        if channel is self.channel and not self.finished.done():
            log.warning("actor.front_lost", run_id=self.run.run_id if self.run else None)
            # Keep going: the supervisor hands over a channel to the next front.

    def _finish(self, code: int) -> None:
        if not self.finished.done():
            self.finished.set_result(code)

    # ── turns ─────────────────────────────────────────────────────────────
    def _start_turn(self, msg: dict[str, Any]) -> None:
        run_id = msg["run_id"]
        if self.run is not None:
            self._send(framing.control({"op": "rejected", "run_id": run_id, "code": protocol.ALREADY_RUNNING}))
            return
        if not self.confined:  # the supervisor's assign is on its way, on the lifeline
            if self._pending_turn is None:
                self._pending_turn = msg
            else:
                self._send(framing.control({"op": "rejected", "run_id": run_id, "code": protocol.ALREADY_RUNNING}))
            return
        self.ended = None  # a new turn: the last one can no longer be resumed here
        t = msg["turn"]
        run = _Run(run_id, msg["start"], self.config.replay_max_bytes)
        turn = Turn(
            session_id=t["session_id"],
            run_id=run_id,
            content=t["content"],
            display_content=t["display_content"],
            images=t.get("images") or [],
            files=t.get("files") or [],
            history=t.get("history") or [],
            stop_event=run.stop_event,
            upload_dir=t.get("upload_dir") or "",
        )
        self.run = run
        self._title("running")
        run.task = self.loop.create_task(self._drive(run, turn))

    async def _drive(self, run: _Run, turn: Turn) -> None:
        assert self.runner is not None
        current_stop_event.set(run.stop_event)
        structlog.contextvars.bind_contextvars(session_id=turn.session_id, run_id=run.run_id)
        log.info("actor.turn_start")
        error: BaseException | None = None
        agen = self.runner(turn)
        try:
            async for ev in agen:
                if type(ev) is TextDelta:
                    self._emit_text(run, ev.delta)
                elif type(ev) is StreamEnd:
                    run.end = ev
                    continue
                else:
                    self._emit(run, event_to_wire(ev))
                if not self.channel.writable.is_set():
                    await self.channel.writable.wait()
        except asyncio.CancelledError:
            if not run.cancelled:
                raise
        except Exception as exc:
            error = exc
            log.exception("actor.agent_error")
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, or the agent's own kind
            log.exception("actor.agent_base_exception")
            message = f"agent raised {type(exc).__name__} ({exc}), which ends its process"
            fatal = framing.control({"op": "fatal", "code": protocol.ACTOR_DIED, "message": message})
            self._tell_supervisor(fatal)
            self._send(fatal)
            self._finish(EXIT_UNCAUGHT)
            return
        finally:
            if run.cancelled or error is not None:
                try:
                    await asyncio.wait_for(agen.aclose(), 1.0)
                except BaseException:
                    pass
        self._end_turn(run, error)

    def _emit_text(self, run: _Run, delta: str) -> None:
        """The common event, without the general path's dict copy and checks."""
        if type(delta) is not str:
            return self._emit(run, event_to_wire(TextDelta(delta)))
        run.seq = seq = run.seq + 1
        run.text.append(delta)
        run.buffer.append_delta("stream_delta", seq, delta)
        self.channel.send_event(_dumps({"type": "stream_delta", "delta": delta, "seq": seq}))

    def _emit(self, run: _Run, wire: dict[str, Any]) -> None:
        run.seq += 1
        seq = wire["seq"] = run.seq
        kind = wire["type"]
        if kind == "stream_delta":
            delta = wire.get("delta")
            if type(delta) is str:
                run.text.append(delta)
        elif kind == "thinking_delta":
            delta = wire.get("delta")
            if type(delta) is str:
                run.thinking.append(delta)
        elif kind == "turn_thinking":
            thinking = wire.get("thinking")
            if type(thinking) is str:
                run.thinking.append(thinking)
        elif kind == "tool_call":
            run.tool_calls.append(
                {
                    "tool": wire.get("tool"),
                    "args": wire.get("args"),
                    "result": wire.get("result"),
                    "success": wire.get("success"),
                    "is_subagent": wire.get("is_subagent", False),
                    "metadata": wire.get("metadata"),
                }
            )
        data = dumps(wire)
        if ReplayBuffer.is_plain_delta(wire):
            run.buffer.append_delta(kind, seq, wire["delta"])
        else:
            run.buffer.append(seq, data)
        self.channel.send_event(data)

    def _end_turn(self, run: _Run, error: BaseException | None) -> None:
        if run.grace_timer is not None:
            run.grace_timer.cancel()
        end = run.end or StreamEnd()
        content = end.full_content if end.full_content is not None else "".join(run.text)
        elapsed = round(time.monotonic() - run.t0, 3)
        tool_count = end.tool_call_count if end.tool_call_count is not None else len(run.tool_calls)
        token_count = end.token_count if end.token_count is not None else len(run.text)
        stats = {
            "elapsed_seconds": end.elapsed_seconds if end.elapsed_seconds is not None else elapsed,
            "tool_call_count": tool_count,
            "token_count": token_count,
            "context_tokens": end.context_tokens,
            "max_context_tokens": end.max_context_tokens,
            "finish_reason": _finish_reason(end.finish_reason),
        }
        run.seq += 1
        err_text = err_code = None
        if error is not None:
            status = "failed"
            if isinstance(error, AgentError):
                err_text, err_code = error.message, error.code
            else:
                err_text, err_code = f"Internal error: {error}", protocol.AGENT_ERROR
            final = protocol.error_event(err_text, err_code, run.seq, run_id=run.run_id)
        elif run.stop_event.is_set():
            status = "stopped"
            step = "cancel" if run.cancelled else "event"
            stats["stop_step"] = step
            final = protocol.stream_stopped(run.seq, run.run_id, step, content, run.stop_reason)
            if run.stop_reason:
                err_text, err_code = run.stop_reason["message"], run.stop_reason["code"]
        else:
            status = "done"
            final = {"type": "stream_end", "seq": run.seq, "run_id": run.run_id, "content": content, **stats}
        result = {
            "status": status,
            "content": content,
            "thinking": "".join(run.thinking),
            "tool_calls": run.tool_calls,
            "last_seq": run.seq,
            "stats": stats,
            "error": err_text,
            "error_code": err_code,
        }
        run.done = True
        self._title("exiting" if self._closing else "idle")
        log.info(
            "actor.turn_end", run_id=run.run_id, status=status, events=len(run.buffer),
            elapsed=elapsed,
        )
        msg = {"op": "turn_done", "run_id": run.run_id, "final": final, "result": result}
        run.done_frame = framing.frame(dumps(msg))
        self._send(run.done_frame)

    def _stop(self, run_id: Any, reason: dict[str, str] | None = None) -> None:
        run = self.run
        if run is None or run.run_id != run_id or run.done:
            return
        if reason and run.stop_reason is None:
            run.stop_reason = reason
        if not run.stop_event.is_set():
            log.info("actor.stop", run_id=run_id)
            self._title("stopping")
            run.stop_event.set()
            run.grace_timer = self.loop.call_later(self.config.stop_grace, self._cancel, run)

    def _cancel(self, run: _Run) -> None:
        if run.task is not None and not run.task.done() and not run.done:
            log.info("actor.stop_cancel", run_id=run.run_id)
            run.cancelled = True
            run.task.cancel()

    def _replay(self, viewer: int, after: Any) -> None:
        run = self.run
        after_seq = after if type(after) is int else None
        if run is None:
            body = dumps({"op": "replay", "viewer": viewer, "run_id": None, "events": []})
        else:
            part = run.buffer.after(after_seq)
            body = _with_events({"op": "replay", "viewer": viewer, "run_id": run.run_id, "done": run.done,
                                 "truncated": part.truncated, "first_seq": part.first_seq, "start": run.start},
                                part.events)
        self._send(framing.frame(body))

    @staticmethod
    def _keep_ended(run: _Run, final: Any) -> EndedTurn | None:
        """Keep the persisted ``run``'s replay, ending with ``final`` when the front says its
        viewers got that one (it replaced the actor's), else the one sent in ``turn_done``."""
        if type(final) is not dict:
            assert run.done_frame is not None
            final = orjson.loads(run.done_frame[framing.HEADER.size:])["final"]
        return EndedTurn.keep(run.run_id, run.start, run.buffer, final.get("seq"), dumps(final))

    def _replay_ended(self, viewer: int, after: int | None) -> bytes:
        """The kept finished turn after ``after``, its final event last (``replay_ended``);
        no run when none is kept or the cursor is outside it (:meth:`EndedTurn.covers`)."""
        ended = self.ended
        if ended is None or not ended.covers(after):
            return dumps({"op": "replay_ended", "viewer": viewer, "run_id": None, "events": []})
        part = ended.buffer.after(after)
        return _with_events({"op": "replay_ended", "viewer": viewer, "run_id": ended.run_id,
                             "last_seq": ended.last_seq, "truncated": part.truncated,
                             "first_seq": part.first_seq, "start": ended.start}, part.events)


def actor_main(spec: AgentSpec, config: Config, actor_id: str, session_id: str, fd: int,
               lifeline_fd: int) -> int:
    """Entry point in the forked actor process; returns its exit code."""
    import uvloop

    # The supervisor configured logging before forking us. A warm actor (no session yet)
    # is named warm_id until it is assigned, then actor_id like every other line of it.
    logs.rebind("actor", **({"actor_id": actor_id, "session_id": session_id} if session_id
                            else {"warm_id": actor_id}))
    logs.get().info("actor.spawned", warm=not session_id)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    lifeline = socket.socket(fileno=lifeline_fd)
    actor = Actor(spec, config, actor_id, session_id, sock)
    actor.lifeline = lifeline
    try:
        policy.enter(actor.plan)  # single-threaded, before any loop or agent code
        if session_id:
            policy.confine_session(actor.plan, session_id)
    except policy.SandboxFailed as exc:
        if session_id:
            actor.confined = False
        # Reported when the actor is given a session (a warm one): failing here
        # would only have the warm pool fork another, in a loop.
        actor.sandbox_error = str(exc)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        if actor.sandbox_error is not None and session_id:
            actor.loop = loop
            actor.finished = loop.create_future()
            await actor._connect(sock)
            actor.sandbox_failed(actor.sandbox_error)
            await actor._drain()
            return await actor.finished
        return await actor.serve()

    return uvloop.run(main())


REHEARSAL_TURNS = 3
REHEARSAL_DELTAS = 200  # enough for CPython 3.11 to specialise the hot path's bytecode


async def _rehearsal_agent(turn: Turn) -> AsyncIterator[Any]:
    """The agent of :func:`prewarm`'s rehearsal: every kind of event the runtime handles often."""
    from navi_actor.events import ThinkingDelta, ThinkingEnd, ToolEvent, ToolStarted

    yield ThinkingDelta("rehearsing")
    yield ThinkingEnd()
    yield ToolStarted("rehearsal", {"n": 1})
    yield ToolEvent("rehearsal", {"n": 1}, "ok", True)
    for i in range(REHEARSAL_DELTAS):
        yield TextDelta("tok ")
        if i % 50 == 0:
            await asyncio.sleep(0)


def prewarm(log_format: str = "auto") -> int:
    """Rehearse a few turns of the actor's own code in the template process, before it forks.

    asyncio sets up module state and caches on first use, and CPython 3.11
    rewrites a function's bytecode in place (specialisation) once it has run a
    few times. Done here, before ``gc.freeze()``, those writes
    land in pages every actor shares; otherwise each actor's first turn copies
    them (about 0.1 MiB per actor, measured). The rehearsal runs a real :class:`Actor` on a
    socketpair with a built-in agent (never the configured one), and logs to
    nowhere. The caller configures logging again afterwards. Returns the
    number of turns rehearsed.
    """
    from navi_actor.agent_loader import AgentSpec

    async def rehearse() -> int:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        spec = AgentSpec("rehearsal", "navi_actor.actor:_rehearsal_agent", _rehearsal_agent, True)
        actor = Actor(spec, Config(), "rehearsal", "rehearsal", theirs)
        actor.titled = False
        serving = asyncio.ensure_future(actor.serve())
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        decoder = framing.FrameDecoder(framing.MAX_ACTOR_FRAME)

        async def until(op: str) -> None:
            while True:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    raise RuntimeError("the rehearsal actor closed its channel")
                for body in decoder.feed(data):
                    if body[0] == framing.EVENT_TAG:
                        framing.parse_event(body[1:])
                    elif framing.parse_control(body)["op"] == op:
                        return

        await until("hello")
        done = 0
        for i in range(REHEARSAL_TURNS):
            run_id = f"rehearsal{i}"
            turn = {"session_id": "rehearsal", "content": "hi", "display_content": "hi", "images": [],
                    "files": [], "history": [], "upload_dir": ""}
            writer.write(framing.control({"op": "turn", "run_id": run_id,
                                          "start": protocol.stream_start(1, run_id), "turn": turn}))
            await until("turn_done")
            done += 1
            writer.write(framing.control({"op": "persisted", "run_id": run_id}))
        writer.write(framing.control({"op": "shutdown"}))
        await asyncio.wait_for(serving, 10)  # it closed its channel (and its flusher thread)
        writer.close()
        await writer.wait_closed()
        return done

    with open(os.devnull, "w") as nowhere:
        logs.configure("prewarm", log_format, file=nowhere)
        # asyncio's own loop, not uvloop's: libuv's first loop makes a process-wide
        # signal-lock pipe, and a child that inherits it closes it with the other
        # descriptors, so every uv_signal_start in the child (an asyncio subprocess
        # under uvloop) aborts. Actors make their own, after the fork.
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(rehearse())
