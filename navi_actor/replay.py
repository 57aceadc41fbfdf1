"""The replay buffer of one turn: complete, compact, bounded in bytes.

A client that reconnects mid-turn must see everything the turn has streamed,
from its first delta. The original endpoint kept the last 500 events and so
lost the start of long turns. This buffer keeps every event but merges runs
of consecutive ``stream_delta`` (or ``thinking_delta``) events into one entry:
a turn of 100,000 one-word deltas costs about its text plus 4 bytes a delta
(the offset that lets a resume split a merged run at any ``seq``). Text is
counted in characters, so the bound is about bytes for ASCII text and
undercounts up to 4x for wide characters.

The bound: past ``max_bytes`` the oldest entries are dropped and the buffer
says so (``truncated``), so a replay is never silently incomplete. With
merging, only a turn whose text and tool results exceed the bound gets there.
Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections import deque
from typing import Any

import orjson

MERGEABLE = ("stream_delta", "thinking_delta")
_JOIN_EVERY = 256  # parts joined into one chunk, keeping merge linear
_ENTRY_OVERHEAD = 64  # rough bytes of bookkeeping per entry


class _Merged:
    """Consecutive deltas of one type, seq ``first``..``last``."""

    __slots__ = ("kind", "first", "last", "chunks", "parts", "ends", "length")

    def __init__(self, kind: str, seq: int, delta: str) -> None:
        self.kind = kind
        self.first = seq
        self.last = seq
        self.chunks: list[str] = []
        self.parts = [delta]
        self.length = len(delta)
        self.ends = array("I", [self.length])  # text offset after each seq (4 bytes each)

    def add(self, seq: int, delta: str) -> None:
        self.last = seq
        self.parts.append(delta)
        if len(self.parts) >= _JOIN_EVERY:
            self.chunks.append("".join(self.parts))
            self.parts = []
        self.length += len(delta)
        self.ends.append(self.length)

    def text_after(self, after: int) -> str:
        text = "".join(self.chunks) + "".join(self.parts)
        if after < self.first:
            return text
        return text[self.ends[after - self.first] :]

    def encode_after(self, after: int) -> bytes:
        return orjson.dumps({"type": self.kind, "delta": self.text_after(after), "seq": self.last})


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayStats:
    """A snapshot of a buffer's size."""

    events: int
    entries: int
    bytes: int
    dropped_events: int
    max_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReplaySlice:
    """The events after a seq, as client JSON bytes, and whether some are gone."""

    events: list[bytes]
    truncated: bool
    first_seq: int | None  # the oldest seq still held, None when empty


class ReplayBuffer:
    """Every event of one turn after ``stream_start``, compacted; see module doc."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: deque[_Merged | tuple[int, bytes]] = deque()
        self._bytes = 0
        self._events = 0
        self._dropped = 0
        self._last_seq = 0

    def __repr__(self) -> str:
        return (
            f"<ReplayBuffer events={self._events} entries={len(self._entries)} "
            f"bytes={self._bytes}/{self.max_bytes} dropped={self._dropped}>"
        )

    def __len__(self) -> int:
        return self._events

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def _check_seq(self, seq: int) -> None:
        if seq <= self._last_seq:
            raise ValueError(f"seq {seq} does not follow {self._last_seq}")
        self._last_seq = seq

    def append_delta(self, kind: str, seq: int, delta: str) -> None:
        """Add a plain ``{type, delta, seq}`` delta event, merging it if it follows one."""
        self._check_seq(seq)
        self._events += 1
        last = self._entries[-1] if self._entries else None
        if type(last) is _Merged and last.kind == kind and last.last == seq - 1:
            last.add(seq, delta)
            self._bytes += len(delta) + 4
        else:
            self._entries.append(_Merged(kind, seq, delta))
            self._bytes += len(delta) + _ENTRY_OVERHEAD
        if self._bytes > self.max_bytes:
            self._enforce_bound()

    def append(self, seq: int, encoded: bytes) -> None:
        """Add any other event, kept as the exact bytes the client got."""
        self._check_seq(seq)
        self._events += 1
        self._entries.append((seq, encoded))
        self._bytes += len(encoded) + _ENTRY_OVERHEAD
        if self._bytes > self.max_bytes:
            self._enforce_bound()

    def end(self, seq: int, encoded: bytes) -> bool:
        """Add the turn's terminal event, keeping the finished turn for a late resume.

        Older entries make room for it as for any event, so the buffer stays
        within ``max_bytes`` and ends with it. When the event alone is over the
        bound nothing can be kept: it returns False and adds nothing (the
        caller drops the buffer).
        """
        if len(encoded) + _ENTRY_OVERHEAD > self.max_bytes:
            return False
        self.append(seq, encoded)
        return True

    def _enforce_bound(self) -> None:
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            old = self._entries.popleft()
            if type(old) is _Merged:
                self._bytes -= old.length + 4 * (len(old.ends) - 1) + _ENTRY_OVERHEAD
                self._dropped += len(old.ends)
            else:
                self._bytes -= len(old[1]) + _ENTRY_OVERHEAD
                self._dropped += 1

    def after(self, after: int | None) -> ReplaySlice:
        """Return every held event with ``seq > after`` (all of them for ``None``)."""
        floor = -1 if after is None else after
        out: list[bytes] = []
        for entry in self._entries:
            if type(entry) is _Merged:
                if entry.last > floor:
                    out.append(entry.encode_after(floor))
            elif entry[0] > floor:
                out.append(entry[1])
        first = self._first_seq()
        truncated = self._dropped > 0 and (first is None or floor < first - 1)
        return ReplaySlice(out, truncated, first)

    def _first_seq(self) -> int | None:
        if not self._entries:
            return None
        head = self._entries[0]
        return head.first if type(head) is _Merged else head[0]

    def statistics(self) -> ReplayStats:
        return ReplayStats(self._events, len(self._entries), self._bytes, self._dropped, self.max_bytes)

    @staticmethod
    def is_plain_delta(event: dict[str, Any]) -> bool:
        """True for a delta event with no field but type, delta and seq."""
        return (
            event.get("type") in MERGEABLE
            and type(event.get("delta")) is str
            and len(event) == 3
            and "seq" in event
        )


class EndedTurn:
    """A finished turn kept for clients that resume it late: its start, its replay, its
    final event last. Kept within the buffer's bound (see :meth:`ReplayBuffer.end`)."""

    __slots__ = ("run_id", "start", "buffer")

    def __init__(self, run_id: str, start: dict[str, Any], buffer: ReplayBuffer) -> None:
        self.run_id = run_id
        self.start = start
        self.buffer = buffer

    def __repr__(self) -> str:
        return f"<EndedTurn {self.run_id} {self.buffer!r}>"

    @classmethod
    def keep(cls, run_id: str, start: dict[str, Any], buffer: ReplayBuffer, final_seq: Any,
             final: bytes) -> EndedTurn | None:
        """The turn with its final event (seq ``final_seq``, JSON ``final``) added to
        ``buffer``; None, keeping nothing, when that event alone is over the bound."""
        if type(final_seq) is not int or final_seq <= buffer.last_seq or not buffer.end(final_seq, final):
            return None
        return cls(run_id, start, buffer)

    @property
    def last_seq(self) -> int:
        """The final event's seq."""
        return self.buffer.last_seq

    def covers(self, after: int | None) -> bool:
        """True for a cursor in this turn or just before its ``stream_start``.

        An older cursor missed earlier turns too, which only the history holds;
        a newer one is not of this session's last turn; None is no cursor.
        """
        return after is not None and self.start["seq"] - 1 <= after <= self.last_seq
