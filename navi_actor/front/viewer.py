"""One connected WebSocket client: an ordered, byte-bounded outbox and its writer.

Everything a client receives goes through :meth:`Viewer.send`, so replay,
live events, errors and ``session_sync`` keep their order. The outbox
(:mod:`navi_actor.front.outbox`) merges the text of a backed-up stream and is
bounded: a client that cannot keep up past ``max_pending`` bytes is closed
with code 4008 and told the ``seq`` to resume from (``?after=``) — the runtime
never queues without bound for a slow client.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiohttp import web

from navi_actor import logs
from navi_actor.front.outbox import Outbox
from navi_actor.front.runs import Run, RunActor
from navi_actor.front.wsframes import FrameWriter

log = logs.get("navi.front.viewer")

CLOSE_TOO_SLOW = 4008
_ids = itertools.count(1)


class Viewer:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request, session_id: str, max_pending: int) -> None:
        self.id = next(_ids)
        self.ws = ws
        self.out = FrameWriter(request, ws)
        self.session_id = session_id
        self.max_pending = max_pending
        self.run: Run | None = None  # the run it receives live events of
        self.needs_sync = False  # send session_sync when that run ends
        self.resume_after: int | None = None  # the ?after= it connected with
        self.resuming: RunActor | None = None  # waiting for this actor's finished turn (front/resume.py)
        self.resume_timer: asyncio.TimerHandle | None = None  # gives up on that answer
        self.delivered_seq = 0  # highest seq written to the socket
        self.principal: Any = None  # who it is (tokens.Principal), set by the WebSocket handler
        self.relay: Any = None  # front.relay.RelayLink while another node's stream serves it
        self.closed = False
        # Merge text only when well backed up (a client truly behind), never in the normal
        # lag of a fast stream: one WebSocket message per event is the rule.
        self._pending = Outbox(max_pending, coalesce_at=min(1024 * 1024, max_pending // 4))
        self._loop = asyncio.get_running_loop()
        self._flush_soon = False  # a _flush is scheduled for this loop turn
        self._slow = False  # the writer task is sending through aiohttp (paused socket, deflate)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing waits to be written
        self._idle.set()
        self._task = self._loop.create_task(self._writer())

    def __repr__(self) -> str:
        return f"<Viewer {self.id} session={self.session_id} {self._pending!r}>"

    def send(self, data: bytes, seq: int = 0, delta: str | None = None) -> None:
        """Queue one text frame; ``seq`` (when the frame has one) tracks resume points;
        ``delta`` is its text when it is a plain stream_delta (mergeable)."""
        if self.closed:
            return
        if not self._pending.push(data, seq, delta):
            self._too_slow()
            return
        self._idle.clear()
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """At the end of the loop turn: everything queued goes out in one write (one syscall).

        This is a plain callback, not a task woken per event: at thousands of
        sparse streams the wake-up was a good part of the front's cost. When
        the socket is paused (a slow client) or frames are compressed, the
        writer task sends through aiohttp instead, which waits for the drain.
        """
        self._flush_soon = False
        if self._slow or self._task.done():
            return  # the writer task is at it (it comes back here when done), or the viewer left
        pending = self._pending
        if not pending:
            self._idle.set()
            return
        out = self.out
        if not out.can_batch:
            self._slow = True
            self._wake.set()
            return
        batch, last = pending.take_all()
        try:
            out.write_batch(batch)
        except (ConnectionError, RuntimeError):
            self.closed = True  # the client went away; its reader sees the close
            self._idle.set()  # nothing more will be written: do not keep flush_and_close waiting
            return
        if last:
            self.delivered_seq = last
        self._idle.set()

    async def _writer(self) -> None:
        """The slow path: one frame at a time through aiohttp, waiting while the socket is paused."""
        out = self.out
        pending = self._pending
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    while pending and not out.can_batch:
                        data, seq = pending.pop()
                        await out.send_one(data)
                        if seq:
                            self.delivered_seq = seq
                finally:
                    self._slow = False
                self._flush()  # what is left, in one write, now that the socket takes it
        except (ConnectionError, RuntimeError):
            self.closed = True  # the client went away; its reader sees the close
        except asyncio.CancelledError:
            pass

    def _too_slow(self) -> None:
        self.closed = True
        self._pending.clear()
        log.warning("front.client_too_slow", session_id=self.session_id, viewer=self.id,
                    resume_after=self.delivered_seq)
        self._task.cancel()
        reason = f"too slow; resume with ?after={self.delivered_seq}"
        asyncio.get_running_loop().create_task(
            self.ws.close(code=CLOSE_TOO_SLOW, message=reason.encode())
        )

    async def flush_and_close(self, code: int, message: str) -> None:
        """Let queued frames go out (briefly), then close the socket."""
        if not self.closed:
            self.closed = True
            try:
                await asyncio.wait_for(self._idle.wait(), 1.0)
            except TimeoutError:
                pass
        self._task.cancel()
        await self.ws.close(code=code, message=message.encode())

    def detach(self) -> None:
        self.closed = True
        self._task.cancel()
