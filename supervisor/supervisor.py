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

The parts, each in its own module: the front's process and channel
(front.py), where actors come from (spawner.py, with the zygote), the warm
pool (pool.py), what operators ask (operations.py), the shutdown's stages
(shutdown.py). This module is the loop that ties them together, and what
happens when an actor is reaped.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import structlog

from supervisor import limits, proctitle, spawn
from supervisor.actors import SIGNALS, Actor, killpg, log_ids, read_last_word
from supervisor.causes import EXIT_AGENT_FAILED, describe_status
from supervisor.control import ControlServer
from supervisor.fdchannel import ChannelClosed
from supervisor.front import Front
from supervisor.hooks import Hooks
from supervisor.notify import sd_notify
from supervisor.operations import Operations
from supervisor.pool import WarmPool
from supervisor.restart import RestartPolicy
from supervisor.shutdown import Shutdown
from supervisor.spawner import Spawner

__all__ = ["Hooks", "REFILL_DELAY", "Supervisor"]

log = structlog.get_logger("navi.supervisor")

# After a new turn takes a warm actor, its replacement is cloned this much later: a
# clone and the new actor's start (~1.6 + ~5 ms of CPU) made right away competed with
# that turn's first milliseconds for the CPUs (first event p50 3.7 -> 3.0 ms, measured).
REFILL_DELAY = 0.01


