"""The SQLite backend's queue of messages waiting for their session's turn, and client ids.

A mixin of `navi_actor.store.sqlite.SQLiteStore` (see the interface for
what each method promises). Queued messages live in their own table, apart
from ``messages``: one enters the messages table only when its turn begins
(`begin_queued`), so a turn's history holds exactly what came before it. A
row's ``ord`` orders the queue: the tail takes ``max + 1``, the head (an
interrupt) ``min - 1``. ``client_message_id`` is unique per session across
both tables, which unique indexes and a check in the same transaction keep.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from typing import Any, Callable, TypeVar, cast

from navi_actor.store.common import (
    load_dict, queue_entry, queued_data, queued_turn, title_from, user_message_data, valid_session_id)
from navi_actor.store.errors import QueueFull, SessionNotFound, StoreError, StoreFailure

__all__ = ["QUEUE_MIGRATION", "QueueMixin", "locked"]

#: Schema version 3: the queue, client message ids, a session's own if_busy policy.
QUEUE_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE queue (
        message_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        ord INTEGER NOT NULL, content TEXT NOT NULL, data TEXT NOT NULL,
        client_message_id TEXT, created_at REAL)""",
    "CREATE INDEX queue_session ON queue(session_id, ord)",
    "CREATE UNIQUE INDEX queue_client_id ON queue(session_id, client_message_id)",
    "ALTER TABLE messages ADD COLUMN client_message_id TEXT",
    "CREATE UNIQUE INDEX messages_client_id ON messages(session_id, client_message_id)",
    "ALTER TABLE sessions ADD COLUMN if_busy TEXT",
)

_F = TypeVar("_F", bound=Callable[..., Any])


def locked(fn: _F) -> _F:
    """Run the method under the store's lock; refuse if the store is closed.

    SQLite's own errors leave as `StoreFailure`, naming the method.
    """
    op = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._conn is None:
                raise StoreError("the session store is closed; open a new one with open_store()")
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise StoreFailure(op, str(exc)) from exc
    return cast(_F, wrapper)


