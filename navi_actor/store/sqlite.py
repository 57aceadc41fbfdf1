"""The SQLite backend of the session store: one file, WAL, synchronous=FULL.

`SQLiteStore` implements `navi_actor.store.interface.SessionStore`. Every
public method takes an internal lock and every write method is one
transaction (BEGIN IMMEDIATE). `batch` is group commit: one transaction, a
savepoint per call, one fsync. The schema is versioned (``PRAGMA
user_version``) and migrated at open; a file newer than this code is refused.
JSON columns are TEXT.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from navi_actor import logs
from navi_actor.store.common import (
    ANY_OWNER, dumps, history_message, load_dict, require_final, run_each, valid_session_id,
)
from navi_actor.store.errors import RunNotRunning, SessionNotFound, StoreError, StoreFailure
from navi_actor.store.sqlite_queue import QUEUE_MIGRATION, QueueMixin, locked

__all__ = ["SCHEMA_VERSION", "DB_FILENAME", "SQLiteStore", "open_sqlite"]

DB_FILENAME = "navi.sqlite3"  #: the database's name in the data folder

log = logs.get("navi.store")
_MESSAGE_KEYS = ("id", "role", "content", "run_id", "created_at")

# Version N's statements turn a version N-1 file into version N.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY, title TEXT, created_at REAL, updated_at REAL,
            last_seq INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE,
            status TEXT NOT NULL, started_at REAL, ended_at REAL,
            first_seq INTEGER, last_seq INTEGER, partial_content TEXT,
            error TEXT, error_code TEXT, stats TEXT)""",
        "CREATE INDEX runs_status ON runs(status)",
        "CREATE INDEX runs_session ON runs(session_id)",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE,
            run_id TEXT, role TEXT NOT NULL, content TEXT, data TEXT,
            created_at REAL)""",
        "CREATE INDEX messages_session ON messages(session_id, id)",
    ),
    # The user who created the session; NULL: created with authentication off.
    2: (
        "ALTER TABLE sessions ADD COLUMN owner TEXT",
        "CREATE INDEX sessions_owner ON sessions(owner, updated_at)",
    ),
    3: QUEUE_MIGRATION,  # the queue, client message ids, a session's if_busy (store/sqlite_queue.py)
}
SCHEMA_VERSION = max(_MIGRATIONS)
_SESSION_COLUMNS = "id, title, created_at, updated_at, last_seq, owner"


class SQLiteStore(QueueMixin):
    """SQLite implementation (WAL, synchronous=FULL, foreign keys on).

    `batch` is group commit: the calls waiting for the store share one
    transaction and one fsync, each inside a savepoint of its own.
    """

    def __init__(self, path: str | Path) -> None:
        """Open (creating if needed) the database at `path` and migrate it."""
        self.path = Path(path)
        self._lock = threading.RLock()  # batch() holds it around the methods it calls
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so that
        # reads and writes of one method are atomic together.
        conn = sqlite3.connect(str(self.path), check_same_thread=False,
                               isolation_level=None)
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=5000")
            self._check_version(self._user_version())
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            conn.close()
            self._conn = None
            raise

    # -- internals ---------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, but this code supports "
                f"up to version {SCHEMA_VERSION}; upgrade navi_actor or use another data dir")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error.

        Inside `batch`, a savepoint instead: the batch commits.
        """
        db = self._db
        if db.in_transaction:
            yield db  # batch() put this call in a savepoint
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        """Apply missing schema versions in one transaction; refuse newer files."""
        with self._tx() as db:
            version = self._user_version()
            self._check_version(version)
            for n in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[n]:
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version = {int(n)}")

    def _session_row(self, session_id: str) -> sqlite3.Row | None:
        if not valid_session_id(session_id):
            return None
        return self._db.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?",
            (session_id,)).fetchone()

    @staticmethod
    def _message_dict(row: sqlite3.Row) -> dict:
        out = {k: row[k] for k in _MESSAGE_KEYS}
        for k, v in (load_dict(row["data"]) or {}).items():
            out.setdefault(k, v)
        return out

    def _add_message(self, db: sqlite3.Connection, session_id: str, run_id: str | None,
                     role: str, content: str, data: dict, now: float) -> None:
        db.execute(
            "INSERT INTO messages (session_id, run_id, role, content, data, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, run_id, role, content, dumps(data), now))

    # -- sessions ----------------------------------------------------------

    @locked
    def create_session(self, title: str | None = None, owner: str | None = None) -> dict:
        """Create a session with a fresh uuid4-hex id and return its dict.

        ``owner`` is the user who creates it (None: authentication is off).
        """
        now = time.time()
        sid = uuid.uuid4().hex
        with self._tx() as db:
            db.execute("INSERT INTO sessions (id, title, created_at, updated_at, last_seq, owner)"
                       " VALUES (?, ?, ?, ?, 0, ?)", (sid, title, now, now, owner))
        return {"id": sid, "title": title, "created_at": now, "updated_at": now, "last_seq": 0,
                "owner": owner}

    @locked
    def get_session(self, session_id: str) -> dict | None:
        """Return the session dict, or None if missing or the id is invalid."""
        row = self._session_row(session_id)
        return dict(row) if row else None

    @locked
    def list_sessions(self, limit: int = 100, offset: int = 0, *, owner: Any = ANY_OWNER) -> list[dict]:
        """Return sessions, most recently updated first.

        ``owner``: only that user's sessions (None: those with no owner);
        ``ANY_OWNER`` (the default): all of them.
        """
        page = (max(0, int(limit)), max(0, int(offset)))
        if owner is ANY_OWNER:
            rows = self._db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions"
                " ORDER BY updated_at DESC, rowid DESC LIMIT ? OFFSET ?", page).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE owner IS ?"
                " ORDER BY updated_at DESC, rowid DESC LIMIT ? OFFSET ?", (owner, *page)).fetchall()
        return [dict(r) for r in rows]

    @locked
    def get_session_detail(self, session_id: str) -> dict | None:
        """Return the session dict plus "messages" (insertion order) and "runs" (oldest first)."""
        row = self._session_row(session_id)
        if row is None:
            return None
        out = dict(row)
        msgs = self._db.execute(
            "SELECT * FROM messages WHERE session_id = ? ORDER BY id", (session_id,))
        out["messages"] = [self._message_dict(m) for m in msgs]
        runs = self._db.execute(
            "SELECT id, status, started_at, ended_at, first_seq, last_seq, error,"
            " error_code, stats FROM runs WHERE session_id = ?"
            " ORDER BY started_at, rowid", (session_id,))
        out["runs"] = [{**r, "stats": load_dict(r["stats"])} for r in map(dict, runs)]
        return out

    @locked
    def delete_session(self, session_id: str) -> bool:
        """Delete the session with its runs and messages; True if it existed."""
        if not valid_session_id(session_id):
            return False
        with self._tx() as db:
            cur = db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        return cur.rowcount > 0

    @locked
    def history(self, session_id: str) -> list[dict]:
        """Conversation for the agent: {"role", "content", **data} per message.

        User messages carry what the agent read (`agent_content`) as content.
        Messages of runs still "running" are left out; ids and times are omitted.
        """
        if not valid_session_id(session_id):
            return []
        rows = self._db.execute(
            "SELECT m.role, m.content, m.data FROM messages m"
            " LEFT JOIN runs r ON r.id = m.run_id"
            " WHERE m.session_id = ? AND (r.status IS NULL OR r.status != 'running')"
            " ORDER BY m.id", (session_id,)).fetchall()
        return [history_message(r) for r in rows]

    # -- runs --------------------------------------------------------------

    @locked
    def begin_run(self, session_id: str, run_id: str, *, content: str,
                  agent_content: str, images: int = 0,
                  files: list | None = None, client_message_id: str | None = None) -> int:
        """Record a new running run and its user message; return the seq base.

        The run's first event gets seq base+1. Sets an empty title from `content`.
        """
        now = time.time()
        with self._tx() as db:
            row = self._session_row(session_id)
            if row is None:
                raise SessionNotFound(
                    f"session {session_id!r} does not exist; create it first")
            self._refuse_seen_client_id(session_id, client_message_id)
            base = int(row["last_seq"])
            self._insert_turn(db, session_id, run_id, base, content, agent_content, images,
                              files or [], client_message_id, False, now)
        return base

    @locked
    def checkpoint_runs(self, items: list[tuple[str, str, int]]) -> None:
        """Store (run_id, partial_content, last_seq) for runs still "running"."""
        if not items:
            return
        with self._tx() as db:
            db.executemany(
                "UPDATE runs SET partial_content = ?, last_seq = ?"
                " WHERE id = ? AND status = 'running'",
                [(partial, int(seq), rid) for rid, partial, seq in items])

    def _finish(self, db: sqlite3.Connection, run: sqlite3.Row, *, status: str,
                content: str, last_seq: int | None, tool_calls: list[dict],
                thinking: str, error: str | None, error_code: str | None,
                stats: dict | None, now: float) -> None:
        sid, rid = run["session_id"], run["id"]
        for tc in tool_calls:
            result = tc.get("result")
            self._add_message(db, sid, rid, "tool",
                              result if isinstance(result, str) else dumps(result),
                              {"tool": tc.get("tool"), "args": tc.get("args"),
                               "success": tc.get("success"),
                               "is_subagent": bool(tc.get("is_subagent", False)),
                               "metadata": tc.get("metadata")}, now)
        self._add_message(db, sid, rid, "assistant", content,
                          {"status": status, "error": error, "error_code": error_code,
                           "thinking": thinking, "stats": stats or {}}, now)
        db.execute(
            "UPDATE runs SET status = ?, ended_at = ?, last_seq = ?, error = ?,"
            " error_code = ?, stats = ?, partial_content = NULL WHERE id = ?",
            (status, now, last_seq, error, error_code,
             None if stats is None else dumps(stats), rid))

    @locked
    def finish_run(self, run_id: str, *, status: str, content: str | None, last_seq: int,
                   tool_calls: list[dict] | None = None, thinking: str = "",
                   error: str | None = None, error_code: str | None = None,
                   stats: dict | None = None) -> None:
        """Write the run's tool and assistant messages and close it with `status`.

        ``content=None``: the text last checkpointed (`checkpoint_runs`) is the
        answer. Raises StoreError for a non-final status, RunNotRunning if the
        run is unknown or already finished (a result is never written twice),
        StoreFailure if SQLite fails (the disk is full, say).
        """
        require_final(status)
        now = time.time()
        with self._tx() as db:
            run = db.execute("SELECT id, session_id, status, partial_content FROM runs WHERE id = ?",
                             (run_id,)).fetchone()
            if run is None:
                raise RunNotRunning(f"run {run_id!r} does not exist; start it with begin_run()")
            if run["status"] != "running":
                raise RunNotRunning(f"run {run_id!r} is already {run['status']!r}; "
                                    "its result was written before, do not write it again")
            if content is None:
                content = run["partial_content"] or ""
            self._finish(db, run, status=status, content=content, last_seq=int(last_seq),
                         tool_calls=tool_calls or [], thinking=thinking, error=error,
                         error_code=error_code, stats=stats, now=now)
            db.execute("UPDATE sessions SET last_seq = MAX(last_seq, ?), updated_at = ?"
                       " WHERE id = ?", (int(last_seq), now, run["session_id"]))

    @locked
    def recover_interrupted(self, reason: str = "server stopped during this turn",
                            seq_gap: int = 10**9, keep: Iterable[str] = ()) -> list[str]:
        """Finish every "running" run but those in ``keep`` as "interrupted"; return their ids.

        Keeps the checkpointed partial content, and moves each affected session's
        last_seq to max(session.last_seq, run seqs) + seq_gap, above any seq a
        client could have seen.
        """
        now = time.time()
        with self._tx() as db:
            runs = db.execute(
                "SELECT id, session_id, first_seq, last_seq, partial_content FROM runs"
                " WHERE status = 'running' ORDER BY started_at, rowid").fetchall()
            kept = set(keep)
            runs = [run for run in runs if run["id"] not in kept]
            top: dict[str, int] = {}
            for run in runs:
                seq = run["last_seq"] if run["last_seq"] is not None else run["first_seq"]
                top[run["session_id"]] = max(top.get(run["session_id"], 0), int(seq or 0))
                self._finish(db, run, status="interrupted",
                             content=run["partial_content"] or "", last_seq=run["last_seq"],
                             tool_calls=[], thinking="", error=reason,
                             error_code="interrupted", stats=None, now=now)
            for sid, seq in top.items():
                db.execute("UPDATE sessions SET last_seq = MAX(last_seq, ?) + ?,"
                           " updated_at = ? WHERE id = ?", (seq, int(seq_gap), now, sid))
        return [r["id"] for r in runs]

    @locked
    def running_runs(self) -> list[dict]:
        """Return runs still "running": {"id", "session_id", "first_seq", "last_seq"}."""
        rows = self._db.execute(
            "SELECT id, session_id, first_seq, last_seq FROM runs"
            " WHERE status = 'running' ORDER BY started_at, rowid").fetchall()
        return [dict(r) for r in rows]

    @locked
    def probe(self) -> None:
        """A write transaction that changes nothing (the schema version, rewritten): one page, one fsync."""
        with self._tx() as db:
            db.execute(f"PRAGMA user_version = {self._user_version()}")

    def failure(self, exc: BaseException, op: str) -> StoreFailure | None:
        """SQLite's own errors (``sqlite3.Error``) are failures of the database; refusals are not."""
        if isinstance(exc, StoreFailure):
            return exc
        if isinstance(exc, sqlite3.Error):
            return StoreFailure(op, str(exc))
        return None

    def batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Group commit: run ``calls`` in one transaction, one savepoint each, and commit once.

        A call that raises has its own changes rolled back and the others are
        kept, so each call succeeds or fails exactly as if it ran alone, but
        the batch pays for one fsync instead of one per call. If SQLite itself
        fails (the disk is full, say; SQLite may then have rolled back the
        whole transaction) or the commit fails, nothing of the batch is kept
        and the calls are run again one by one, each in its own transaction,
        so that each gets its own outcome.
        """
        if len(calls) <= 1:
            return run_each(calls)
        with self._lock:
            if self._conn is None:
                return run_each(calls)  # each raises "the store is closed"
            db = self._conn
            out: list[tuple[bool, Any]] = []
            db.execute("BEGIN IMMEDIATE")
            try:
                for call in calls:
                    db.execute("SAVEPOINT call")
                    try:
                        result = call()
                    except StoreFailure:  # SQLite failed: it may have rolled back the whole batch
                        raise
                    except StoreError as exc:  # our own refusal: this call only
                        db.execute("ROLLBACK TO call")
                        db.execute("RELEASE call")
                        out.append((False, exc))
                    else:
                        db.execute("RELEASE call")
                        out.append((True, result))
                db.execute("COMMIT")
            except Exception as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                log.warning("store.group_commit_failed", calls=len(calls), error=str(exc))
                return run_each(calls)
            except BaseException:  # KeyboardInterrupt, SystemExit: never leave the transaction open
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return out

    def close(self) -> None:
        """Close the connection; later calls raise StoreError. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_sqlite(path: str | Path) -> SQLiteStore:
    """Open the database file at ``path``, private to this user.

    Its folder is created with mode 0o700 if missing; the file is created
    with mode 0o600, or has group and others' access taken away.
    """
    path = Path(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        path.parent.chmod(0o700)  # mkdir's mode is reduced by the umask
    _private_file(path)
    return SQLiteStore(path)


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0o600, or take group and others' access away from it.

    SQLite creates its -wal and -shm files with the database file's mode, so
    they are private too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
        return
    os.close(fd)
