"""Process titles, so ``ps``, ``top`` and ``htop`` tell the server's processes apart.

Two names per process, as gunicorn and PostgreSQL do: the title (the command
line ``ps -f`` and ``htop`` show), set with setproctitle, and the kernel's
15-byte name (``comm``: what ``top``, ``ps -o comm`` and ``pgrep`` match)::

    navi-actor: supervisor                 navi-supervisor
    navi-actor: front                      navi-front
    navi-zygote                            navi-zygote
    navi-actor: actor SESSION STATE        navi-actor

setproctitle writes over the process's original argument and environment
block, after copying the environment elsewhere; the supervisor calls it only
once its secrets are out of the environment (navi_actor/sandbox.py). Setting
a title costs a few microseconds; it is done on state changes only, never
per event, and not at all when the title is unchanged.
"""

from __future__ import annotations

import ctypes
import sys

import setproctitle as _spt

PR_SET_NAME = 15
_title: str | None = None
_comm: bytes | None = None
_libc: ctypes.CDLL | None = None


def set_title(title: str, comm: bytes | None = None) -> None:
    """Set this process's title, and its kernel name when ``comm`` is given (at most 15 bytes)."""
    global _title
    changed = title != _title
    if changed:
        _title = title
        _spt.setproctitle(title)  # it sets the kernel name too, to the title's first 15 bytes ...
    want = comm if comm is not None else _comm
    if want is not None and (changed or want != _comm):
        _set_comm(want)  # ... so ours is put (back)


def set_comm(comm: bytes) -> None:
    """Set only the kernel's name of this process (``/proc/PID/comm``)."""
    _set_comm(comm)


def _set_comm(comm: bytes) -> None:
    global _comm, _libc
    _comm = comm[:15]
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(_comm), 0, 0, 0)


def actor_title(session_id: str, state: str) -> str:
    """``navi-actor: actor SESSION STATE``; a warm actor has no session yet (``-``)."""
    return f"navi-actor: actor {session_id or '-'} {state}"