class QueueMixin:
    """The queue's methods; the store gives the connection, its lock and transactions."""

    _lock: threading.RLock
    _conn: sqlite3.Connection | None
    _db: sqlite3.Connection

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...  # SQLiteStore's
    def _session_row(self, session_id: str) -> sqlite3.Row | None: ...  # SQLiteStore's

    def _existing_session(self, session_id: str) -> sqlite3.Row:
        row = self._session_row(session_id)
        if row is None:
            raise SessionNotFound(f"session {session_id!r} does not exist; create it first")
        return row

    def _refuse_seen_client_id(self, session_id: str, client_message_id: str | None) -> None:
        if client_message_id is not None and self._find(session_id, client_message_id) is not None:
            raise StoreError(f"client_message_id {client_message_id!r} was already used in session "
                             f"{session_id!r}; look it up with find_client_message()")

    @locked
    def enqueue(self, session_id: str, message_id: str, *, content: str, agent_content: str,
                images: list[str] | None = None, files: list | None = None,
                client_message_id: str | None = None, at_head: bool = False, limit: int) -> int:
        """Queue a message at the tail (or the head); return its position, 1 being next."""
        now = time.time()
        with self._tx() as db:
            self._existing_session(session_id)
            self._refuse_seen_client_id(session_id, client_message_id)
            length, low, high = db.execute(
                "SELECT COUNT(*), MIN(ord), MAX(ord) FROM queue WHERE session_id = ?", (session_id,)).fetchone()
            if length >= limit:
                raise QueueFull(session_id, length)
            if db.execute("SELECT 1 FROM runs WHERE id = ? UNION ALL SELECT 1 FROM queue WHERE message_id = ?",
                          (message_id, message_id)).fetchone():
                raise StoreError(f"message id {message_id!r} is already used; use a new one")
            ord_ = (low - 1 if at_head else high + 1) if length else 0
            db.execute("INSERT INTO queue (message_id, session_id, ord, content, data, client_message_id,"
                       " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (message_id, session_id, ord_, content, queued_data(agent_content, images, files),
                        client_message_id, now))
        return 1 if at_head else length + 1

    @locked
    def cancel_queued(self, session_id: str, message_id: str) -> bool:
        """Take a queued message out of its session's queue; False if it is not there."""
        if not valid_session_id(session_id):
            return False
        with self._tx() as db:
            cur = db.execute("DELETE FROM queue WHERE session_id = ? AND message_id = ?", (session_id, message_id))
        return cur.rowcount > 0

    @locked
    def queue(self, session_id: str) -> list[dict]:
        """The session's queued messages, next first."""
        if not valid_session_id(session_id):
            return []
        rows = self._db.execute(
            "SELECT message_id, content, data, client_message_id, created_at FROM queue"
            " WHERE session_id = ? ORDER BY ord", (session_id,)).fetchall()
        return [queue_entry(row, i) for i, row in enumerate(rows, 1)]

    @locked
    def queued_sessions(self) -> list[str]:
        """Sessions with queued messages, the one whose next message waits longest first."""
        rows = self._db.execute(
            "SELECT session_id FROM queue GROUP BY session_id ORDER BY MIN(created_at), MIN(rowid)").fetchall()
        return [r[0] for r in rows]

    @locked
    def begin_queued(self, session_id: str) -> dict | None:
        """Begin the turn of the queue's head: the message leaves the queue and is saved, with its run."""
        now = time.time()
        with self._tx() as db:
            row = self._existing_session(session_id)
            head = db.execute("SELECT * FROM queue WHERE session_id = ? ORDER BY ord LIMIT 1",
                              (session_id,)).fetchone()
            if head is None:
                return None
            data = load_dict(head["data"]) or {}
            base = int(row["last_seq"])
            run_id, client_id = head["message_id"], head["client_message_id"]
            db.execute("DELETE FROM queue WHERE message_id = ?", (run_id,))
            self._insert_turn(db, session_id, run_id, base, head["content"], data["agent_content"],
                              len(data.get("images") or []), data.get("files") or [], client_id, True, now)
        return queued_turn(head, data, base)

    def _insert_turn(self, db: sqlite3.Connection, session_id: str, run_id: str, base: int, content: str,
                     agent_content: str, images: int, files: list, client_id: str | None, queued: bool,
                     now: float) -> None:
        """A new running run and its user message (`begin_run` and `begin_queued`)."""
        try:
            db.execute("INSERT INTO runs (id, session_id, status, started_at, first_seq)"
                       " VALUES (?, ?, 'running', ?, ?)", (run_id, session_id, now, base + 1))
        except sqlite3.IntegrityError as e:
            raise StoreError(f"run {run_id!r} already exists; use a new run id") from e
        data = user_message_data(agent_content, images, files, client_id, queued)
        db.execute("INSERT INTO messages (session_id, run_id, role, content, data, created_at, client_message_id)"
                   " VALUES (?, ?, 'user', ?, ?, ?, ?)", (session_id, run_id, content, data, now, client_id))
        db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id))
        title = title_from(content)
        if title:
            db.execute("UPDATE sessions SET title = ? WHERE id = ? AND (title IS NULL OR title = '')",
                       (title, session_id))

    @locked
    def set_if_busy(self, session_id: str, policy: str | None) -> bool:
        """Set (None: clear) the session's own if_busy policy; False if the session does not exist."""
        if not valid_session_id(session_id):
            return False
        with self._tx() as db:
            cur = db.execute("UPDATE sessions SET if_busy = ? WHERE id = ?", (policy, session_id))
        return cur.rowcount > 0

    @locked
    def get_if_busy(self, session_id: str) -> str | None:
        """The session's own if_busy policy; None when it has none (or does not exist)."""
        if not valid_session_id(session_id):
            return None
        row = self._db.execute("SELECT if_busy FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return row[0] if row else None

    @locked
    def find_client_message(self, session_id: str, client_message_id: str) -> dict | None:
        """Where the session's message with this client id is: queued, or which run it began."""
        if not valid_session_id(session_id):
            return None
        return self._find(session_id, client_message_id)

    def _find(self, session_id: str, client_message_id: str) -> dict | None:
        db = self._db
        row = db.execute("SELECT message_id, ord FROM queue WHERE session_id = ? AND client_message_id = ?",
                         (session_id, client_message_id)).fetchone()
        if row is not None:
            ahead = db.execute("SELECT COUNT(*) FROM queue WHERE session_id = ? AND ord < ?",
                               (session_id, row["ord"])).fetchone()[0]
            return {"state": "queued", "message_id": row["message_id"], "position": ahead + 1}
        row = db.execute(
            "SELECT r.id, r.status, r.first_seq, r.last_seq FROM messages m JOIN runs r ON r.id = m.run_id"
            " WHERE m.session_id = ? AND m.client_message_id = ?", (session_id, client_message_id)).fetchone()
        if row is None:
            return None
        return {"state": "run", "run_id": row["id"], "status": row["status"], "first_seq": row["first_seq"],
                "last_seq": row["last_seq"]}
