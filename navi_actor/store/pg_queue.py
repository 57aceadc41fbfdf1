"""The PostgreSQL backend's queue of messages waiting for their session's turn, and client ids.

A mixin of `navi_actor.store.postgres.PostgresStore`, the PostgreSQL twin of
`navi_actor.store.sqlite_queue` (see the interface for what each method
promises; `tests/store_contract_queue.py` checks both). Queued messages live
in ``queue``, apart from ``messages``; a row's ``ord`` orders it (the tail
takes ``max + 1``, the head ``min - 1``). Writers of one session's queue
take its session row's lock first, so the bound and the positions hold
across nodes. `begin_queued` starts the head's turn under the session's
lease, as `begin_run` does.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from navi_actor.store.common import (
    load_dict, queue_entry, queued_data, queued_turn, title_from, user_message_data, valid_session_id)
from navi_actor.store.errors import QueueFull, SessionNotFound, StoreError
from navi_actor.store.pgcall import locked

__all__ = ["PgQueueMixin", "turn_args"]


def turn_args(node_id: str, session_id: str, run_id: str, content: str, agent_content: str, images: int,
              files: list, client_id: str | None, *, queued: bool) -> tuple:
    """navi_begin_run's arguments: the user message's data as `begin_run` and `begin_queued` save it."""
    data = user_message_data(agent_content, images, files, client_id, queued)
    return (session_id, run_id, node_id, time.time(), content, data, title_from(content), client_id)


class PgQueueMixin:
    """The queue's methods; the store gives the connection, its lock, transactions and the turn's start."""

    _lock: threading.RLock
    _db: psycopg.Connection[Any]
    node_id: str

    def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...  # PostgresStore's
    def _reclaim(self, db: psycopg.Connection[Any], session_id: str) -> None: ...  # PostgresStore's
    def _begin(self, db: psycopg.Connection[Any], args: tuple) -> tuple[str, int | None]: ...  # PostgresStore's
    def _begun(self, outcome: str, base: int | None, session_id: str, run_id: str) -> int: ...  # PostgresStore's

    def _lock_session(self, db: psycopg.Connection[Any], session_id: str) -> dict:
        row = None
        if valid_session_id(session_id):
            row = db.execute("SELECT last_seq FROM sessions WHERE id = %s FOR UPDATE", (session_id,)).fetchone()
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
        with self._tx() as db:
            self._lock_session(db, session_id)
            self._refuse_seen_client_id(session_id, client_message_id)
            row = db.execute("SELECT count(*) AS length, min(ord) AS low, max(ord) AS high FROM queue"
                             " WHERE session_id = %s", (session_id,)).fetchone()
            length = int(row["length"])
            if length >= limit:
                raise QueueFull(session_id, length)
            if db.execute("SELECT 1 FROM runs WHERE id = %s UNION ALL SELECT 1 FROM queue WHERE message_id = %s",
                          (message_id, message_id)).fetchone():
                raise StoreError(f"message id {message_id!r} is already used; use a new one")
            ord_ = (row["low"] - 1 if at_head else row["high"] + 1) if length else 0
            db.execute("INSERT INTO queue (message_id, session_id, ord, content, data, client_message_id,"
                       " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                       (message_id, session_id, ord_, content, queued_data(agent_content, images, files),
                        client_message_id, time.time()))
        return 1 if at_head else length + 1

    @locked
    def cancel_queued(self, session_id: str, message_id: str) -> bool:
        """Take a queued message out of its session's queue; False if it is not there."""
        if not valid_session_id(session_id):
            return False
        with self._tx() as db:
            cur = db.execute("DELETE FROM queue WHERE session_id = %s AND message_id = %s", (session_id, message_id))
        return cur.rowcount > 0

    @locked
    def queue(self, session_id: str) -> list[dict]:
        """The session's queued messages, next first."""
        if not valid_session_id(session_id):
            return []
        rows = self._db.execute(
            "SELECT message_id, content, data, client_message_id, created_at FROM queue"
            " WHERE session_id = %s ORDER BY ord", (session_id,)).fetchall()
        return [queue_entry(row, i) for i, row in enumerate(rows, 1)]

    @locked
    def queued_sessions(self) -> list[str]:
        """Sessions with queued messages, the one whose next message waits longest first."""
        rows = self._db.execute("SELECT session_id FROM queue GROUP BY session_id"
                                " ORDER BY min(created_at), min(n)").fetchall()
        return [r["session_id"] for r in rows]

    @locked
    def begin_queued(self, session_id: str) -> dict | None:
        """Begin the turn of the queue's head, under the session's lease: it leaves the queue and is saved."""
        with self._tx() as db:
            self._lock_session(db, session_id)
            head = db.execute("SELECT * FROM queue WHERE session_id = %s ORDER BY ord LIMIT 1 FOR UPDATE",
                              (session_id,)).fetchone()
            if head is None:
                return None
            self._reclaim(db, session_id)  # SessionBusy while another live node runs a turn of it
            data = load_dict(head["data"]) or {}
            run_id, client_id = head["message_id"], head["client_message_id"]
            db.execute("DELETE FROM queue WHERE message_id = %s", (run_id,))
            args = turn_args(self.node_id, session_id, run_id, head["content"], data["agent_content"],
                             len(data.get("images") or []), data.get("files") or [], client_id, queued=True)
            base = self._begun(*self._begin(db, args), session_id, run_id)
        return queued_turn(head, data, base)

    @locked
    def set_if_busy(self, session_id: str, policy: str | None) -> bool:
        """Set (None: clear) the session's own if_busy policy; False if the session does not exist."""
        if not valid_session_id(session_id):
            return False
        with self._tx() as db:
            cur = db.execute("UPDATE sessions SET if_busy = %s WHERE id = %s", (policy, session_id))
        return cur.rowcount > 0

    @locked
    def get_if_busy(self, session_id: str) -> str | None:
        """The session's own if_busy policy; None when it has none (or does not exist)."""
        if not valid_session_id(session_id):
            return None
        row = self._db.execute("SELECT if_busy FROM sessions WHERE id = %s", (session_id,)).fetchone()
        return row["if_busy"] if row else None

    @locked
    def find_client_message(self, session_id: str, client_message_id: str) -> dict | None:
        """Where the session's message with this client id is: queued, or which run it began."""
        if not valid_session_id(session_id):
            return None
        return self._find(session_id, client_message_id)

    def _find(self, session_id: str, client_message_id: str) -> dict | None:
        db = self._db
        row = db.execute("SELECT message_id, ord FROM queue WHERE session_id = %s AND client_message_id = %s",
                         (session_id, client_message_id)).fetchone()
        if row is not None:
            ahead = db.execute("SELECT count(*) AS n FROM queue WHERE session_id = %s AND ord < %s",
                               (session_id, row["ord"])).fetchone()["n"]
            return {"state": "queued", "message_id": row["message_id"], "position": int(ahead) + 1}
        row = db.execute(
            "SELECT r.id, r.status, r.first_seq, r.last_seq FROM messages m JOIN runs r ON r.id = m.run_id"
            " WHERE m.session_id = %s AND m.client_message_id = %s", (session_id, client_message_id)).fetchone()
        if row is None:
            return None
        return {"state": "run", "run_id": row["id"], "status": row["status"], "first_seq": row["first_seq"],
                "last_seq": row["last_seq"]}
