"""Actors fork from a zygote: an idle copy of the preloaded supervisor.

After ``fork`` every page is shared until one side writes to it. The
supervisor goes on running after each fork (its loop, its logs, its memory
checks) and wrote to about 400 of its pages each time. The child was then the
only process left holding those pages' old copies. They counted in the
actor's own memory (USS) though it never touched them, and each one cost the
supervisor a copy-on-write fault. The zygote is forked once, right after the
template is frozen, and then only waits on one socket, so what actors share
with it stays shared.

Actors stay the supervisor's children. The zygote creates them with
``clone(CLONE_PARENT)``, which gives the new process the zygote's own parent,
so the supervisor reaps them, reads their exit status and signals them as
when it forked them itself. Python has no call for that flag, so
:class:`Clone` does what ``os.fork`` does around the system call: the public C
API ``PyOS_BeforeFork``, ``PyOS_AfterFork_Child`` and ``PyOS_AfterFork_Parent``
(locks, at-fork hooks such as ``random``'s reseeding). Like glibc's ``fork``, it
asks the kernel to write the child's thread id into the C library's thread
descriptor (``CLONE_CHILD_SETTID``, at the address ``PR_GET_TID_ADDRESS``
gives). Where that cannot be done (not Linux on x86-64 or aarch64, a kernel
without ``PR_GET_TID_ADDRESS``), or with ``--no-zygote``, or when the zygote
fails, the supervisor forks the actor itself, as it always did.

Protocol, over a ``SOCK_SEQPACKET`` socketpair, one message each way per actor:
supervisor → ``{"actor_id", "session_id"}`` with two descriptors (the actor's
ends of its channel and of its lifeline); zygote → ``{"pid": N}``, or
``{"error": "…", "errno": N}`` when ``clone`` failed (as a fork can: EAGAIN,
ENOMEM). The zygote exits when the supervisor closes its end.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import sys
import threading
from typing import Callable

import orjson

from supervisor import proctitle, spawn

CLONE_PARENT = 0x00008000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_CHILD_SETTID = 0x01000000
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_GET_TID_ADDRESS = 40
_CLONE_NR = {"x86_64": 56, "aarch64": 220}  # SYS_clone
NAME = b"navi-zygote"  # its /proc/PID/comm, as ps and top show it
# Seconds the supervisor waits for a pid before it gives up on the zygote (a clone
# takes ~2 ms); the supervisor's loop waits with it, so this is kept short.
REPLY_TIMEOUT = 2.0
MAX_REQUEST = 4096

ActorMain = Callable[[str, str, int, int], int]


class Unsupported(Exception):
    """This platform cannot clone a sibling process safely."""


class ZygoteFailed(Exception):
    """The zygote did not answer as it should (it died, hung or garbled): fork without it."""


_LIBC: ctypes.PyDLL | None = None


def _libc() -> ctypes.PyDLL:
    # PyDLL, not CDLL: the GIL stays held across the call, as os.fork holds it.
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.PyDLL(None, use_errno=True)
    return _LIBC


def _ulong(value: int) -> ctypes.c_ulong:
    return ctypes.c_ulong(value)


class Clone:
    """``os.fork()``, except that the child's parent is the caller's parent.

    Built in the process that will clone, on its only thread: the thread-id
    address it records belongs to that thread.
    """

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise Unsupported(f"clone() is Linux only, this is {sys.platform}")
        machine = os.uname().machine
        nr = _CLONE_NR.get(machine)
        if nr is None:
            raise Unsupported(f"no clone() binding for {machine}")
        if threading.current_thread() is not threading.main_thread() or threading.active_count() != 1:
            raise Unsupported("clone() needs a single-threaded process")
        libc = _libc()
        addr = ctypes.c_void_p()
        if libc.prctl(ctypes.c_int(PR_GET_TID_ADDRESS), ctypes.byref(addr), _ulong(0), _ulong(0), _ulong(0)) != 0:
            err = ctypes.get_errno()
            raise Unsupported(f"prctl(PR_GET_TID_ADDRESS): {os.strerror(err)}")
        if not addr.value or ctypes.c_int.from_address(addr.value).value != threading.get_native_id():
            raise Unsupported("the C library's thread-id address does not hold this thread's id")
        flags = CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | signal.SIGCHLD
        # clone(flags, stack, parent_tid, child_tid, tls) on x86-64; tls before child_tid elsewhere
        if machine == "x86_64":
            args = (flags, 0, 0, addr.value, 0)
        else:
            args = (flags, 0, 0, 0, addr.value)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._args = (ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))

    def __call__(self) -> int:
        """0 in the child, the child's pid in the caller. Raises OSError as os.fork does."""
        sys.audit("os.fork")
        api = ctypes.pythonapi
        api.PyOS_BeforeFork()
        pid = self._syscall(*self._args)
        if pid == 0:
            api.PyOS_AfterFork_Child()
            return 0
        err = ctypes.get_errno()
        api.PyOS_AfterFork_Parent()
        if pid < 0:
            raise OSError(err, f"clone failed: {os.strerror(err)}")
        return int(pid)


