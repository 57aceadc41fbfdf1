"""The one place processes are forked, and what a child does first.

The supervisor is single-threaded and runs no event loop, so ``fork`` is safe
and cheap: a child starts with the agent module and libraries already imported.
Each child closes every inherited descriptor it was not given, resets signal
handling, asks the kernel to kill it when the supervisor dies, and (actors)
leads its own process group so its whole tree can be signalled at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from typing import Callable, NoReturn

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
EXIT_CHILD_CRASHED = 70  # an uncaught exception escaped a child's main

_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg: int) -> None:
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def become_subreaper() -> None:
    """Adopt orphaned grandchildren, so they are reaped here, not left as zombies."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def fork_child(
    main: Callable[[], int],
    keep_fds: tuple[int, ...],
    *,
    new_group: bool,
    death_signal: int = signal.SIGKILL,
) -> int:
    """Fork; the child runs ``main()`` and exits with its return value.

    ``death_signal`` is sent to the child when the supervisor dies (0: none).
    """
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    run_child(main, keep_fds, parent=parent, new_group=new_group, death_signal=death_signal)


def run_child(
    main: Callable[[], int],
    keep_fds: tuple[int, ...],
    *,
    parent: int,
    new_group: bool,
    death_signal: int,
) -> NoReturn:
    """In a new child: settle its process state, run ``main()``, exit with its return value.

    ``parent`` is the supervisor's pid: a child whose parent is already
    someone else (the supervisor died before this ran) exits at once.
    """
    code = EXIT_CHILD_CRASHED
    try:
        if new_group:
            os.setpgid(0, 0)
        if death_signal:
            _prctl(PR_SET_PDEATHSIG, death_signal)
        if os.getppid() != parent:  # the supervisor died before we got here
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _close_fds_except({0, 1, 2, *keep_fds})
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = EXIT_CHILD_CRASHED
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else EXIT_CHILD_CRASHED)


def _close_fds_except(keep: set[int]) -> None:
    """Close every descriptor but ``keep``: a few close_range() calls, however many are open.

    The supervisor holds two descriptors per actor; closing them one by one
    in each new child made every fork cost more as actors were added.
    """
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (OSError, ValueError):
        return 65536
