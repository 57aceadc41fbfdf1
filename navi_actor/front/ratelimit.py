"""A token bucket: how many WebSocket messages one connection may send (``--rate-limit``)."""

from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    """``per_minute`` messages a minute on average, in bursts of up to ``per_minute``; 0: no limit."""

    __slots__ = ("capacity", "rate", "tokens", "last", "clock")

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) when the bucket is empty."""
        if self.capacity <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next token."""
        if self.capacity <= 0 or self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate
