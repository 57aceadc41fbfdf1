"""Per-actor memory limit (uWSGI's evil-reload-on-rss, made explicit).

The supervisor samples each actor's resident memory every second, and every
tenth sample its child processes' too, and kills an actor over the limit.
The full sample is one pass over the process table for every actor (walking
each actor's children separately would read the table once per actor:
quadratic with thousands of actors); the others read one small file per
actor, so a supervisor with thousands of actors is not held up. The decision is :func:`over_limit`, kept apart so it is
plain to test.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import psutil

MIB = 1024 * 1024


def over_limit(rss: int, limit: int) -> bool:
    """True when ``rss`` bytes exceed a positive ``limit`` (0 disables the limit)."""
    return limit > 0 and rss > limit


def tree_rss(roots: Iterable[int]) -> dict[int, int]:
    """Resident bytes of each root process plus all its descendants, from one table scan."""
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for proc in psutil.process_iter(["ppid", "memory_info"]):
        info = proc.info
        mem = info.get("memory_info")
        if mem is None:
            continue
        rss[proc.pid] = mem.rss
        if info.get("ppid"):
            children[info["ppid"]].append(proc.pid)
    out = {}
    for root in roots:
        if root not in rss:
            continue
        total, stack = 0, [root]
        while stack:
            pid = stack.pop()
            total += rss.get(pid, 0)
            stack.extend(children.get(pid, ()))
        out[root] = total
    return out


_PAGE = psutil.PAGESIZE if hasattr(psutil, "PAGESIZE") else 4096


def own_rss(pids: Iterable[int]) -> dict[int, int]:
    """Resident bytes of each process alone: one small read of /proc/PID/statm each.

    Cheap enough to do for thousands of actors every second; :func:`tree_rss`
    (which adds the children) scans the whole process table and runs less often.
    """
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                out[pid] = int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return out


def memory_message(limit: int) -> str:
    return f"agent process exceeded its memory limit of {limit // MIB} MB and was killed"
