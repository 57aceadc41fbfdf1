"""The actor's end of its channel to the front: frames out that a blocked event loop cannot hold back.

An agent runs on the actor's event loop and may block it right after it
yields (a synchronous HTTP call, ``time.sleep``, a CPU-bound tool, a C
extension): whatever the loop was going to write later is then stuck, and
lost for good when the stop ladder kills the process. So the bytes that are
not yet in the kernel's socket buffer are never left to the loop alone.

* A frame that is the first of its loop turn is written at once (one
  non-blocking ``send``): a sparse stream is written as it is yielded.
* Frames yielded after it, in the same loop turn, are queued and written
  together at the end of that turn (or each time 64 KiB pile up): a burst or
  a flood still goes out in few writes.
* While anything is queued, the *flusher* thread is armed. If the bytes are
  still there after :data:`GRACE` seconds (the loop did not come round: it is
  blocked), it writes them itself; and when the kernel's buffer is full (the
  front reads slower than the agent yields) it waits for the socket to be
  writable and drains the queue, whether or not the loop is running.

There is no transport buffer behind this one: the queue (:attr:`Channel.out`)
is everything not yet handed to the kernel, so the thread can reach all of it.
Frames keep their order and are never written twice: producers (the loop's
thread) only append; whoever writes holds :attr:`Channel._lock`, copies the
head of the queue, sends it and removes exactly what the kernel took. The
thread needs the GIL, so an extension that holds the GIL while it blocks still
holds the frames back (most release it around blocking calls).

Reading uses the loop (``add_reader``); the socket is this object's alone and is
closed only under the lock, so the thread never writes to a descriptor number
reused for something else.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from typing import Any, Callable

import orjson

from navi_actor import framing, logs

#: Seconds the loop has to write queued frames itself before the flusher thread does. A
#: flood is written by the loop in 64 KiB batches, and by the flusher at most once per GRACE.
GRACE = 0.002
FLUSH_BYTES = 64 * 1024  # queued bytes that are written without waiting for the loop turn's end
HIGH_WATER = 1024 * 1024  # queued bytes past which the agent is paused (``writable`` cleared)
LOW_WATER = HIGH_WATER // 4  # ... and below which it runs again
MAX_CHUNK = 256 * 1024  # bytes offered to one send
READ_SIZE = 256 * 1024
POLL_MS = 50  # the flusher's longest wait for a writable socket, between checks of ``closed``

_HEADER_PACK = framing.HEADER.pack
_NOSIGNAL = socket.MSG_NOSIGNAL

log = logs.get("navi.actor.channel")


class Channel:
    """One connection to a front: framed bytes in (to ``on_message``), framed bytes out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 on_message: Callable[[dict[str, Any]], None], on_lost: Callable[[Channel], None],
                 allow_thread: bool = True) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.on_message = on_message
        self.on_lost = on_lost
        self.decoder = framing.FrameDecoder(framing.MAX_FRONT_FRAME)
        #: Set while the agent may yield; cleared past HIGH_WATER queued bytes.
        self.writable = asyncio.Event()
        self.writable.set()
        self.out = bytearray()  # every byte not yet handed to the kernel, in order
        self.closed = False  # no more writes: the front is gone or the channel was closed
        self._tick_open = False  # a frame of this loop turn went out already; the rest wait for its end
        self._lock = threading.Lock()  # held by whoever writes (loop or flusher)
        self._armed = False
        self._urgent = False  # the kernel's buffer is full: drain without the grace
        self._backlog = False  # the kernel's buffer was full: the flusher drains, the loop only queues
        self._wake = threading.Event()  # armed: there are bytes the loop may not write
        self._hurry = threading.Event()  # the kernel's buffer is full: cut the grace short
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._paused = False
        self._resume_pending = False
        self._reading = True
        #: False: no flusher thread may start yet (the actor is not confined); the loop
        #: then looks again every GRACE instead, which a blocked loop cannot do.
        self.allow_thread = allow_thread
        self._loop_timer: asyncio.TimerHandle | None = None
        loop.add_reader(self.fd, self._on_readable)

    def __repr__(self) -> str:
        return f"<Channel fd={self.fd} queued={len(self.out)} closed={self.closed}>"

    # ── output, on the loop's thread ──────────────────────────────────────
    def send(self, data: bytes) -> None:
        """Write framed bytes now (control messages), after everything queued before them."""
        self.out += data
        self.flush()

    def send_event(self, data: bytes) -> None:
        """Queue one event's JSON as an ``E`` frame: written now if it is the first of its loop turn."""
        out = self.out
        out += _HEADER_PACK(len(data) + 1)
        out += b"E"
        out += data
        if self._tick_open:
            if len(out) >= FLUSH_BYTES:
                self.flush()
            elif not self._armed:
                self._arm()
            return
        self._tick_open = True
        self.loop.call_soon(self._end_tick)
        self.flush()

    def _end_tick(self) -> None:
        self._tick_open = False
        if self.out:
            self.flush()

    def flush(self) -> None:
        """Hand the kernel what it takes now; leave the rest to the flusher thread."""
        out = self.out
        if not out:
            return
        with self._lock:
            if self.closed:
                out.clear()
                return
            if not self._backlog:  # else the flusher waits for the socket: a send now would only fail
                self._backlog = self._write_locked()
            if not self._backlog:
                return
        if len(out) > HIGH_WATER and not self._paused:
            self._paused = True
            self.writable.clear()
        self._urgent = True
        self._arm()
        self._hurry.set()

    def _arm(self) -> None:
        if self.closed:
            return
        if not self.allow_thread:
            if self._loop_timer is None:
                self._loop_timer = self.loop.call_later(GRACE, self._loop_flush)
            return
        self._armed = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)
            self._thread.start()
        self._wake.set()

    def _loop_flush(self) -> None:
        """The flusher's work, done by the loop while no thread may start."""
        self._loop_timer = None
        with self._lock:
            if self.closed:
                return
            self._backlog = self._write_locked()
        if self.out:
            self._arm()
        self._resume()

    def _resume(self) -> None:
        self._resume_pending = False
        if self._paused:
            if len(self.out) <= LOW_WATER or self.closed:
                self._paused = False
                self.writable.set()
            else:
                self._arm()  # the flusher resumes us once it has written enough

    # ── output, either thread ─────────────────────────────────────────────
    def _write_locked(self) -> bool:
        """Send from the head of the queue until it is empty; True if the kernel's buffer is full.

        The caller holds the lock. Only the head is removed, and only what was
        sent: the loop may append while ``send`` runs without the GIL.
        """
        out = self.out
        try:
            while out:
                chunk = bytes(out) if len(out) <= MAX_CHUNK else bytes(out[:MAX_CHUNK])
                n = self.sock.send(chunk, _NOSIGNAL)
                del out[:n]
                if n < len(chunk):
                    return True
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:  # the front is gone (EPIPE, ECONNRESET): the replay buffer keeps the events
            self.closed = True
            out.clear()
            log.info("actor.channel_write_failed", error=str(exc))
            try:
                self.loop.call_soon_threadsafe(self._resume)
            except RuntimeError:  # the loop is closed: the actor is exiting
                pass
        return False

    # ── the flusher thread ────────────────────────────────────────────────
    def _run(self) -> None:
        try:
            self._flusher()
        except Exception:  # never silently: a dead flusher is a loop-blocking agent's lost events
            log.exception("actor.flusher_failed")

    def _flusher(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        out = self.out
        while True:
            self._wake.wait()
            if self._stopping:
                return
            if not self._urgent:  # the loop's own write at the end of its turn comes first
                self._hurry.wait(GRACE)
            self._hurry.clear()
            while True:
                self._urgent = False
                if self._stopping:
                    return
                with self._lock:
                    blocked = False if self.closed else self._write_locked()
                    self._backlog = blocked
                if self._paused and len(out) <= LOW_WATER and not self._resume_pending:
                    self._resume_pending = True
                    try:
                        self.loop.call_soon_threadsafe(self._resume)
                    except RuntimeError:  # the loop is closed: the actor is exiting
                        return
                if blocked:
                    poller.poll(POLL_MS)  # without the GIL, until the front has read some
                    continue
                if out:  # the loop is appending (a flood): look again after the grace
                    self._hurry.wait(GRACE)
                    self._hurry.clear()
                    continue
                # Nothing queued: disarm. The loop appends (or pauses), then arms if not
                # armed; so disarm first, then look once more, and nothing can be missed.
                self._armed = False
                self._wake.clear()
                if out or self._stopping or (self._paused and not self._resume_pending):
                    self._armed = True
                    continue
                break

    # ── input ─────────────────────────────────────────────────────────────
    def spin_read(self, seconds: float) -> bool:
        """Poll for input without sleeping, for up to ``seconds``; True if a read was done.

        An idle actor that is told a turn is coming waits this way, so that the
        turn is read as it lands, not after the 0.1-0.25 ms that waking a sleeping
        process costs on a VM. Between polls the CPU goes to any other runnable
        process (``sched_yield``). Blocks the loop: call it only with nothing to run.
        """
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        deadline = time.monotonic() + seconds
        while self._reading:
            if poller.poll(0):
                self._on_readable()
                return True
            if time.monotonic() >= deadline:
                break
            os.sched_yield()
        return False

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        try:
            for body in self.decoder.feed(data):
                self.on_message(orjson.loads(body))
        except (framing.FrameError, orjson.JSONDecodeError) as exc:
            log.error("actor.channel_bad_frame", error=str(exc))
            self._lost()

    def _lost(self) -> None:
        self.close()
        self.on_lost(self)

    # ── the end ───────────────────────────────────────────────────────────
    def drain(self, timeout: float) -> None:
        """Write what is queued, blocking the loop for up to ``timeout`` seconds (an actor on its way out)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self.closed and self._write_locked() and time.monotonic() < deadline:
                select.select([], [self.sock], [], max(0.0, deadline - time.monotonic()))

    def close(self, linger: float = 0.0) -> None:
        """Stop reading and writing, and close the socket; idempotent.

        ``linger``: seconds to keep writing what is queued first (blocking the loop).
        """
        if self._reading:
            self._reading = False
            try:
                self.loop.remove_reader(self.fd)
            except Exception:  # the loop is closed
                pass
        if self._loop_timer is not None:
            self._loop_timer.cancel()
        self.drain(linger)
        with self._lock:
            if not self.closed:
                self.closed = True
                self.out.clear()
                self.sock.close()
        self._stopping = True
        self._wake.set()
        self._hurry.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        if self._paused:
            self._paused = False
            self.writable.set()
