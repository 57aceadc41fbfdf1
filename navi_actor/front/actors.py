"""The front's handle on one actor process: its pipe, its state, how it ended.

Frames from the actor are parsed and checked here (:mod:`navi_actor.framing`)
before the runtime sees them; a frame that breaks the protocol marks the actor
as violating and nothing more it sends is read. Death is known from two
sources — end of file on the pipe and the supervisor's exit notice (with the
cause) — and :meth:`ActorHandle.wait_gone` waits for both, briefly, so that no
event already in the pipe is lost and the cause is known before the runtime
explains the death.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Protocol

from navi_actor import framing, logs
from navi_actor.front.runs import Run, RunViewer

log = logs.get("navi.front.actors")
parse_event = framing.parse_event
_EVENT_TAG = framing.EVENT_TAG

GONE_WAIT = 1.0  # seconds to wait for the second sign of death after the first


class ActorEvents(Protocol):
    def on_actor_event(self, actor: ActorHandle, event: dict[str, Any], payload: bytes) -> None: ...
    def on_actor_control(self, actor: ActorHandle, msg: dict[str, Any]) -> None: ...
    def on_actor_violation(self, actor: ActorHandle, reason: str) -> None: ...


class ActorHandle(asyncio.Protocol):
    def __init__(self, actor_id: str, session_id: str, owner: ActorEvents) -> None:
        self.actor_id = actor_id
        self.session_id = session_id
        self.owner = owner
        self.pid: int | None = None
        self.run: Run | None = None
        self.resumes: dict[int, RunViewer] = {}  # viewers waiting for its finished turn (front/resume.py)
        self.idle_since = time.monotonic()
        self.retiring = False  # told to shut down; takes no new turn
        self.requested_at: float | None = None  # when the front asked for it (None: adopted)
        #: Asked for when a client connected, before any turn (only a warm one is taken); cleared
        #: by the session's first turn (ActorSet.claim).
        self.prebound = False
        self.fatal: dict[str, Any] | None = None  # the actor's own last word
        self.violation: str | None = None
        self.exit: dict[str, Any] | None = None  # the supervisor's exit notice
        self.eof = asyncio.Event()
        self.exited = asyncio.Event()
        self.hello = asyncio.Event()
        self.gone_handled = False
        self.transport: asyncio.Transport | None = None
        self.has_channel = False  # its channel's descriptor arrived (it may still be connecting)
        self._outbox: list[bytes] = []
        self._decoder = framing.FrameDecoder(framing.MAX_ACTOR_FRAME)

    def __repr__(self) -> str:
        return f"<ActorHandle {self.actor_id} pid={self.pid} session={self.session_id}>"

    @property
    def alive(self) -> bool:
        return not (self.eof.is_set() or self.exited.is_set() or self.violation)

    def take_channel(self, fd: int, pid: int) -> None:
        """The supervisor passed this actor's channel: connect to it (reads start soon)."""
        self.pid = pid
        self.has_channel = True
        asyncio.get_running_loop().create_task(self.connect(fd, pid))

    async def connect(self, fd: int, pid: int) -> None:
        """Take over the front's end of the actor's socketpair."""
        self.pid = pid
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        if self._outbox:
            transport.write(b"".join(self._outbox))
            self._outbox.clear()

    def send(self, msg: dict[str, Any]) -> None:
        data = framing.control(msg)
        if self.transport is None:
            self._outbox.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.violation:
            return
        on_event = self.owner.on_actor_event
        try:
            for body in self._decoder.feed(data):
                if body[0] == _EVENT_TAG:
                    payload = body[1:]
                    on_event(self, parse_event(payload), payload)
                else:
                    self.owner.on_actor_control(self, framing.parse_control(body))
                if self.violation:
                    return
        except framing.FrameError as exc:
            self.owner.on_actor_violation(self, str(exc))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof.set()  # the owner's _watch waits on it, with the exit notice

    def note_exit(self, notice: dict[str, Any]) -> None:
        self.exit = notice
        self.exited.set()
        if not self.has_channel:
            self.eof.set()  # no channel ever came: nothing can be left in a pipe

    async def wait_hello_or_gone(self, timeout: float) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (self.hello, self.eof, self.exited)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def wait_gone(self) -> None:
        """Wait for end of file and the exit notice, each at most GONE_WAIT after the other."""
        waits = [asyncio.ensure_future(self.eof.wait()), asyncio.ensure_future(self.exited.wait())]
        try:
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending, timeout=GONE_WAIT)
        finally:
            for w in waits:
                w.cancel()

    def death_message(self) -> str:
        """Why the actor is gone, for the people watching its session."""
        if self.violation:
            return f"agent process broke the pipe protocol ({self.violation}) and was killed"
        if self.fatal:
            return str(self.fatal.get("message"))
        if self.exit:
            return str(self.exit.get("message"))
        return "agent process stopped answering (its pipe closed)"

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

