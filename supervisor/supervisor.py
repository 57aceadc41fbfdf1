"""The supervisor: root process of ``navi-actor serve``.

It forks the front and, on the front's request, one actor per active session;
it reaps every child, explains each death to the front, restarts a front that
dies (within an intensity limit) and shuts everything down in order. Signal
handlers only queue the signal; one loop dispatches (uvicorn, gunicorn):

    while exit_code is None: select → handle frames → handle signals → reap → tick

Front ↔ supervisor messages (length-framed JSON on a socketpair):
front → ``spawn {actor_id, session_id}``, ``signal {actor_id, sig}``,
``ready {host, port}``; supervisor → ``spawned {actor_id, pid}`` + the front's
end of the actor's socketpair, ``adopt {actor_id, pid, session_id}`` + a fresh
one (after a front restart), ``spawn_failed``, ``exit {actor_id, pid,
exitcode, signal, message}``, ``shutdown {drain}``.

Each actor also holds a *lifeline*: a socketpair to the supervisor. A new front
reaches a running actor through it (``front`` + the actor's end of a new
socketpair), so a front restart loses sockets, not runs; and its end of file
tells the actor the supervisor is gone, whereupon the actor kills its own
process group — grandchildren included.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import selectors
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import orjson
import structlog

from supervisor import limits, proctitle, spawn, zygote
from supervisor.causes import EXIT_CANNOT_START, describe_status
from supervisor.control import ControlServer
from supervisor.fdchannel import ChannelClosed, FdChannel
from supervisor.notify import sd_notify
from supervisor.operations import Operations
from supervisor.pool import WarmPool
from supervisor.restart import RestartPolicy

log = structlog.get_logger("navi.supervisor")

_SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
# After a new turn takes a warm actor, its replacement is cloned this much later: a
# clone and the new actor's start (~1.6 + ~5 ms of CPU) made right away competed with
# that turn's first milliseconds for the CPUs (first event p50 3.7 -> 3.0 ms, measured).
REFILL_DELAY = 0.01
MAX_ZYGOTE_FAILURES = 3  # zygote failures in a row before actors fork from the supervisor for good


@dataclasses.dataclass(slots=True)
class Hooks:
    """What the supervisor runs; it knows nothing else of the runtime."""

    front_main: Callable[[int], int]  # (fd of the supervisor channel) -> exit code
    front_fds: tuple[int, ...]  # descriptors the front inherits (the listening socket)
    actor_main: Callable[[str, str, int, int], int]  # (actor id, session id, channel fd, lifeline fd)
    on_give_up: Callable[[], None]  # the front cannot be kept up: actors are gone, record their turns
    shutdown_grace: float  # seconds the front gets to drain and stop its runs
    actor_max_rss: int = 0  # bytes; an actor (with its children) above it is killed; 0 = no limit
    stop_term_after: float = 5.0  # the operator's stop ladder: seconds to SIGTERM
    stop_kill_after: float = 2.0  # … and from SIGTERM to SIGKILL
    control_path: Path | None = None  # where to serve the control socket
    on_reload: Callable[[], str | None] | None = None  # SIGHUP: load new agent code; None or why it failed
    warm_actors: int = 0  # actors forked ahead of need, ready for the next new session
    use_zygote: bool = True  # fork actors from an idle zygote (supervisor/zygote.py), not from the supervisor
    preload_front: Callable[[], None] | None = None  # imports only the front needs: after the zygote's fork
    actor_fds: tuple[int, ...] = ()  # descriptors every actor (and the zygote) inherits: the sandbox's rules
    sandbox: dict[str, Any] | None = None  # what the actors' sandbox enforces, for status and ps


@dataclasses.dataclass(slots=True)
class _Actor:
    actor_id: str
    pid: int
    session_id: str
    lifeline: FdChannel
    killed_for: str | None = None  # the supervisor's reason, when it killed the actor
    kill_code: str | None = None  # the error code viewers get for it (default actor_died)
    kill_kind: str | None = None  # the metric label of that cause


class Supervisor:
    def __init__(self, hooks: Hooks, server_file: Path, restart: RestartPolicy | None = None) -> None:
        self.hooks = hooks
        self.server_file = server_file
        self.restart = restart or RestartPolicy()
        self.exit_code: int | None = None
        self.started = time.time()
        self.front_pid: int | None = None
        self.front_chan: FdChannel | None = None
        self.front_restarts = 0
        self.generation = 0
        self.actors: dict[int, _Actor] = {}
        self.by_id: dict[str, int] = {}
        self.sel = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._restart_at: float | None = None
        self._stage = "running"  # running → draining → stopping_actors
        self._deadline: float | None = None
        self._shutdown_requests = 0
        self._final_code = 0
        self._next_memory_check = 0.0
        self._memory_checks = 0
        self.ops = Operations(self, hooks.stop_term_after, hooks.stop_kill_after)
        self.pool = WarmPool(hooks.warm_actors)
        self.control: ControlServer | None = None
        self.zygote: zygote.Zygote | None = None
        self._zygote_failures_in_a_row = 0  # in a row; at MAX_ZYGOTE_FAILURES actors fork from the supervisor
        self._zygote_off: str | None = None if hooks.use_zygote else "--no-zygote"
        self._retired_zygotes: set[int] = set()  # stopped on purpose; reaped quietly
        self.zygote_failures = 0  # since the start, for operators (status, /metrics)
        self._refill_at: float | None = None  # when the warm pool is refilled next (REFILL_DELAY)

    @property
    def stage(self) -> str:
        return self._stage

    # ── main loop ─────────────────────────────────────────────────────────
    def run(self) -> int:
        proctitle.set_title("navi-actor: supervisor", comm=b"navi-supervisor")
        spawn.become_subreaper()
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        self._wakeup = (rsock, wsock)
        signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, self._queue_signal)
        self.sel.register(rsock, selectors.EVENT_READ, self._drain_wakeup)
        if self.hooks.control_path is not None:
            self.control = ControlServer(self.hooks.control_path, self.ops.request, self._on_control_answer)
            self.sel.register(self.control.sock, selectors.EVENT_READ, self._on_control_accept)
        if self._zygote_off is None:
            self._zygote_off = zygote.unsupported_reason()
        if self._zygote_off is None:
            self._ensure_zygote()  # before the front: its pages are the template's, untouched
        else:
            log.info("supervisor.no_zygote", reason=self._zygote_off, note="actors fork from the supervisor")
        if self.hooks.preload_front is not None:
            self.hooks.preload_front()
        self._start_front()
        self._refill_pool()
        try:
            while self.exit_code is None:
                for key, mask in self.sel.select(self._timeout()):
                    key.data(mask)
                self._handle_signals()
                self._reap()
                self._tick()
        finally:
            self._cleanup()
        return self.exit_code

    def _queue_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def _drain_wakeup(self, _mask: int) -> None:
        try:
            while self._wakeup[0].recv(4096):
                pass
        except BlockingIOError:
            pass

    def _timeout(self) -> float:
        now = time.monotonic()
        wake = [t for t in (self._restart_at, self._deadline, self._refill_at) if t is not None]
        return max(0.0, min([0.25, *(t - now for t in wake)]))

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._request_shutdown(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._reload()

    def _reload(self) -> None:
        """New agent code for new actors; running turns finish on the old."""
        if self.hooks.on_reload is None:
            return
        error = self.hooks.on_reload()
        if error is not None:
            log.error("supervisor.reload_failed", error=error, note="the running agent code stays in use")
            return
        for actor in self.pool.drain():  # forked before the reload: old code
            actor.kill_kind = "reload"
            _killpg(actor.pid, signal.SIGKILL)
        self._retire_zygote()  # it holds the old code too; the next fork starts a new one
        self._refill_pool()
        log.info("supervisor.reloaded")
        sd_notify("STATUS=agent code reloaded")
        self._send_front({"op": "reload"})

    # ── the control socket ────────────────────────────────────────────────
    def _on_control_accept(self, _mask: int) -> None:
        assert self.control is not None
        conn = self.control.accept()
        if conn is not None:
            fd = conn.fileno()
            self.sel.register(conn, selectors.EVENT_READ, lambda mask, fd=fd: self._on_control_conn(fd, mask))

    def _on_control_answer(self, fd: int) -> None:
        """A control connection's answer is ready (now, or later for a ``list``): write it."""
        sock = self.control.socket_of(fd) if self.control is not None else None
        if sock is not None:
            self.sel.modify(sock, selectors.EVENT_WRITE, lambda mask, fd=fd: self._on_control_conn(fd, mask))

    def _on_control_conn(self, fd: int, mask: int) -> None:
        assert self.control is not None
        sock = self.control.socket_of(fd)
        if sock is None:
            return
        if mask & selectors.EVENT_READ:
            self.control.on_readable(fd)
        if mask & selectors.EVENT_WRITE:
            self.control.on_writable(fd)
        if self.control.socket_of(fd) is None:
            self.sel.unregister(sock)

    # ── the front ─────────────────────────────────────────────────────────
    def _start_front(self) -> None:
        self._restart_at = None
        self.generation += 1
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        pid = spawn.fork_child(lambda: self.hooks.front_main(fd), (fd, *self.hooks.front_fds), new_group=False)
        theirs.close()
        self.front_pid = pid
        self.front_chan = FdChannel(ours)
        self.sel.register(ours, selectors.EVENT_READ, self._on_front_io)
        assigned = [a for a in self.actors.values() if not self.pool.holds(a.pid)]
        log.info("supervisor.front_started", front_pid=pid, generation=self.generation, adopting=len(assigned))
        for actor in assigned:
            self._hand_over(actor)

    def _hand_over(self, actor: _Actor) -> None:
        """Connect a running actor to the new front with a fresh socketpair."""
        try:
            to_front, to_actor = socket.socketpair()
        except OSError as exc:
            log.error("supervisor.adopt_failed", actor_id=actor.actor_id, error=str(exc))
            _killpg(actor.pid, signal.SIGKILL)
            return
        try:
            actor.lifeline.send(orjson.dumps({"op": "front"}), [to_actor.detach()])
        except ChannelClosed:
            to_front.close()
            return  # it is exiting; its exit notice follows
        self._send_front(
            {"op": "adopt", "actor_id": actor.actor_id, "pid": actor.pid, "session_id": actor.session_id},
            [to_front.detach()],
        )

    def _send_front(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        chan = self.front_chan
        if chan is None:
            for fd in fds or ():
                os.close(fd)
            return
        try:
            chan.send(orjson.dumps(msg), fds)
        except ChannelClosed:
            return
        self._watch_front_writes()

    def _watch_front_writes(self) -> None:
        if self.front_chan is not None:
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.front_chan.wants_write else 0)
            self.sel.modify(self.front_chan.sock, mask, self._on_front_io)

    def _on_front_io(self, mask: int) -> None:
        chan = self.front_chan
        if chan is None:
            return
        try:
            if mask & selectors.EVENT_WRITE:
                chan.flush()
            if mask & selectors.EVENT_READ:
                for body in chan.receive():
                    self._on_front_message(orjson.loads(body))
        except ChannelClosed:
            self._close_front_channel()
            return
        self._watch_front_writes()

    def _close_front_channel(self) -> None:
        if self.front_chan is not None:
            self.sel.unregister(self.front_chan.sock)
            self.front_chan.close()
            self.front_chan = None
            self.ops.front_gone()

    def _on_front_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "spawn":
            self._spawn_actor(str(msg["actor_id"]), str(msg.get("session_id", "")))
        elif op == "signal":
            pid = self.by_id.get(str(msg.get("actor_id")))
            sig = _SIGNALS.get(msg.get("sig", ""))
            if pid is not None and sig is not None:
                log.info("supervisor.signal_actor", actor_pid=pid, sig=msg["sig"])
                _killpg(pid, sig)
        elif op == "ready":
            self._write_server_file(msg)
        elif op == "status":
            self.ops.on_front_status(msg.get("actors") or {})
        elif op == "control":
            req = msg.get("req")
            self.ops.request(msg.get("request") or {},
                             lambda reply: self._send_front({"op": "control_reply", "req": req, "reply": reply}))
        else:
            log.warning("supervisor.unknown_op", op=op)

    def _write_server_file(self, msg: dict[str, Any]) -> None:
        info = {
            "pid": os.getpid(),
            "front_pid": self.front_pid,
            "host": msg.get("host"),
            "port": msg.get("port"),
            "url": f"http://{msg.get('host')}:{msg.get('port')}",
        }
        tmp = self.server_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(info))
            tmp.replace(self.server_file)
        except OSError as exc:  # a full disk must not take the supervisor down with a restarted front
            log.error("supervisor.server_file_failed", path=str(self.server_file), error=str(exc))
        log.info("supervisor.serving", url=info["url"], front_pid=self.front_pid)
        if self.generation == 1:
            print(f"navi-actor: serving on {info['url']} (Ctrl-C to stop)", flush=True)
        sd_notify(f"READY=1\nSTATUS=serving on {info['url']}\nMAINPID={os.getpid()}")

    # ── actors ────────────────────────────────────────────────────────────
    def _spawn_actor(self, actor_id: str, session_id: str) -> None:
        """Give the front an actor for a session: a warm one if ready, else a fresh fork."""
        if self._stage != "running":
            self._send_front({"op": "spawn_failed", "actor_id": actor_id, "message": "server is shutting down"})
            return
        t0 = time.perf_counter()
        warm = self.pool.take()
        warm_id = None
        if warm is not None:
            actor, chan_front = warm
            warm_id = actor.actor_id
            self.by_id.pop(actor.actor_id, None)
            actor.actor_id, actor.session_id = actor_id, session_id
            try:
                actor.lifeline.send(orjson.dumps({"op": "assign", "actor_id": actor_id, "session_id": session_id}))
            except ChannelClosed:
                pass  # it is exiting; the front hears of it from the exit notice
        else:
            try:
                actor, chan_front = self._fork_actor(actor_id, session_id)
            except OSError as exc:
                log.error("supervisor.spawn_failed", actor_id=actor_id, error=str(exc))
                self._send_front({"op": "spawn_failed", "actor_id": actor_id, "message": f"fork failed: {exc}"})
                return
        self.by_id[actor_id] = actor.pid
        self._send_front({"op": "spawned", "actor_id": actor_id, "pid": actor.pid}, [chan_front.detach()])
        log.info("supervisor.actor_assigned", actor_id=actor_id, actor_pid=actor.pid, session_id=session_id,
                 warm=warm is not None, warm_id=warm_id, ms=round((time.perf_counter() - t0) * 1000, 2))
        if warm is not None:
            self._refill_at = self._refill_at or time.monotonic() + REFILL_DELAY
        else:
            self._refill_pool()

    def _fork_actor(self, actor_id: str, session_id: str) -> tuple[_Actor, socket.socket]:
        """Fork an actor; return it and the front's end of its channel. Raises OSError."""
        chan_actor, chan_front = socket.socketpair()
        try:
            life_actor, life_ours = socket.socketpair()
        except OSError:
            chan_actor.close()
            chan_front.close()
            raise
        fd, life_fd = chan_actor.fileno(), life_actor.fileno()
        try:
            pid = self._zygote_fork(actor_id, session_id, fd, life_fd)
            if pid is None:
                # No death signal: the actor watches its lifeline and, when the
                # supervisor is gone, kills its whole group (a signal would kill only it).
                pid = spawn.fork_child(
                    lambda: self.hooks.actor_main(actor_id, session_id, fd, life_fd),
                    (fd, life_fd, *self.hooks.actor_fds),
                    new_group=True,
                    death_signal=0,
                )
        except OSError:
            for sock in (chan_actor, chan_front, life_actor, life_ours):
                sock.close()
            raise
        chan_actor.close()
        life_actor.close()
        actor = _Actor(actor_id, pid, session_id, FdChannel(life_ours))
        self.actors[pid] = actor
        self.by_id[actor_id] = pid
        self.ops.on_spawn()
        log.info("supervisor.actor_spawned", **_ids(actor), actor_pid=pid, warm=not session_id)
        return actor, chan_front

    # ── the zygote ────────────────────────────────────────────────────────
    def _ensure_zygote(self) -> zygote.Zygote | None:
        """The running zygote, started if need be; None when actors fork from here."""
        if self._zygote_off is not None or self._stage != "running":
            return None
        if self.zygote is None:
            try:
                self.zygote = zygote.Zygote.start(self.hooks.actor_main, self.hooks.actor_fds)
            except OSError as exc:
                self._zygote_failed(f"cannot fork it: {exc}")
                return None
            log.info("supervisor.zygote_started", zygote_pid=self.zygote.pid)
        return self.zygote

    def _zygote_fork(self, actor_id: str, session_id: str, fd: int, life_fd: int) -> int | None:
        """The pid of an actor the zygote cloned; None if there is no zygote to ask.

        Raises OSError when clone failed, as fork would have.
        """
        z = self._ensure_zygote()
        if z is None:
            return None
        try:
            pid = z.fork_actor(actor_id, session_id, fd, life_fd)
        except zygote.ZygoteFailed as exc:
            self._retire_zygote()
            self._zygote_failed(str(exc))
            return None
        self._zygote_failures_in_a_row = 0
        return pid

    def zygote_state(self) -> dict[str, Any]:
        """For operators: the zygote's pid (None when there is none), failures, and why it is off."""
        return {"pid": self.zygote.pid if self.zygote is not None else None,
                "failures": self.zygote_failures, "off": self._zygote_off}

    def _zygote_failed(self, why: str) -> None:
        self.zygote_failures += 1
        self._zygote_failures_in_a_row += 1
        if self._zygote_failures_in_a_row >= MAX_ZYGOTE_FAILURES:
            self._zygote_off = f"the zygote failed {self._zygote_failures_in_a_row} times in a row; last: {why}"
            log.error("supervisor.zygote_disabled", reason=why, failures=self._zygote_failures_in_a_row,
                      note="actors fork from the supervisor from now on")
        else:
            log.warning("supervisor.zygote_failed", reason=why, failures=self._zygote_failures_in_a_row,
                        note="a new zygote is started for the next actor")

    def _retire_zygote(self) -> None:
        if self.zygote is not None:
            self._retired_zygotes.add(self.zygote.pid)
            self.zygote.close()
            self.zygote = None

    def _zygote_exited(self, pid: int, status: int) -> None:
        if pid in self._retired_zygotes:
            self._retired_zygotes.discard(pid)
            return
        if self.zygote is not None:  # the running one died
            self.zygote.sock.close()
            self.zygote = None
        cause = describe_status(status, "zygote")
        if self._stage == "running":
            self._zygote_failed(cause.message)

    def _refill_pool(self) -> None:
        """Fork warm actors up to the pool's size, unless failures put it in backoff."""
        while self._stage == "running" and self.pool.wants_one(time.monotonic()):
            try:
                actor, chan_front = self._fork_actor(uuid.uuid4().hex[:16], "")
            except OSError as exc:
                log.error("supervisor.warm_spawn_failed", error=str(exc))
                self.pool.failed(time.monotonic())
                return
            self.pool.add(actor, chan_front)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.front_pid:
                self._front_exited(status)
            elif pid in self._retired_zygotes or (self.zygote is not None and pid == self.zygote.pid):
                self._zygote_exited(pid, status)
            elif pid in self.actors:
                self._actor_exited(self.actors.pop(pid), status)
            # else: an orphaned grandchild we adopted as subreaper; reaped, nothing more

    def _actor_exited(self, actor: _Actor, status: int) -> None:
        self.by_id.pop(actor.actor_id, None)
        self._read_last_word(actor)
        actor.lifeline.close()
        was_warm = self.pool.discard(actor.pid)
        _killpg(actor.pid, signal.SIGKILL)  # whatever the agent left running in its group
        cause = describe_status(status)
        message = actor.killed_for or cause.message
        kind = actor.kill_kind or (
            f"signal_{cause.signal_name}" if cause.signal is not None
            else "clean" if cause.exitcode == 0 else f"exit_{cause.exitcode}"
        )
        self.ops.on_exit(actor, kind)
        log.info("supervisor.actor_exited", **_ids(actor), actor_pid=actor.pid,
                 exitcode=cause.exitcode, signal=cause.signal_name, cause=message, warm=was_warm)
        if was_warm:
            if self._stage == "running":
                delay = self.pool.failed(time.monotonic())  # a warm actor should not die: back off
                log.warning("supervisor.warm_actor_died", cause=message, retry_in=round(delay, 2))
            return
        if self._stage != "stopping_actors":
            self._send_front(
                {
                    "op": "exit",
                    "actor_id": actor.actor_id,
                    "pid": actor.pid,
                    "exitcode": cause.exitcode,
                    "signal": cause.signal_name,
                    "message": message,
                    "code": actor.kill_code,
                }
            )

    def _read_last_word(self, actor: _Actor) -> None:
        """A dead actor may have left its cause on the lifeline (``fatal``): take it."""
        try:
            bodies = actor.lifeline.receive()
        except ChannelClosed:
            return
        for body in bodies:
            try:
                msg = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(msg, dict) and msg.get("op") == "fatal" and actor.killed_for is None:
                actor.killed_for = str(msg.get("message"))[:2000]
                actor.kill_code = str(msg.get("code"))[:64]

    def _front_exited(self, status: int) -> None:
        cause = describe_status(status, "front process")
        self.front_pid = None
        self._close_front_channel()
        if self._stage != "running":
            log.info("supervisor.front_exited", exitcode=cause.exitcode, signal=cause.signal_name)
            self._stop_actors()
            return
        log.error("supervisor.front_died", cause=cause.message, actors=len(self.actors))
        # Actors keep running their turns; the next front adopts them.
        if cause.exitcode == EXIT_CANNOT_START:
            self._give_up("the front cannot start; see its log line above")
        elif self.restart.record(time.monotonic()):
            self.front_restarts += 1
            self._restart_at = time.monotonic() + self.restart.delay()
        else:
            self._give_up(f"the front died {self.restart.limit} times within {self.restart.period:.0f}s")

    def _give_up(self, reason: str) -> None:
        log.error("supervisor.giving_up", reason=reason)
        for actor in list(self.actors.values()):
            _killpg(actor.pid, signal.SIGKILL)
        try:
            self.hooks.on_give_up()
        except Exception:
            log.exception("supervisor.give_up_hook_failed")
        self._stage = "stopping_actors"
        self._deadline = time.monotonic() + 2.0
        self._final_code = 1

    # ── shutdown ──────────────────────────────────────────────────────────
    def _request_shutdown(self, why: str) -> None:
        self._shutdown_requests += 1
        n = self._shutdown_requests
        log.info("supervisor.shutdown_requested", signal=why, count=n)
        if self._stage == "stopping_actors":
            for actor in list(self.actors.values()):
                _killpg(actor.pid, signal.SIGKILL)
            return
        if self.front_pid is None:
            self._stop_actors()
            return
        if n == 1:
            sd_notify("STOPPING=1")
            self._stage = "draining"
            self._deadline = time.monotonic() + self.hooks.shutdown_grace + 5.0
            self._send_front({"op": "shutdown", "drain": True})
        elif n == 2:
            log.info("supervisor.skip_drain")
            self._send_front({"op": "shutdown", "drain": False})
        else:
            os.kill(self.front_pid, signal.SIGKILL)

    def _stop_actors(self) -> None:
        self._stage = "stopping_actors"
        self._retire_zygote()
        self._restart_at = None
        self._deadline = time.monotonic() + 2.0
        for actor in list(self.actors.values()):
            _killpg(actor.pid, signal.SIGTERM)

    def _check_memory(self) -> None:
        limit = self.hooks.actor_max_rss
        self._memory_checks += 1
        sample = limits.tree_rss if self._memory_checks % 10 == 1 else limits.own_rss
        sizes = sample([a.pid for a in self.actors.values() if a.killed_for is None])
        for pid, rss in sizes.items():
            actor = self.actors.get(pid)
            if actor is not None and limits.over_limit(rss, limit):
                actor.killed_for = limits.memory_message(limit)
                actor.kill_kind = "memory_limit"
                log.warning("supervisor.actor_over_memory", **_ids(actor), actor_pid=actor.pid,
                            rss_mb=rss // limits.MIB, limit_mb=limit // limits.MIB)
                _killpg(actor.pid, signal.SIGKILL)

    def _tick(self) -> None:
        now = time.monotonic()
        self.ops.tick(now)
        if self._refill_at is None or now >= self._refill_at:
            self._refill_at = None
            self._refill_pool()
        if self.hooks.actor_max_rss and now >= self._next_memory_check:
            self._next_memory_check = now + 1.0
            self._check_memory()
        for actor in self.actors.values():
            if actor.lifeline.wants_write:
                try:
                    actor.lifeline.flush()
                except ChannelClosed:
                    pass
        if self._restart_at is not None and now >= self._restart_at and self._stage == "running":
            log.info("supervisor.front_restart", restarts=self.front_restarts)
            self._start_front()
        if self._stage == "draining" and self._deadline is not None and now >= self._deadline:
            if self.front_pid is not None:
                log.warning("supervisor.front_kill", reason="front did not finish shutting down in time")
                os.kill(self.front_pid, signal.SIGKILL)
            self._deadline = now + 2.0
        if self._stage == "stopping_actors":
            if not self.actors and self.front_pid is None:
                self.exit_code = self._final_code
            elif self._deadline is not None and now >= self._deadline:
                for actor in list(self.actors.values()):
                    _killpg(actor.pid, signal.SIGKILL)
                if self.front_pid is not None:
                    os.kill(self.front_pid, signal.SIGKILL)
                self._deadline = now + 1.0

    def _cleanup(self) -> None:
        # Everything is stopped: a late Ctrl-C or SIGTERM must not turn a clean exit into
        # a death by signal (Python restores default handlers while it finalizes).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        if self.control is not None:
            self.control.shutdown()
        self.pool.close()
        self._retire_zygote()
        self._close_front_channel()
        for actor in self.actors.values():
            actor.lifeline.close()
        try:
            self.server_file.unlink()
        except FileNotFoundError:
            pass
        log.info("supervisor.exit", code=self.exit_code, uptime=round(time.time() - self.started, 1))


def _ids(actor: _Actor) -> dict[str, str]:
    """How log lines name an actor: ``actor_id`` once it has a session (the id the front and every
    later line use), ``warm_id`` before (its ``actor.assigned`` line carries both)."""
    return {"actor_id": actor.actor_id} if actor.session_id else {"warm_id": actor.actor_id}


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:  # EPERM: the group id was reused by another user's process
        if exc.errno != errno.EPERM:
            raise
