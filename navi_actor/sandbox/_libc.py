"""One handle on the C library for the sandbox's system calls, made once in the template.

``ctypes.CDLL(None)`` costs about 0.1 ms; made in every actor it would be on
every actor's start. The template makes it (:func:`load`) before it forks, so
actors find it ready, with the argument and result types already set.
"""

from __future__ import annotations

import ctypes

_libc: ctypes.CDLL | None = None


def load() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.strlen.restype = ctypes.c_size_t
        lib.strlen.argtypes = [ctypes.c_void_p]
        # Looked up here, once: a first lookup in an actor would add to this object's
        # dict, a page the actor shares with the template.
        for name in ("prctl", "capset", "capget"):
            getattr(lib, name)
        _libc = lib
    return _libc
