"""The supervisor's control socket: operators list, stop and kill runs through it.

A Unix stream socket in the runtime folder (folder 0700, socket 0600). A
connection from another uid is refused (``SO_PEERCRED``), and so is one from
any process the server started: actors run as the server's uid, so its pid's
ancestry decides (supervisor/peers.py). A refusal is answered with an error,
logged (``control.refused`` with the peer's pid) and counted. One request per
connection: a length-framed JSON object in, one framed JSON object out. It is
served by the supervisor's own loop, so it answers while the front is down or
restarting. The requests themselves are the supervisor's business
(``handler``, which answers through the ``respond`` it is given, at once or
later); this module only moves bytes, safely and without blocking.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable

import orjson
import structlog

from navi_actor.framing import HEADER, FrameDecoder, FrameError
from supervisor import peers

Respond = Callable[[dict[str, Any]], None]

log = structlog.get_logger("navi.supervisor.control")

MAX_REQUEST = 64 * 1024
SOCKET_NAME = "control.sock"
REFUSED_LOG_BURST = 5  # refusals logged per second at most; the rest are counted into the next line
REFUSED = "refused: this connection comes from a process the server started (an actor or its child)"


def runtime_dir(data_dir: Path) -> Path:
    """The folder of the control socket: ``DATA_DIR/run``."""
    return data_dir / "run"


def prepare_runtime_dir(path: Path) -> None:
    """Create the runtime folder 0700; refuse one another user owns or others can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to this user ({os.getuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


class _Conn:
    __slots__ = ("sock", "decoder", "out", "asked")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(MAX_REQUEST)
        self.out = b""
        self.asked = False  # its request is read: nothing more is read from it


class ControlServer:
    """Accept, read one request, answer it, close. Driven by the caller's selector."""

    def __init__(self, path: Path, handler: Callable[[dict[str, Any], Respond], None],
                 on_answer: Callable[[int], None]) -> None:
        """``handler(request, respond)``; ``on_answer(fd)`` once a connection's answer is ready to write."""
        prepare_runtime_dir(path.parent)
        if path.exists() or path.is_symlink():
            path.unlink()  # a stale socket from a server that did not exit cleanly
        self.path = path
        self.handler = handler
        self.on_answer = on_answer
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.conns: dict[int, _Conn] = {}
        self.refused = 0  # connections refused since the start (for operators: status, /metrics)
        self._log_window = (0.0, 0)  # (second, lines logged in it)
        self._unlogged = 0  # refusals not logged since the last line

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> socket.socket | None:
        """Accept one connection; None when refused or none is waiting."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        verdict = peers.check(conn)
        if not verdict.allowed:
            self._refuse(conn, verdict)
            return None
        conn.setblocking(False)
        self.conns[conn.fileno()] = _Conn(conn)
        return conn

    def _refuse(self, conn: socket.socket, verdict: peers.Verdict) -> None:
        self.refused += 1
        try:  # a reply the client can show; never waited for
            conn.send(_frame({"ok": False, "error": REFUSED if verdict.chain else f"refused: {verdict.reason}",
                              "code": "control_refused"}), socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()
        second, logged = self._log_window
        now = time.monotonic()
        if now - second >= 1.0:
            second, logged = now, 0
        if logged >= REFUSED_LOG_BURST:
            self._unlogged += 1
            self._log_window = (second, logged)
            return
        self._log_window = (second, logged + 1)
        log.warning("control.refused", peer_pid=verdict.pid, peer_uid=verdict.uid, reason=verdict.reason,
                    peer_chain=list(verdict.chain[:8]), not_logged_before=self._unlogged, refused=self.refused)
        self._unlogged = 0

    def on_readable(self, fd: int) -> None:
        """Read from a connection; once its request is whole, hand it to the handler."""
        c = self.conns.get(fd)
        if c is None:
            return
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(fd)  # the client left, maybe while its answer was being made
            return
        if c.asked:
            return  # one request per connection: the rest is ignored
        try:
            bodies = c.decoder.feed(data)
        except FrameError as exc:
            c.asked = True
            self._answer(fd, c, {"ok": False, "error": str(exc)})
            return
        if not bodies:
            return
        c.asked = True
        respond = lambda reply: self._answer(fd, c, reply)  # noqa: E731
        try:
            request = orjson.loads(bodies[0])
            if type(request) is not dict:
                raise ValueError("a request is a JSON object")
            self.handler(request, respond)
        except (orjson.JSONDecodeError, ValueError) as exc:
            respond({"ok": False, "error": f"bad request: {exc}"})
        except Exception as exc:  # the handler's bug must not take the supervisor down
            log.exception("control.handler_failed")
            respond({"ok": False, "error": f"internal error: {exc}"})

    def _answer(self, fd: int, c: _Conn, reply: dict[str, Any]) -> None:
        if self.conns.get(fd) is not c or c.out:
            return  # the client left (its descriptor may be another connection's by now), or answered
        c.out = _frame(reply)
        self.on_answer(fd)

    def on_writable(self, fd: int) -> bool:
        """Write the answer; True when done (the connection is then closed)."""
        c = self.conns.get(fd)
        if c is None:
            return True
        try:
            sent = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.close(fd)
            return True
        c.out = c.out[sent:]
        if not c.out:
            self.close(fd)
            return True
        return False

    def socket_of(self, fd: int) -> socket.socket | None:
        c = self.conns.get(fd)
        return c.sock if c else None

    def close(self, fd: int) -> None:
        c = self.conns.pop(fd, None)
        if c is not None:
            c.sock.close()

    def shutdown(self) -> None:
        for fd in list(self.conns):
            self.close(fd)
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _frame(obj: dict[str, Any]) -> bytes:
    body = orjson.dumps(obj)
    return HEADER.pack(len(body)) + body


def request(path: Path, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Client side: send one request to the control socket at ``path``, return the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(_frame(message))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read the request: its answer may be waiting all the same
        decoder = FrameDecoder(64 * 1024 * 1024)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the control connection without answering")
            bodies = decoder.feed(data)
            if bodies:
                return orjson.loads(bodies[0])
