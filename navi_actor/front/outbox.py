"""What waits to be written to one client: ordered, bounded in bytes, text merged when backed up.

A client that reads slower than its session streams must neither slow the
others nor grow the front's memory without bound. Frames wait here in order.
Once more than ``coalesce_at`` bytes wait (1 MiB for a viewer: far more than the
normal lag of a fast stream), a text delta that follows another
is merged into it (text is text: the client gets one ``stream_delta`` with the
joined text and the later ``seq``, as a replay would give it), so a backed-up
stream costs about its text. Past ``max_bytes`` the client is too slow and the
caller closes it, telling it where to resume. Pure: no I/O.
"""

from __future__ import annotations

from collections import deque

import orjson

_DELTA_OVERHEAD = 40  # bytes of JSON around a delta's text, for the accounting


class _Entry:
    __slots__ = ("data", "seq", "parts")

    def __init__(self, data: bytes | None, seq: int, parts: list[str] | None) -> None:
        self.data = data  # the frame, or None for merged text not yet encoded
        self.seq = seq
        self.parts = parts  # the text of a plain stream_delta, mergeable

    def encode(self) -> bytes:
        if self.data is None:
            assert self.parts is not None
            self.data = orjson.dumps({"type": "stream_delta", "delta": "".join(self.parts), "seq": self.seq})
        return self.data


class Outbox:
    def __init__(self, max_bytes: int, coalesce_at: int = 64 * 1024) -> None:
        self.max_bytes = max_bytes
        self.coalesce_at = coalesce_at
        self.bytes = 0
        self.merged = 0  # deltas folded into an earlier one
        self._q: deque[_Entry] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def __repr__(self) -> str:
        return f"<Outbox {len(self._q)} frames {self.bytes}/{self.max_bytes} B merged={self.merged}>"

    def push(self, data: bytes, seq: int = 0, delta: str | None = None) -> bool:
        """Queue a frame (``delta``: its text, when it is a plain stream_delta). False: over the bound."""
        q = self._q
        if delta is not None and self.bytes > self.coalesce_at and q and q[-1].parts is not None:
            last = q[-1]
            last.parts.append(delta)
            last.seq = seq
            last.data = None
            self.bytes += len(delta)
            self.merged += 1
        elif delta is not None:
            q.append(_Entry(data, seq, [delta]))
            self.bytes += len(delta) + _DELTA_OVERHEAD
        else:
            q.append(_Entry(data, seq, None))
            self.bytes += len(data)
        return self.bytes <= self.max_bytes

    def take_all(self) -> tuple[list[bytes], int]:
        """Every frame, in order, and the last seq among them (0 if none has one)."""
        frames = [e.encode() for e in self._q]
        last = next((e.seq for e in reversed(self._q) if e.seq), 0)
        self.clear()
        return frames, last

    def pop(self) -> tuple[bytes, int]:
        """The oldest frame and its seq."""
        e = self._q.popleft()
        data = e.encode()
        self.bytes -= (sum(map(len, e.parts)) + _DELTA_OVERHEAD) if e.parts is not None else len(data)
        self.bytes = max(self.bytes, 0)
        return data, e.seq

    def clear(self) -> None:
        self._q.clear()
        self.bytes = 0
