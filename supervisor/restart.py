"""Restart intensity for the front: at most ``limit`` restarts within ``period``.

OTP's rule: a child that keeps dying is not restarted forever; past the
intensity the supervisor gives up and says why. Pure: the clock is passed in.
"""

from __future__ import annotations

from collections import deque


class RestartPolicy:
    def __init__(self, limit: int = 5, period: float = 60.0, backoff: float = 0.1) -> None:
        if limit < 0 or period <= 0:
            raise ValueError("limit must be >= 0 and period > 0")
        self.limit = limit
        self.period = period
        self.backoff = backoff
        self._times: deque[float] = deque()

    def __repr__(self) -> str:
        return f"<RestartPolicy {len(self._times)}/{self.limit} in {self.period}s>"

    def record(self, now: float) -> bool:
        """Note a death at ``now``; True if a restart is allowed."""
        while self._times and now - self._times[0] > self.period:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def delay(self) -> float:
        """Seconds to wait before the next restart: doubles with each recent one."""
        return min(self.backoff * (2 ** max(len(self._times) - 1, 0)), 2.0)
