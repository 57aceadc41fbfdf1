"""The supervisor's side of the front: its process, its channel, its restarts.

The front is forked with one end of a socketpair (length-framed JSON and
passed descriptors, supervisor/fdchannel.py). Messages from it are handed to
the supervisor's ``on_message``; messages to it go through :meth:`Front.send`,
which queues what the socket cannot take yet (the loop watches for
writability while anything is queued).

When the front dies, the actors go on running; the next front adopts each
of them through its lifeline (:meth:`Front.hand_over`). Restarts are limited
by a :class:`~supervisor.restart.RestartPolicy` (pure); a front that exits
with EXIT_CANNOT_START is not restarted at all.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
import structlog

from supervisor import spawn
from supervisor.actors import Actor, killpg
from supervisor.causes import EXIT_CANNOT_START, describe_status
from supervisor.fdchannel import ChannelClosed, FdChannel
from supervisor.hooks import Hooks
from supervisor.notify import sd_notify
from supervisor.restart import RestartPolicy

log = structlog.get_logger("navi.supervisor")


class Front:
    """The front process: start, talk, restart (within the policy's limit), and who it serves."""

    def __init__(self, hooks: Hooks, sel: selectors.BaseSelector, restart: RestartPolicy,
                 on_message: Callable[[dict[str, Any]], None], on_closed: Callable[[], None]) -> None:
        self.hooks = hooks
        self.sel = sel
        self.restart = restart
        self._on_message = on_message
        self._on_closed = on_closed
        self.pid: int | None = None
        self.chan: FdChannel | None = None
        self.generation = 0  # fronts started so far
        self.restarts = 0
        self.restart_at: float | None = None  # monotonic time of the next restart, when one is due

    def start(self, assigned: Iterable[Actor]) -> None:
        """Fork a front and hand it every actor that has a session."""
        self.restart_at = None
        self.generation += 1
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        pid = spawn.fork_child(lambda: self.hooks.front_main(fd), (fd, *self.hooks.front_fds), new_group=False)
        theirs.close()
        self.pid = pid
        self.chan = FdChannel(ours)
        self.sel.register(ours, selectors.EVENT_READ, self._on_io)
        assigned = list(assigned)
        log.info("supervisor.front_started", front_pid=pid, generation=self.generation, adopting=len(assigned))
        for actor in assigned:
            self.hand_over(actor)

    def hand_over(self, actor: Actor) -> None:
        """Connect a running actor to the new front with a fresh socketpair."""
        try:
            to_front, to_actor = socket.socketpair()
        except OSError as exc:
            log.error("supervisor.adopt_failed", actor_id=actor.actor_id, error=str(exc))
            killpg(actor.pid, signal.SIGKILL)
            return
        try:
            actor.lifeline.send(orjson.dumps({"op": "front"}), [to_actor.detach()])
        except ChannelClosed:
            to_front.close()
            return  # it is exiting; its exit notice follows
        self.send(
            {"op": "adopt", "actor_id": actor.actor_id, "pid": actor.pid, "session_id": actor.session_id},
            [to_front.detach()],
        )

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        """Send the front a message (and descriptors); with no front, the descriptors are closed."""
        chan = self.chan
        if chan is None:
            for fd in fds or ():
                os.close(fd)
            return
        try:
            chan.send(orjson.dumps(msg), fds)
        except ChannelClosed:
            return
        self._watch_writes()

    def _watch_writes(self) -> None:
        if self.chan is not None:
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.chan.wants_write else 0)
            self.sel.modify(self.chan.sock, mask, self._on_io)

    def _on_io(self, mask: int) -> None:
        chan = self.chan
        if chan is None:
            return
        try:
            if mask & selectors.EVENT_WRITE:
                chan.flush()
            if mask & selectors.EVENT_READ:
                for body in chan.receive():
                    self._on_message(orjson.loads(body))
        except ChannelClosed:
            self.close_channel()
            return
        self._watch_writes()

    def close_channel(self) -> None:
        if self.chan is not None:
            self.sel.unregister(self.chan.sock)
            self.chan.close()
            self.chan = None
            self._on_closed()

    def kill(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)

    def exited(self, status: int, running: bool, actors: int) -> str | None:
        """The front was reaped. While running, schedule its restart; return why not, if it must
        not be restarted (the supervisor then gives up). None otherwise."""
        cause = describe_status(status, "front process")
        self.pid = None
        self.close_channel()
        if not running:
            log.info("supervisor.front_exited", exitcode=cause.exitcode, signal=cause.signal_name)
            return None
        log.error("supervisor.front_died", cause=cause.message, actors=actors)
        # Actors keep running their turns; the next front adopts them.
        if cause.exitcode == EXIT_CANNOT_START:
            return "the front cannot start; see its log line above"
        if self.restart.record(time.monotonic()):
            self.restarts += 1
            self.restart_at = time.monotonic() + self.restart.delay()
            return None
        return f"the front died {self.restart.limit} times within {self.restart.period:.0f}s"

    def write_server_file(self, server_file: Path, msg: dict[str, Any]) -> None:
        """The front listens (its ``ready``): say where, in ``server.json``, the log and to systemd."""
        info = {
            "pid": os.getpid(),
            "front_pid": self.pid,
            "host": msg.get("host"),
            "port": msg.get("port"),
            "url": f"http://{msg.get('host')}:{msg.get('port')}",
        }
        tmp = server_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(info))
            tmp.replace(server_file)
        except OSError as exc:  # a full disk must not take the supervisor down with a restarted front
            log.error("supervisor.server_file_failed", path=str(server_file), error=str(exc))
        log.info("supervisor.serving", url=info["url"], front_pid=self.pid)
        if self.generation == 1:
            print(f"navi-actor: serving on {info['url']} (Ctrl-C to stop)", flush=True)
        sd_notify(f"READY=1\nSTATUS=serving on {info['url']}\nMAINPID={os.getpid()}")
