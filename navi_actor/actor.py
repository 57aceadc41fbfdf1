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

A turn's events are encoded to JSON once, in the actor (:mod:`navi_actor.driver`);
the front forwards those bytes.
The final event (``stream_end``/``stream_stopped``/``error``) travels inside
``turn_done`` with the result, so the front can make the result durable before
any viewer sees the end. When the front says ``persisted``, the run is
over for the front; the actor keeps only its replay buffer, with that final
event at its end (:class:`~navi_actor.replay.EndedTurn`, within ``--replay-max-bytes``), so that a
client that was away when the turn ended can still resume it with
``?after=SEQ``. It is kept until the session's next turn starts or the actor
exits.

The actor's parts: this module is the process (:func:`actor_main`,
:func:`prewarm`) and its control (:class:`Actor`: messages from the front and
the lifeline, confinement, exit); :mod:`navi_actor.driver` runs the turns and
their stop; :mod:`navi_actor.replay_service` answers replays;
:mod:`navi_actor.channel` writes the frames out; :mod:`navi_actor.lifeline`
reads the supervisor's messages.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, AsyncIterator, Callable

from navi_actor import framing, logs, protocol, replay_service
from navi_actor.agent_loader import AgentSpec
from navi_actor.channel import Channel
from navi_actor.config import Config
from navi_actor.driver import Run, TurnDriver
from navi_actor.events import TextDelta
from navi_actor.lifeline import read_on_loop as read_lifeline_on_loop
from navi_actor.lifeline import start_thread as start_lifeline_thread
from navi_actor.replay import EndedTurn
from navi_actor.sandbox import policy
from navi_actor.turn import Turn
from supervisor import proctitle

EXIT_OK = 0
EXIT_AGENT_FAILED = 3  # the agent factory raised: the supervisor must not respawn in a loop
EXIT_UNCAUGHT = 70  # a BaseException escaped the agent
EXIT_SANDBOX_FAILED = 4  # the sandbox could not be applied: no agent code ran under it

log = logs.get("navi.actor")


def _give_back_memory() -> None:
    """Between turns an actor may idle for long: free the turn's cycles now (an agent's
    exception with its traceback, say), not at some later allocation."""
    import gc

    gc.collect()


class Actor(TurnDriver):
    """Serve turns for one session until told to shut down or the front goes.

    This class holds the actor's control: its channel to the front and its
    lifeline, the messages from both, its confinement and its exit. The turns
    themselves are :class:`~navi_actor.driver.TurnDriver`'s; replays are
    :mod:`navi_actor.replay_service`'s.
    """

    def __init__(self, spec: AgentSpec, config: Config, actor_id: str, session_id: str,
                 sock: socket.socket) -> None:
        self.spec = spec
        self.config = config
        self.actor_id = actor_id
        self.session_id = session_id
        self.sock = sock
        self.run: Run | None = None
        self.ended: EndedTurn | None = None  # the last turn, finished and persisted, for late resumes
        self.runner: Callable[[Turn], AsyncIterator[Any]] | None = None
        self.channel: Channel | None = None
        self._closing = False
        self._expected = False
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
            self._fatal(protocol.AGENT_FAILED_TO_START,
                        f"agent {self.spec.name} failed to start: {type(exc).__name__}: {exc}")
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

    def _fatal(self, code: str, message: str) -> None:
        """Say why this actor cannot go on, to the front and (on the lifeline) the supervisor."""
        fatal = framing.control({"op": "fatal", "code": code, "message": message})
        self._tell_supervisor(fatal)
        self._send(fatal)

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
            if self.confined:
                self._start_turn(msg)
            else:
                self._hold_turn(msg)
        elif op == "expect":
            self._expected = self.run is None
            # Not from inside this read: the turn may be in the same batch of frames.
            self.loop.call_soon(self._expect)
        elif op == "stop":
            self._stop(msg.get("run_id"), msg.get("reason"))
        elif op == "replay":
            self._send(replay_service.replay(self.run, msg["viewer"], msg.get("after")))
        elif op == "replay_ended":
            self._send(replay_service.replay_ended(self.ended, msg["viewer"], msg.get("after")))
        elif op == "persisted":
            run = self.run
            if run is not None and run.run_id == msg.get("run_id") and run.done:
                self.run = None
                self.ended = replay_service.keep_ended(run, msg.get("final"))
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

    def _expect(self) -> None:
        """The front is saving a turn's message for this actor: poll for the turn, rather than
        sleep until it comes (see Channel.spin_read). Only while nothing else runs here."""
        if self.run is None and self.confined and not self._closing and self.channel is not None:
            if self.channel.spin_read(self.config.turn_poll_ms / 1000) and self.run is not None:
                self.run.polled = True  # in its actor.turn_start line (logged after this)

    def _hold_turn(self, msg: dict[str, Any]) -> None:
        """A turn for a warm actor not yet confined: it starts once the supervisor's
        assign (on its way, on the lifeline) has confined the actor."""
        if self._pending_turn is None:
            self._pending_turn = msg
        else:
            self._send(framing.control({"op": "rejected", "run_id": msg["run_id"],
                                        "code": protocol.ALREADY_RUNNING}))

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
        self._fatal(protocol.SANDBOX_FAILED, f"the agent's sandbox could not be applied: {message}")
        self._finish(EXIT_SANDBOX_FAILED)

    def _agent_raised(self, exc: BaseException) -> None:
        """The agent raised a BaseException (SystemExit, KeyboardInterrupt, its own kind): it ends the process."""
        self._fatal(protocol.ACTOR_DIED, f"agent raised {type(exc).__name__} ({exc}), which ends its process")
        self._finish(EXIT_UNCAUGHT)

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