class Supervisor:
    def __init__(self, hooks: Hooks, server_file: Path, restart: RestartPolicy | None = None) -> None:
        self.hooks = hooks
        self.server_file = server_file
        self.started = time.time()
        self.sel = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._next_memory_check = 0.0
        self._memory_checks = 0
        self._refill_at: float | None = None  # when the warm pool is refilled next (REFILL_DELAY)
        self.ops = Operations(self, hooks.stop_term_after, hooks.stop_kill_after)
        self.pool = WarmPool(hooks.warm_actors)
        self.control: ControlServer | None = None
        self.front = Front(hooks, self.sel, restart or RestartPolicy(), self._on_front_message, self.ops.front_gone)
        self.spawner = Spawner(hooks, lambda: self.shutdown.running, self.ops.on_spawn)
        self.shutdown = Shutdown(hooks, self.front, self.spawner)

    @property
    def stage(self) -> str:
        return self.shutdown.stage

    @property
    def actors(self) -> dict[int, Actor]:
        return self.spawner.actors

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
        self.spawner.start()  # the zygote, before the front: its pages are the template's, untouched
        if self.hooks.preload_front is not None:
            self.hooks.preload_front()
        self._start_front()
        self._refill_pool()
        try:
            while self.shutdown.exit_code is None:
                for key, mask in self.sel.select(self._timeout()):
                    key.data(mask)
                self._handle_signals()
                self._reap()
                self._tick()
        finally:
            self._cleanup()
        return self.shutdown.exit_code

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
        wake = [t for t in (self.front.restart_at, self.shutdown.deadline, self._refill_at) if t is not None]
        return max(0.0, min([0.25, *(t - now for t in wake)]))

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.shutdown.request(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._reload()

    def _reload(self) -> None:
        """New agent code for new actors; running turns finish on the old. A paused pool starts again."""
        if self.pool.resume():  # the operator may have mended what made the agent fail to start
            log.info("supervisor.warm_pool_resumed", reason="SIGHUP")
        if self.hooks.on_reload is None:
            self._refill_pool()
            return
        error = self.hooks.on_reload()
        if error is not None:
            log.error("supervisor.reload_failed", error=error, note="the running agent code stays in use")
            self._refill_pool()  # a resumed pool starts again with that code
            return
        for actor in self.pool.drain():  # forked before the reload: old code
            actor.kill_kind = "reload"
            killpg(actor.pid, signal.SIGKILL)
        self.spawner.retire_zygote()  # it holds the old code too; the next fork starts a new one
        self._refill_pool()
        log.info("supervisor.reloaded")
        sd_notify("STATUS=agent code reloaded")
        self.front.send({"op": "reload"})

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
        self.front.start(a for a in self.actors.values() if not self.pool.holds(a.pid))

    def _on_front_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "spawn":
            self._spawn_actor(str(msg["actor_id"]), str(msg.get("session_id", "")), bool(msg.get("warm_only")))
        elif op == "signal":
            pid = self.spawner.by_id.get(str(msg.get("actor_id")))
            sig = SIGNALS.get(msg.get("sig", ""))
            if pid is not None and sig is not None:
                log.info("supervisor.signal_actor", actor_pid=pid, sig=msg["sig"])
                killpg(pid, sig)
        elif op == "ready":
            self.front.write_server_file(self.server_file, msg)
        elif op == "status":
            self.ops.on_front_status(msg.get("actors") or {})
            self._note_agent_starts(msg.get("actors") or {})
        elif op == "control":
            req = msg.get("req")
            self.ops.request(msg.get("request") or {},
                             lambda reply: self.front.send({"op": "control_reply", "req": req, "reply": reply}))
        else:
            log.warning("supervisor.unknown_op", op=op)

    def _front_exited(self, status: int) -> None:
        running = self.shutdown.running
        why_not = self.front.exited(status, running, len(self.actors))
        if not running:
            self.shutdown.stop_actors()
        elif why_not is not None:
            self.shutdown.give_up(why_not)

    # ── actors ────────────────────────────────────────────────────────────
    def _spawn_actor(self, actor_id: str, session_id: str, warm_only: bool = False) -> None:
        """Give the front an actor for a session: a warm one if ready, else a fresh fork.

        ``warm_only`` (a client connected, no turn yet): a warm one or ``no_warm``. A second
        ask for the same actor (its turn came) forks one only if the first found none.
        """
        if actor_id in self.spawner.by_id:
            return  # the warm one was handed over at the first ask
        if not self.shutdown.running:
            self.front.send({"op": "spawn_failed", "actor_id": actor_id, "message": "server is shutting down"})
            return
        t0 = time.perf_counter()
        warm = self.pool.take()
        if warm is None and warm_only:
            self.front.send({"op": "no_warm", "actor_id": actor_id})
            return
        warm_id = None
        if warm is not None:
            actor, chan_front = warm
            warm_id = actor.actor_id
            self.spawner.rename(actor, actor_id, session_id)
            try:
                actor.lifeline.send(orjson.dumps({"op": "assign", "actor_id": actor_id, "session_id": session_id}))
            except ChannelClosed:
                pass  # it is exiting; the front hears of it from the exit notice
        else:
            try:
                actor, chan_front = self.spawner.fork_actor(actor_id, session_id)
            except OSError as exc:
                log.error("supervisor.spawn_failed", actor_id=actor_id, error=str(exc))
                self.front.send({"op": "spawn_failed", "actor_id": actor_id, "message": f"fork failed: {exc}"})
                return
        self.front.send({"op": "spawned", "actor_id": actor_id, "pid": actor.pid}, [chan_front.detach()])
        log.info("supervisor.actor_assigned", actor_id=actor_id, actor_pid=actor.pid, session_id=session_id,
                 warm=warm is not None, warm_id=warm_id, ms=round((time.perf_counter() - t0) * 1000, 2))
        if warm is not None:
            self._refill_at = self._refill_at or time.monotonic() + REFILL_DELAY
        else:
            self._refill_pool()

    def _refill_pool(self) -> None:
        """Fork warm actors up to the pool's size, unless failures put it in backoff."""
        while self.shutdown.running and self.pool.wants_one(time.monotonic()):
            try:
                actor, chan_front = self.spawner.fork_actor(uuid.uuid4().hex[:16], "")
            except OSError as exc:
                log.error("supervisor.warm_spawn_failed", error=str(exc))
                self.pool.failed(time.monotonic())
                return
            self.pool.add(actor, chan_front)

    def _note_agent_starts(self, rows: dict[str, Any]) -> None:
        """The front's report: an actor past ``starting`` has made its agent; it may end a pause."""
        if not self.pool.start_failures:
            return
        for actor_id, row in rows.items():
            pid = self.spawner.by_id.get(str(actor_id))
            actor = self.actors.get(pid) if pid is not None else None
            if actor is None or not isinstance(row, dict) or row.get("state") in (None, "starting"):
                continue
            if self.pool.agent_started(actor.serial):
                log.info("supervisor.warm_pool_resumed", reason="the agent started", actor_id=actor.actor_id)
                self._refill_pool()
            if not self.pool.start_failures:
                return

    def _agent_failed(self, actor: Actor, message: str) -> None:
        """An actor's agent factory raised (warm or not): count it; a streak pauses the pool."""
        if self.pool.agent_failed(actor.serial, message):
            log.error("supervisor.warm_pool_paused", cause=message, failures=self.pool.start_failures,
                      note="the agent failed to start in every new actor; no warm actor is forked until "
                           "one starts (a new session's turn forks its own) or SIGHUP")
            sd_notify(f"STATUS=the agent cannot start: {message[:200]}")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.front.pid:
                self._front_exited(status)
            elif self.spawner.is_zygote(pid):
                self.spawner.zygote_exited(pid, status)
            elif (actor := self.spawner.forget(pid)) is not None:
                self._actor_exited(actor, status)
            # else: an orphaned grandchild we adopted as subreaper; reaped, nothing more

    def _actor_exited(self, actor: Actor, status: int) -> None:
        read_last_word(actor)
        actor.lifeline.close()
        was_warm = self.pool.discard(actor.pid)
        killpg(actor.pid, signal.SIGKILL)  # whatever the agent left running in its group
        cause = describe_status(status)
        message = actor.killed_for or cause.message
        kind = actor.kill_kind or (
            f"signal_{cause.signal_name}" if cause.signal is not None
            else "clean" if cause.exitcode == 0 else f"exit_{cause.exitcode}"
        )
        self.ops.on_exit(actor, kind)
        log.info("supervisor.actor_exited", **log_ids(actor), actor_pid=actor.pid,
                 exitcode=cause.exitcode, signal=cause.signal_name, cause=message, warm=was_warm)
        if cause.exitcode == EXIT_AGENT_FAILED and self.shutdown.running:
            self._agent_failed(actor, message)
        if was_warm:
            if self.shutdown.running:
                delay = self.pool.failed(time.monotonic())  # a warm actor should not die: back off
                log.warning("supervisor.warm_actor_died", cause=message,
                            retry_in=None if self.pool.paused else round(delay, 2), paused=self.pool.paused)
            return
        if self.stage != "stopping_actors":
            self.front.send({
                "op": "exit",
                "actor_id": actor.actor_id,
                "pid": actor.pid,
                "exitcode": cause.exitcode,
                "signal": cause.signal_name,
                "message": message,
                "code": actor.kill_code,
            })

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
                log.warning("supervisor.actor_over_memory", **log_ids(actor), actor_pid=actor.pid,
                            rss_mb=rss // limits.MIB, limit_mb=limit // limits.MIB)
                killpg(actor.pid, signal.SIGKILL)

    # ── every turn of the loop ────────────────────────────────────────────
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
        if self.front.restart_at is not None and now >= self.front.restart_at and self.shutdown.running:
            log.info("supervisor.front_restart", restarts=self.front.restarts)
            self._start_front()
        self.shutdown.tick(now)

    def _cleanup(self) -> None:
        # Everything is stopped: a late Ctrl-C or SIGTERM must not turn a clean exit into
        # a death by signal (Python restores default handlers while it finalizes).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        if self.control is not None:
            self.control.shutdown()
        self.pool.close()
        self.spawner.retire_zygote()
        self.front.close_channel()
        for actor in self.actors.values():
            actor.lifeline.close()
        try:
            self.server_file.unlink()
        except FileNotFoundError:
            pass
        log.info("supervisor.exit", code=self.shutdown.exit_code, uptime=round(time.time() - self.started, 1))