def unsupported_reason() -> str | None:
    """Why actors cannot come from a zygote here, or None when they can."""
    try:
        Clone()
    except Unsupported as exc:
        return str(exc)
    return None


def _set_name(name: bytes) -> None:
    buf = ctypes.create_string_buffer(name[:15])
    _libc().prctl(ctypes.c_int(PR_SET_NAME), buf, _ulong(0), _ulong(0), _ulong(0))


def _get_name() -> bytes:
    buf = ctypes.create_string_buffer(16)
    _libc().prctl(ctypes.c_int(PR_GET_NAME), buf, _ulong(0), _ulong(0), _ulong(0))
    return buf.value


def serve(sock: socket.socket, actor_main: ActorMain, supervisor_pid: int, keep: tuple[int, ...] = ()) -> int:
    """The zygote's whole life: wait for a request, clone an actor, answer with its pid."""
    clone = Clone()
    own_name = _get_name()
    proctitle.set_title(NAME.decode(), comm=NAME)  # its title, as ps -f shows it, and its kernel name
    sock.setblocking(True)
    # What the supervisor froze before forking us stays out of the GC's way;
    # the few objects each request makes are freed by reference counting.
    gc.freeze()
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, 2)
        if not msg:
            return 0  # the supervisor closed its end: shutdown, reload or its death
        try:
            req = orjson.loads(msg)
            actor_id, session_id = str(req["actor_id"]), str(req["session_id"])
            if len(fds) != 2:
                raise ValueError(f"expected 2 descriptors, got {len(fds)}")
            pid = clone()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            for fd in fds:
                os.close(fd)
            sock.send(orjson.dumps({"error": str(exc), "errno": getattr(exc, "errno", None) or 0}))
            continue
        if pid == 0:
            _set_name(own_name)
            fd, life_fd = fds
            spawn.run_child(
                lambda: actor_main(actor_id, session_id, fd, life_fd),
                (fd, life_fd, *keep),
                parent=supervisor_pid,
                new_group=True,
                death_signal=0,
            )
        for fd in fds:
            os.close(fd)
        sock.send(orjson.dumps({"pid": pid}))


class Zygote:
    """The supervisor's handle on one zygote process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(cls, actor_main: ActorMain, keep: tuple[int, ...] = ()) -> Zygote:
        """Fork a zygote from this (the supervisor's) process. Raises OSError.

        ``keep``: descriptors the zygote and its actors inherit besides their own.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        supervisor_pid = os.getpid()
        try:
            pid = spawn.fork_child(
                lambda: serve(theirs, actor_main, supervisor_pid, keep),
                (theirs.fileno(), *keep),
                new_group=False,
                death_signal=signal.SIGKILL,
            )
        except OSError:
            ours.close()
            theirs.close()
            raise
        theirs.close()
        ours.settimeout(REPLY_TIMEOUT)
        return cls(pid, ours)

    def fork_actor(self, actor_id: str, session_id: str, fd: int, life_fd: int) -> int:
        """The new actor's pid. Raises OSError if clone failed, ZygoteFailed if the zygote did."""
        body = orjson.dumps({"actor_id": actor_id, "session_id": session_id})
        try:
            socket.send_fds(self.sock, [body], [fd, life_fd])
            reply = self.sock.recv(MAX_REQUEST)
        except TimeoutError:
            raise ZygoteFailed(f"no answer in {REPLY_TIMEOUT:g} s") from None
        except OSError as exc:
            raise ZygoteFailed(f"its socket failed: {exc}") from None
        if not reply:
            raise ZygoteFailed("it closed its socket (it died)")
        try:
            answer = orjson.loads(reply)
            if "pid" in answer:
                pid = int(answer["pid"])
                if pid <= 0:
                    raise ValueError(f"pid {pid}")
                return pid
            err = int(answer.get("errno") or 0)
            message = str(answer.get("error"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ZygoteFailed(f"a garbled answer: {exc}") from None
        if err:
            raise OSError(err, message)
        raise ZygoteFailed(message)

    def close(self) -> None:
        """Stop it with SIGKILL (it holds nothing worth a goodbye). Reaping is the caller's."""
        self.sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
