"""Drop every capability, for good: what keeps an actor of a root server from being root.

A server run as root (CI does) forks actors as uid 0 with every capability:
CAP_DAC_OVERRIDE reads any file, CAP_KILL signals any process, CAP_SYS_PTRACE
reads any memory. Landlock still confines such a process, but capabilities
also reach what Landlock does not watch (raw sockets, kernel keyrings, device
nodes opened before). So an actor sheds them all, in every set (bounding,
ambient, permitted, effective, inheritable), and locks the securebits so that
uid 0 regains none through ``execve`` (``SECBIT_NOROOT``).

It keeps uid 0: switching to another uid would lose the Python installation
where it lives in root's home (``/root/.pyenv``, as on this project's
machines). Files root owns but others cannot read (``/etc/shadow``, host keys)
stay readable by uid 0 as their owner; the Landlock policy leaves them out
(see :mod:`navi_actor.sandbox.policy`).
"""

from __future__ import annotations

import ctypes
import os

from navi_actor.sandbox import _libc

PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
LOCKED_BITS = (SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED
               | SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_DataPair = _Data * 2  # made here: ctypes caches array types, and a cache entry made in an actor is a private page


def _c() -> ctypes.CDLL:
    return _libc.load()


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def current() -> tuple[int, int, int]:
    """Effective, permitted and bounding capability masks of this thread (``/proc/self/status``)."""
    values = {}
    with open("/proc/thread-self/status", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            if key in (b"CapEff", b"CapPrm", b"CapBnd"):
                values[key] = int(rest.strip(), 16)
    return values.get(b"CapEff", 0), values.get(b"CapPrm", 0), values.get(b"CapBnd", 0)


def needed() -> bool:
    """Whether this thread holds any capability worth dropping (root, or file capabilities)."""
    eff, prm, _bnd = current()
    return os.geteuid() == 0 or eff != 0 or prm != 0


def _get() -> tuple[int, int]:
    """Effective and permitted sets of the calling thread (``capget``; the low 64 capabilities)."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _DataPair()
    if _c().capget(ctypes.byref(header), data) != 0:
        raise _fail("capget")
    return (data[0].effective | data[1].effective << 32, data[0].permitted | data[1].permitted << 32)


def drop_all(last: int | None = None) -> None:
    """Shed every capability of the calling thread and lock it out of regaining them.

    ``last`` is :func:`last_cap`, read by the caller ahead of time.
    """
    libc = _c()
    if last is None:
        last = last_cap()
    _eff, prm = _get()
    if prm & (1 << 8):  # CAP_SETPCAP: needed for the bounding set and the securebits
        if libc.prctl(PR_SET_SECUREBITS, LOCKED_BITS, 0, 0, 0) != 0:
            raise _fail("PR_SET_SECUREBITS")
        for cap in range(last + 1):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
                raise _fail(f"PR_CAPBSET_DROP({cap})")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on old kernels: none to clear
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _DataPair()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")
    eff, prm = _get()
    if eff or prm:
        raise OSError(1, f"capabilities remain after dropping them (effective {eff:#x}, permitted {prm:#x})")
