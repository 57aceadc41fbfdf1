"""Where actors come from: the supervisor's table of live actors, and the forks that fill it.

An actor is cloned by the zygote (supervisor/zygote.py) when there is one,
else forked by the supervisor itself (supervisor/spawn.py). Either way it is
the supervisor's child, leads its own process group, and holds two
socketpairs: its channel (the front's end is returned to the caller, to be
passed to the front or kept in the warm pool) and its lifeline (kept here).

If the zygote dies or does not answer, the actor is forked here and a new
zygote is started for the next one; after MAX_ZYGOTE_FAILURES in a row, or
with ``--no-zygote``, or where ``clone`` cannot be used this way, actors are
forked here for good.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import structlog

from supervisor import spawn, zygote
from supervisor.actors import Actor, log_ids
from supervisor.causes import describe_status
from supervisor.fdchannel import FdChannel
from supervisor.hooks import Hooks

log = structlog.get_logger("navi.supervisor")

MAX_ZYGOTE_FAILURES = 3  # zygote failures in a row before actors fork from the supervisor for good


class Spawner:
    """The live actors (by pid and by id), and how new ones are made."""

    def __init__(self, hooks: Hooks, running: Callable[[], bool], on_spawn: Callable[[], None]) -> None:
        self.hooks = hooks
        self._running = running  # False once the supervisor shuts down: no new zygote then
        self._on_spawn = on_spawn
        self.actors: dict[int, Actor] = {}
        self.by_id: dict[str, int] = {}
        self.forked = 0  # actors made since the start; the next one's serial is this + 1
        self.zygote: zygote.Zygote | None = None
        self.zygote_off: str | None = None if hooks.use_zygote else "--no-zygote"
        self.zygote_failures = 0  # since the start, for operators (status, /metrics)
        self._zygote_failures_in_a_row = 0  # at MAX_ZYGOTE_FAILURES actors fork from the supervisor
        self._retired_zygotes: set[int] = set()  # stopped on purpose; reaped quietly

    def start(self) -> None:
        """Start the zygote, where it can be had: before the front, so its pages are the template's."""
        if self.zygote_off is None:
            self.zygote_off = zygote.unsupported_reason()
        if self.zygote_off is None:
            self.ensure_zygote()
        else:
            log.info("supervisor.no_zygote", reason=self.zygote_off, note="actors fork from the supervisor")

    # ── actors ────────────────────────────────────────────────────────────
    def fork_actor(self, actor_id: str, session_id: str) -> tuple[Actor, socket.socket]:
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
        self.forked += 1
        actor = Actor(actor_id, pid, session_id, FdChannel(life_ours), serial=self.forked)
        self.actors[pid] = actor
        self.by_id[actor_id] = pid
        self._on_spawn()
        log.info("supervisor.actor_spawned", **log_ids(actor), actor_pid=pid, warm=not session_id)
        return actor, chan_front

    def rename(self, actor: Actor, actor_id: str, session_id: str) -> None:
        """A warm actor is given its session, and the id the front knows it by."""
        self.by_id.pop(actor.actor_id, None)
        actor.actor_id, actor.session_id = actor_id, session_id
        self.by_id[actor_id] = actor.pid

    def forget(self, pid: int) -> Actor | None:
        """A reaped pid: the actor it was, now out of the table (None if it was no actor)."""
        actor = self.actors.pop(pid, None)
        if actor is not None and self.by_id.get(actor.actor_id) == pid:
            del self.by_id[actor.actor_id]
        return actor

    # ── the zygote ────────────────────────────────────────────────────────
    def ensure_zygote(self) -> zygote.Zygote | None:
        """The running zygote, started if need be; None when actors fork from here."""
        if self.zygote_off is not None or not self._running():
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
        z = self.ensure_zygote()
        if z is None:
            return None
        try:
            pid = z.fork_actor(actor_id, session_id, fd, life_fd)
        except zygote.ZygoteFailed as exc:
            self.retire_zygote()
            self._zygote_failed(str(exc))
            return None
        self._zygote_failures_in_a_row = 0
        return pid

    def zygote_state(self) -> dict[str, Any]:
        """For operators: the zygote's pid (None when there is none), failures, and why it is off."""
        return {"pid": self.zygote.pid if self.zygote is not None else None,
                "failures": self.zygote_failures, "off": self.zygote_off}

    def _zygote_failed(self, why: str) -> None:
        self.zygote_failures += 1
        self._zygote_failures_in_a_row += 1
        if self._zygote_failures_in_a_row >= MAX_ZYGOTE_FAILURES:
            self.zygote_off = f"the zygote failed {self._zygote_failures_in_a_row} times in a row; last: {why}"
            log.error("supervisor.zygote_disabled", reason=why, failures=self._zygote_failures_in_a_row,
                      note="actors fork from the supervisor from now on")
        else:
            log.warning("supervisor.zygote_failed", reason=why, failures=self._zygote_failures_in_a_row,
                        note="a new zygote is started for the next actor")

    def retire_zygote(self) -> None:
        """Stop the zygote (shutdown, or new agent code: the next fork starts a new one)."""
        if self.zygote is not None:
            self._retired_zygotes.add(self.zygote.pid)
            self.zygote.close()
            self.zygote = None

    def is_zygote(self, pid: int) -> bool:
        return pid in self._retired_zygotes or (self.zygote is not None and pid == self.zygote.pid)

    def zygote_exited(self, pid: int, status: int) -> None:
        if pid in self._retired_zygotes:
            self._retired_zygotes.discard(pid)
            return
        if self.zygote is not None:  # the running one died
            self.zygote.sock.close()
            self.zygote = None
        cause = describe_status(status, "zygote")
        if self._running():
            self._zygote_failed(cause.message)
