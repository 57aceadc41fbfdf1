"""Per-actor memory limit (uWSGI's evil-reload-on-rss, made explicit).

The supervisor samples each actor's resident memory, its own and its child
processes' together, and kills an actor over the limit. Sampling is psutil;
the decision is :func:`over_limit`, kept apart so it is plain to test.
"""

from __future__ import annotations

import psutil

MIB = 1024 * 1024


def over_limit(rss: int, limit: int) -> bool:
    """True when ``rss`` bytes exceed a positive ``limit`` (0 disables the limit)."""
    return limit > 0 and rss > limit


def group_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and its descendants; 0 if it is gone."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


def memory_message(limit: int) -> str:
    return f"agent process exceeded its memory limit of {limit // MIB} MB and was killed"
