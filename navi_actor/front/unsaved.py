"""Turn results the store could not write, kept by the front for a retry (pure: no I/O).

When ``finish_run`` fails because the database cannot write (a full disk,
an I/O error), the turn still ends for its viewers (``error`` with code
``store_error``), and its result waits here until the store writes again;
the runtime retries the oldest first, every tick, with no time limit.

What is kept is bounded: the results' text (answer, thinking, tool calls)
may take at most ``max_bytes`` in all. Past that, the oldest results are
*reduced*: their text is dropped and what remains is a marker that closes
the run as ``failed`` with code ``store_error``, keeping the text last
checkpointed in the store (``content=None``). A marker is a few hundred
bytes; it is never dropped, so no run stays "running" once the store
writes again (and a server restart marks what is left ``interrupted``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

__all__ = ["Unsaved", "UnsavedResults", "MAX_BYTES", "size_of"]

MAX_BYTES = 16 * 1024 * 1024  #: default bound on the kept results' text, all together


def size_of(result: dict[str, Any]) -> int:
    """Roughly what a result's text costs to keep: its answer, thinking and tool calls."""
    n = len(result.get("content") or "") + len(result.get("thinking") or "")
    for tc in result.get("tool_calls") or ():
        n += len(repr(tc))
    return n


@dataclass
class Unsaved:
    """One turn's result waiting for the store."""

    run_id: str
    session_id: str
    last_seq: int
    result: dict[str, Any]  #: finish_run's keyword arguments (status, content, ...)
    reason: str  #: why the last try failed
    size: int = 0
    reduced: bool = False  #: its text was dropped to stay within the bound
    tries: int = 1
    actor: Any = field(default=None, repr=False)  #: the actor holding its turn_done, if any


class UnsavedResults:
    """Results waiting for the store, oldest first, their text bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: dict[str, Unsaved] = {}  # run id → result, oldest first
        self._sessions: dict[str, int] = {}  # session id → its results here
        self.bytes = 0
        self.reduced_total = 0  #: results whose text was dropped, since the start

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Unsaved]:
        return iter(list(self._items.values()))

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._items

    def waiting_in(self, session_id: str) -> bool:
        """True while a result of this session waits (its next turn is refused meanwhile)."""
        return session_id in self._sessions

    def add(self, item: Unsaved) -> list[Unsaved]:
        """Keep ``item`` (the newest); return the older ones reduced to stay within the bound."""
        self.remove_run(item.run_id)
        item.size = 0 if item.reduced else size_of(item.result)
        self._items[item.run_id] = item
        self._sessions[item.session_id] = self._sessions.get(item.session_id, 0) + 1
        self.bytes += item.size
        reduced = []
        for victim in list(self._items.values()):
            if self.bytes <= self.max_bytes:
                break
            if not victim.reduced:
                self._reduce(victim)
                reduced.append(victim)
        return reduced

    def _reduce(self, item: Unsaved) -> None:
        self.bytes -= item.size
        item.size = 0
        item.reduced = True
        self.reduced_total += 1
        kept_stats = item.result.get("stats")
        item.result = {
            "status": "failed",
            "content": None,  # the store keeps the text it last checkpointed
            "error": f"The answer could not be saved ({item.reason}); more unsaved answers were waiting "
                     f"than the server keeps ({self.max_bytes} bytes of text), so only what was "
                     "checkpointed during the turn is kept.",
            "error_code": "store_error",
            "stats": kept_stats,
        }

    def remove_run(self, run_id: str) -> Unsaved | None:
        """Forget a result (it was saved); the one removed, or None."""
        item = self._items.pop(run_id, None)
        if item is not None:
            self.bytes -= item.size
            n = self._sessions[item.session_id] - 1
            if n:
                self._sessions[item.session_id] = n
            else:
                del self._sessions[item.session_id]
        return item
