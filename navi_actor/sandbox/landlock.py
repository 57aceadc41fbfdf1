"""Landlock, through its three system calls (ctypes; no library does ABI 4-7 well).

Landlock lets an unprivileged process restrict itself: which files it may
read, write or execute (beneath given folders), which TCP ports it may bind or
connect to, and whether it may signal or reach abstract UNIX sockets of
processes outside its own domain. Rules only ever add rights to a layer, and a
layer only ever narrows what the process already had.

The ABI is read from the kernel at run time (:func:`abi`): each version adds
rights (see :data:`FS_BY_ABI`), and a right the kernel does not know is left out
of the ruleset rather than failing it. What this module does not do is decide
the policy: that is :mod:`navi_actor.sandbox.policy`.

Two kernel facts shape the callers:

* a ruleset restricts the *calling thread* (and what it later starts); before
  ABI 8 other threads keep their rights, so apply it while single-threaded;
* descriptors opened before keep their access, so an actor opens nothing it
  must not have before it restricts itself.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from typing import Iterable

from navi_actor.sandbox import _libc

SYS_CREATE_RULESET = 444  # the same number on every architecture
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1

RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# Filesystem rights (include/uapi/linux/landlock.h).
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

#: Every filesystem right each ABI knows.
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
FS_ALL_LATEST = (1 << 16) - 1
#: The rights that apply to a file (not a folder); the rest only to folders.
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = FS_ALL_LATEST  # everything, folders included
DEVICE = READ_FILE | WRITE_FILE | IOCTL_DEV | TRUNCATE

# Network rights (ABI 4).
BIND_TCP = 1 << 0
CONNECT_TCP = 1 << 1

# Scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

ABI_NET = 4
ABI_SCOPES = 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _syscall() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    return _libc.load().syscall


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


_abi: int | None = None


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    global _abi
    if _abi is None:
        if not sys.platform.startswith("linux"):
            _abi = 0
        else:
            version = _syscall()(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
            _abi = max(int(version), 0)
    return _abi


def fs_rights(version: int) -> int:
    """Every filesystem right the ABI ``version`` handles."""
    if version <= 0:
        return 0
    return FS_BY_ABI.get(version, FS_ALL_LATEST)


class Ruleset:
    """One Landlock ruleset (a descriptor): add rules, then :meth:`restrict_self`.

    ``fs`` is the set of filesystem rights the ruleset handles (denied unless a
    rule allows them), ``net`` the TCP rights, ``scopes`` the scopes; each is
    cut to what the running kernel knows.
    """

    def __init__(self, fs: int, net: int = 0, scopes: int = 0, version: int | None = None) -> None:
        self.abi = abi() if version is None else version
        if self.abi <= 0:
            raise OSError(95, "Landlock is not available in this kernel")
        self.fs = fs & fs_rights(self.abi)
        self.net = net if self.abi >= ABI_NET else 0
        self.scopes = scopes if self.abi >= ABI_SCOPES else 0
        attr = _RulesetAttr(self.fs, self.net, self.scopes)
        size = 24 if self.abi >= ABI_SCOPES else 16 if self.abi >= ABI_NET else 8
        self.fd = _check(_syscall()(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
                         "landlock_create_ruleset")

    def allow_fd(self, fd: int, access: int, is_dir: bool = True) -> None:
        """Allow ``access`` beneath the file or folder open (``O_PATH`` is enough) as ``fd``."""
        allowed = access & self.fs
        if not is_dir:
            allowed &= FILE_RIGHTS
        if not allowed:
            return
        attr = _PathBeneath(allowed, fd)
        _check(_syscall()(SYS_ADD_RULE, self.fd, RULE_PATH_BENEATH, ctypes.byref(attr), 0),
               "landlock_add_rule(path)")

    def allow_path(self, path: str, access: int) -> None:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            self.allow_fd(fd, access, stat.S_ISDIR(os.fstat(fd).st_mode))
        finally:
            os.close(fd)

    def allow_port(self, port: int, access: int) -> None:
        allowed = access & self.net
        if not allowed:
            return
        attr = _NetPort(allowed, port)
        _check(_syscall()(SYS_ADD_RULE, self.fd, RULE_NET_PORT, ctypes.byref(attr), 0),
               "landlock_add_rule(port)")

    def allow_ports(self, ports: Iterable[int], access: int) -> None:
        for port in ports:
            self.allow_port(port, access)

    def restrict_self(self) -> None:
        """Confine the calling thread (and what it starts later) to this ruleset, in a new domain.

        Needs ``PR_SET_NO_NEW_PRIVS`` (or CAP_SYS_ADMIN).
        """
        _check(_syscall()(SYS_RESTRICT_SELF, self.fd, 0), "landlock_restrict_self")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Ruleset":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
