"""Who is at the other end of a control connection: an operator, or one of our own processes?

Actors run as the server's uid, so ``SO_PEERCRED``'s uid cannot tell an
operator's shell from an agent. Its pid can: the supervisor is a child
subreaper (``spawn.become_subreaper``), so every process it started, and every
process those started, stays its descendant for as long as it lives, even one
that double-forked and called ``setsid`` (an orphan is re-parented to its
nearest subreaper, never out of the tree). A peer whose ``/proc`` parent
chain reaches the supervisor is refused; so is one whose chain cannot be read
to the end, or that exits while it is read.

A pid can be reused once its process is reaped. Where the kernel gives a
pidfd of the peer (``SO_PEERPIDFD``, Linux 6.5), it pins the process that
connected: the peer must be alive before the chain is read and still alive
after it is read twice, so the chain read is the one of the process that
connected. On older kernels the pidfd is opened from the pid right after
``accept`` (``pidfd_open``, Linux 5.3); the one race left there needs the
peer to exit and its pid to go to a process outside the server's tree
between ``connect`` and ``accept``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import select
import socket
import struct
from typing import Callable

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
MAX_DEPTH = 4096  # longer parent chains than any real one; a loop guard

PpidReader = Callable[[int], int]


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    pid: int
    uid: int
    reason: str = ""  # why refused
    chain: tuple[int, ...] = ()  # the peer and its ancestors, as read


def read_ppid(pid: int) -> int:
    """The parent pid of ``pid`` from ``/proc/PID/stat``. Raises OSError if it is gone."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it
    try:
        return int(data[data.rindex(b")") + 2:].split(None, 2)[1])
    except (ValueError, IndexError):
        raise OSError(errno.EIO, f"/proc/{pid}/stat is unreadable: {data[:80]!r}") from None


def ancestry(pid: int, read: PpidReader = read_ppid, stop_at: int = 0) -> tuple[int, ...]:
    """``pid`` and its ancestors up to a process whose parent is 0 (init, or outside our pid
    namespace), or up to ``stop_at``.

    Raises OSError when a process of the chain is gone before it is read.
    """
    chain = [pid]
    while len(chain) <= MAX_DEPTH:
        parent = read(chain[-1])
        if parent <= 0 or parent == stop_at:
            if parent == stop_at:
                chain.append(parent)
            return tuple(chain)
        if parent in chain:
            raise OSError(errno.ELOOP, f"parent chain loops at {parent}")
        chain.append(parent)
    raise OSError(errno.ELOOP, "parent chain too long")


def judge(pid: int, uid: int, own_uid: int, own_pid: int, read: PpidReader = read_ppid,
          alive: Callable[[], bool] = lambda: True) -> Verdict:
    """Allowed only for a live peer of our uid that does not descend from ``own_pid``.

    ``alive`` says whether the peer that connected still runs (its pidfd);
    it is asked before the chain is read, and after it is read twice.
    """
    if uid != own_uid:
        return Verdict(False, pid, uid, f"uid {uid} is not the server's ({own_uid})")
    if pid <= 0:
        return Verdict(False, pid, uid, "the peer's pid is unknown (another pid namespace?)")
    if not alive():
        return Verdict(False, pid, uid, "the peer exited before the check")
    try:
        chain = ancestry(pid, read, stop_at=own_pid)
        if own_pid in chain[1:]:  # refused: no need to read further, nor to read it again
            return Verdict(False, pid, uid, "a process the server started (an actor or its child)", chain)
        # Read again: a link that changed means a process of the chain exited meanwhile,
        # and a pid read after that may belong to another process.
        for child, parent in zip(chain, chain[1:]):
            if read(child) != parent:
                raise OSError(errno.EAGAIN, f"process {child} changed parents during the check")
    except OSError as exc:
        return Verdict(False, pid, uid, f"the peer's process chain could not be read: {exc.strerror or exc}")
    if not alive():
        return Verdict(False, pid, uid, "the peer exited during the check", chain)
    return Verdict(True, pid, uid, "", chain)


def peer_pidfd(sock: socket.socket, pid: int) -> int | None:
    """A pidfd of the peer: ``SO_PEERPIDFD``, else ``pidfd_open(pid)``; None when neither exists.

    Raises ProcessLookupError when the peer is already gone.
    """
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.EINVAL):  # the peer has exited (EINVAL: its pid has no task)
            raise ProcessLookupError(exc.errno, "the peer has exited") from None
        if exc.errno != errno.ENOPROTOOPT:
            raise
    if pid <= 0 or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            return None
        raise


def _pidfd_alive(fd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(0)


def check(sock: socket.socket, own_pid: int | None = None) -> Verdict:
    """Judge the peer of an accepted Unix socket (see the module's docstring)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    own_pid = os.getpid() if own_pid is None else own_pid
    if uid != os.getuid():
        return Verdict(False, pid, uid, f"uid {uid} is not the server's ({os.getuid()})")
    try:
        pidfd = peer_pidfd(sock, pid)
    except OSError as exc:
        return Verdict(False, pid, uid, f"the peer exited before the check ({exc.strerror or exc})")
    try:
        alive = (lambda: _pidfd_alive(pidfd)) if pidfd is not None else (lambda: True)
        return judge(pid, uid, os.getuid(), own_pid, read_ppid, alive)
    finally:
        if pidfd is not None:
            os.close(pidfd)
