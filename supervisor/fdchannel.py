"""A non-blocking framed channel over a Unix socket that can carry descriptors.

The supervisor hands the front one end of each actor's socketpair with
``SCM_RIGHTS``. Descriptors arrive attached to the first byte of the frame
they were sent with; :class:`FdChannel` queues them in arrival order and the
receiver takes one per message that announces one (FIFO), so framing and
descriptors cannot get out of step. The caller drives it from its own loop
(selectors in the supervisor, asyncio ``add_reader`` in the front).
"""

from __future__ import annotations

import array
import os
import socket
from collections import deque

from navi_actor.framing import HEADER, FrameDecoder

MAX_FDS_PER_READ = 64
MAX_CONTROL_FRAME = 1024 * 1024


class ChannelClosed(Exception):
    """The peer closed the channel."""


class FdChannel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.decoder = FrameDecoder(MAX_CONTROL_FRAME)
        self.fds: deque[int] = deque()
        self._out: deque[tuple[memoryview, list[int]]] = deque()

    def fileno(self) -> int:
        return self.sock.fileno()

    def __repr__(self) -> str:
        return f"<FdChannel fd={self.sock.fileno()} pending_out={len(self._out)} fds={len(self.fds)}>"

    # ── reading ───────────────────────────────────────────────────────────
    def receive(self) -> list[bytes]:
        """Read what is there; return whole bodies. Raises ChannelClosed on EOF."""
        bodies: list[bytes] = []
        fd_size = array.array("i").itemsize
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    65536, socket.CMSG_SPACE(MAX_FDS_PER_READ * fd_size)
                )
            except (BlockingIOError, InterruptedError):
                return bodies
            except ConnectionResetError:
                # The peer closed with our last message unread. What it wrote before
                # closing was read above: a dead actor's last word must not be lost.
                if bodies:
                    return bodies
                raise ChannelClosed("connection reset") from None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - (len(payload) % fd_size)])
                    self.fds.extend(fds)
            if not data:
                if bodies:
                    return bodies
                raise ChannelClosed("peer closed the channel")
            bodies.extend(self.decoder.feed(data))

    def take_fd(self) -> int:
        if not self.fds:
            raise RuntimeError("a message announced a descriptor that did not arrive")
        return self.fds.popleft()

    # ── writing ───────────────────────────────────────────────────────────
    def send(self, body: bytes, fds: list[int] | None = None) -> None:
        """Queue one frame and try to write it now.

        The channel owns ``fds`` from here: they are closed once sent (or when
        the channel closes), so a deferred send never loses its descriptor.
        """
        self._out.append((memoryview(HEADER.pack(len(body)) + body), list(fds or ())))
        self.flush()

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def flush(self) -> bool:
        """Write what the socket takes; True when nothing is left queued."""
        while self._out:
            view, fds = self._out[0]
            try:
                if fds:
                    sent = socket.send_fds(self.sock, [view], fds)
                else:
                    sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                return False
            except (BrokenPipeError, ConnectionResetError):
                self._drop_out()
                raise ChannelClosed("peer closed the channel") from None
            _close_all(fds)  # the peer has its own copies now
            if sent < len(view):
                self._out[0] = (view[sent:], [])  # descriptors went with the first byte
                return False
            self._out.popleft()
        return True

    def _drop_out(self) -> None:
        for _view, fds in self._out:
            _close_all(fds)
        self._out.clear()

    def close(self) -> None:
        self._drop_out()
        _close_all(self.fds)
        self.fds.clear()
        self.sock.close()


def _close_all(fds: "list[int] | deque[int]") -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
