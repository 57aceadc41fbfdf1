"""The PostgreSQL backend of the session store, through psycopg 3 (its blocking API).

`PostgresStore` implements `navi_actor.store.interface.SessionStore` with the
same answers as `SQLiteStore` (`tests/store_contract.py` runs against both).

- **Why psycopg 3, not asyncpg.** The front calls the store from one thread of
  its own (`front/storeq.py`), blocking, as it calls SQLite: psycopg's
  blocking `Connection` fits that thread as it is, where asyncpg would need
  an event loop of its own inside it. psycopg also has a pipeline mode and
  nested transactions (savepoints) built in, and being libpq-based it reads
  ``PGPASSFILE``/``~/.pgpass`` and every libpq connection setting.
- **One connection**, used by one thread at a time (an internal lock). After
  the connection is lost (PostgreSQL restarted), the next call opens a new
  one; the call that met the loss fails with `StoreFailure`.
- **Transactions.** Every write method is one transaction. `batch` is group
  commit: one transaction, a savepoint per call, one commit (one WAL flush).
- **Schema.** Versioned migrations (`navi_actor.store.pgschema`; the table
  ``navi_schema`` holds the version), applied at open under an advisory lock,
  so that nodes starting together migrate once; a database newer than this
  code is refused.
- **Several nodes.** A turn runs under its session's lease (``leases``: the
  node and a generation number). `begin_run` refuses a turn while another
  live node runs one (`SessionBusy`), ends the turns of a dead node as
  interrupted, and takes the lease (a new generation when it changes
  hands). Checkpoints and results are fenced: written only while this node
  holds the lease at the run's generation (`LeaseLost`).
- **Times** are unix seconds (``double precision``) taken from this host's
  clock, as SQLite's are; JSON columns are ``text``, as SQLite's are.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import psycopg
from psycopg import pq
from psycopg.rows import dict_row

from navi_actor import logs
from navi_actor.store.common import (
    ANY_OWNER, PG_SESSION_OPTIONS, dumps, history_message, load_dict, redact, require_final, run_each,
    valid_session_id,
)
from navi_actor.store.pg_queue import PgQueueMixin, turn_args
from navi_actor.store.pgcall import failure_of as _failure
from navi_actor.store.pgcall import locked as _locked
from navi_actor.store.pgcall import reason as _reason
from navi_actor.store.pgschema import ALIVE, MIGRATION_LOCK, MIGRATIONS, PG_SCHEMA_VERSION
from navi_actor.store.errors import (
    LeaseLost, RunNotRunning, SessionBusy, SessionNotFound, StoreError, StoreFailure,
)

__all__ = ["PG_SCHEMA_VERSION", "PostgresStore", "open_postgres", "finish_in", "interrupt_in", "node_lost_reason"]

log = logs.get("navi.store")
_MESSAGE_KEYS = ("id", "role", "content", "run_id", "created_at")
_SESSION_COLUMNS = "id, title, created_at, updated_at, last_seq, owner"


class PostgresStore(PgQueueMixin):
    """PostgreSQL implementation: one connection, explicit transactions, group commit with savepoints."""

    def __init__(self, url: str, *, node_id: str | None = None, connect_timeout: float = 5.0) -> None:
        """Connect to the database ``url`` names and migrate its schema.

        ``node_id`` names this node among those sharing the database
        (default: the host name): the runs it begins are its own, under the
        session's lease, and `recover_interrupted` and `running_runs` see only
        its own runs.
        """
        self.url = url
        self.node_id = node_id or socket.gethostname()
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()  # batch() holds it around the methods it calls
        self._closed = False
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        try:
            self._connect()
            self._migrate()
        except psycopg.Error as exc:
            self._drop()
            raise StoreFailure("open", f"cannot use {redact(url)}: {_reason(exc)}",
                               unavailable=isinstance(exc, psycopg.OperationalError)) from exc
        except BaseException:
            self._drop()
            raise

    # -- the connection ------------------------------------------------------

    def _connect(self) -> None:
        self._conn = psycopg.connect(
            self.url, autocommit=True, row_factory=dict_row,
            connect_timeout=max(1, round(self._connect_timeout)),
            application_name="navi-actor",
            # A dead server is noticed within seconds, not after the kernel's two hours.
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
            options=PG_SESSION_OPTIONS,
        )

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _ensure_connected(self) -> None:
        """Refuse after close(); reconnect if the connection was lost since the last call."""
        if self._closed:
            raise StoreError("the session store is closed; open a new one with open_store()")
        if self._conn is not None and not self._conn.broken and not self._conn.closed:
            return
        self._drop()
        self._connect()
        log.info("store.reconnected", url=redact(self.url))

    @property
    def _db(self) -> psycopg.Connection[dict[str, Any]]:
        assert self._conn is not None
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """One write transaction, rolled back on error. Inside `batch`, the batch's savepoint instead."""
        db = self._db
        if db.info.transaction_status != pq.TransactionStatus.IDLE:
            yield db  # batch() put this call in a savepoint
            return
        with db.transaction():
            yield db

    def _migrate(self) -> None:
        """Apply missing schema versions in one transaction; refuse a database newer than this code."""
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS navi_schema (version integer NOT NULL)")
            row = db.execute("SELECT version FROM navi_schema").fetchone()
            if row is None:
                db.execute("INSERT INTO navi_schema (version) VALUES (0)")
            version = int(row["version"]) if row else 0
            if version > PG_SCHEMA_VERSION:
                raise StoreError(
                    f"{redact(self.url)} has schema version {version}, but this code supports up to "
                    f"version {PG_SCHEMA_VERSION}; upgrade navi_actor or use another database")
            for n in range(version + 1, PG_SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[n]:
                    db.execute(stmt)
                db.execute("UPDATE navi_schema SET version = %s", (n,))
                log.info("store.migrated", version=n)

    def _session_row(self, session_id: str) -> dict | None:
        if not valid_session_id(session_id):
            return None
        return self._db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = %s",
                                (session_id,)).fetchone()

    @staticmethod
    def _message_dict(row: dict) -> dict:
        out = {k: row[k] for k in _MESSAGE_KEYS}
        for k, v in (load_dict(row["data"]) or {}).items():
            out.setdefault(k, v)
        return out

    # -- sessions ----------------------------------------------------------

    @_locked
    def create_session(self, title: str | None = None, owner: str | None = None) -> dict:
        """Create a session with a fresh uuid4-hex id and return its dict."""
        now = time.time()
        sid = uuid.uuid4().hex
        with self._tx() as db:
            db.execute("INSERT INTO sessions (id, title, created_at, updated_at, last_seq, owner)"
                       " VALUES (%s, %s, %s, %s, 0, %s)", (sid, title, now, now, owner))
        return {"id": sid, "title": title, "created_at": now, "updated_at": now, "last_seq": 0,
                "owner": owner}

    @_locked
    def get_session(self, session_id: str) -> dict | None:
        """Return the session dict, or None if missing or the id is invalid."""
        return self._session_row(session_id)

    @_locked
    def list_sessions(self, limit: int = 100, offset: int = 0, *, owner: Any = ANY_OWNER) -> list[dict]:
        """Return sessions, most recently updated first (ties: created last first)."""
        page = (max(0, int(limit)), max(0, int(offset)))
        if owner is ANY_OWNER:
            cur = self._db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions"
                                   " ORDER BY updated_at DESC, n DESC LIMIT %s OFFSET %s", page)
        elif owner is None:
            cur = self._db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE owner IS NULL"
                                   " ORDER BY updated_at DESC, n DESC LIMIT %s OFFSET %s", page)
        else:
            cur = self._db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE owner = %s"
                                   " ORDER BY updated_at DESC, n DESC LIMIT %s OFFSET %s", (owner, *page))
        return cur.fetchall()

    @_locked
    def get_session_detail(self, session_id: str) -> dict | None:
        """Return the session dict plus "messages" (writing order) and "runs" (oldest first), read together."""
        if not valid_session_id(session_id):
            return None
        with self._tx() as db:  # one snapshot for the three reads
            out = self._session_row(session_id)
            if out is None:
                return None
            msgs = db.execute("SELECT * FROM messages WHERE session_id = %s ORDER BY id", (session_id,))
            out["messages"] = [self._message_dict(m) for m in msgs]
            runs = db.execute(
                "SELECT id, status, started_at, ended_at, first_seq, last_seq, error, error_code, stats"
                " FROM runs WHERE session_id = %s ORDER BY started_at, n", (session_id,))
            out["runs"] = [{**r, "stats": load_dict(r["stats"])} for r in runs]
        return out

    @_locked
    def delete_session(self, session_id: str) -> bool:
        """Delete the session with its runs and messages; True if it existed."""
        if not valid_session_id(session_id):
            return False
        with self._tx() as db:
            cur = db.execute("DELETE FROM sessions WHERE id = %s", (session_id,))
        return cur.rowcount > 0

    @_locked
    def history(self, session_id: str) -> list[dict]:
        """Conversation for the agent: {"role", "content", **data} per message, running turns left out."""
        if not valid_session_id(session_id):
            return []
        rows = self._db.execute(
            "SELECT m.role, m.content, m.data FROM messages m"
            " LEFT JOIN runs r ON r.id = m.run_id"
            " WHERE m.session_id = %s AND (r.status IS NULL OR r.status <> 'running')"
            " ORDER BY m.id", (session_id,)).fetchall()
        return [history_message(r) for r in rows]

    # -- runs --------------------------------------------------------------

    @_locked
    def begin_run(self, session_id: str, run_id: str, *, content: str,
                  agent_content: str, images: int = 0,
                  files: list | None = None, client_message_id: str | None = None) -> int:
        """Record a new running run and its user message; return the seq base (the session's last_seq)."""
        if not valid_session_id(session_id):
            raise SessionNotFound(f"session {session_id!r} does not exist; create it first")
        args = turn_args(self.node_id, session_id, run_id, content, agent_content, images, files or [],
                         client_message_id, queued=False)
        if client_message_id is None:
            # One round trip in the common case: navi_begin_run (pgschema) does it all, as one statement.
            outcome, base = self._begin(self._db, args)
            if outcome != "other_node":
                return self._begun(outcome, base, session_id, run_id)
        with self._tx() as db:  # another node's turn (or a dead node's), or a client id to check first
            if client_message_id is not None:
                self._refuse_seen_client_id(session_id, client_message_id)
            self._reclaim(db, session_id)  # SessionBusy, or that turn ends as interrupted
            outcome, base = self._begin(db, args)
            return self._begun(outcome, base, session_id, run_id)

    @staticmethod
    def _begun(outcome: str, base: int | None, session_id: str, run_id: str) -> int:
        if outcome == "no_session":
            raise SessionNotFound(f"session {session_id!r} does not exist; create it first")
        if outcome == "run_exists":
            raise StoreError(f"run {run_id!r} already exists; use a new run id")
        if outcome != "ok":
            raise StoreError(f"begin_run: unexpected outcome {outcome!r} of navi_begin_run")
        return int(base or 0)

    @staticmethod
    def _begin(db: psycopg.Connection[Any], args: tuple) -> tuple[str, int | None]:
        row = db.execute("SELECT o_outcome, o_base FROM navi_begin_run(%s, %s, %s, %s, %s, %s, %s, %s)",
                         args).fetchone()
        return row["o_outcome"], row["o_base"]

    def _reclaim(self, db: psycopg.Connection[Any], session_id: str) -> None:
        """Before a turn: SessionBusy if one runs on another live node; end those of dead nodes as interrupted."""
        runs = db.execute(
            f"SELECT r.id, r.session_id, r.first_seq, r.last_seq, r.partial_content, r.node_id, {ALIVE} AS alive"
            " FROM runs r LEFT JOIN nodes n ON n.node_id = r.node_id"
            " WHERE r.session_id = %s AND r.status = 'running' ORDER BY r.started_at, r.n FOR UPDATE OF r",
            (session_id,)).fetchall()
        busy = [r for r in runs if r["node_id"] not in (None, self.node_id) and r["alive"]]
        if busy:
            raise SessionBusy(session_id, busy[0]["node_id"])
        dead = [r for r in runs if r["node_id"] not in (None, self.node_id)]
        if dead:
            interrupt_in(db, dead, node_lost_reason(dead[0]["node_id"]), 10**9)
            log.warning("store.runs_reclaimed", session_id=session_id, runs=[r["id"] for r in dead],
                        node=dead[0]["node_id"])

    @_locked
    def checkpoint_runs(self, items: list[tuple[str, str, int]]) -> None:
        """Store (run_id, partial_content, last_seq) for runs still "running" under this node's lease."""
        if not items:
            return
        with self._tx() as db, db.cursor() as cur:
            # Fenced: only while this node holds the session's lease at the run's generation.
            cur.executemany(
                "UPDATE runs r SET partial_content = %s, last_seq = %s FROM leases l"
                " WHERE r.id = %s AND r.status = 'running' AND l.session_id = r.session_id"
                " AND l.node_id = %s AND l.generation = r.generation",
                [(partial, int(seq), rid, self.node_id) for rid, partial, seq in items])

    @_locked
    def finish_run(self, run_id: str, *, status: str, content: str | None, last_seq: int,
                   tool_calls: list[dict] | None = None, thinking: str = "",
                   error: str | None = None, error_code: str | None = None,
                   stats: dict | None = None) -> None:
        """Write the run's tool and assistant messages and close it with `status` (once: RunNotRunning after)."""
        require_final(status)
        now = time.time()
        with self._tx() as db:
            run = db.execute(
                "SELECT r.id, r.session_id, r.status, r.partial_content, r.node_id, r.generation,"
                " l.node_id AS lease_node, l.generation AS lease_generation"
                " FROM runs r LEFT JOIN leases l ON l.session_id = r.session_id WHERE r.id = %s FOR UPDATE OF r",
                (run_id,)).fetchone()
            if run is None:
                raise RunNotRunning(f"run {run_id!r} does not exist; start it with begin_run()")
            if run["node_id"] is not None and (run["node_id"] != self.node_id
                                               or (run["lease_node"], run["lease_generation"])
                                               != (self.node_id, run["generation"])):
                raise LeaseLost(f"run {run_id!r} was begun by node {run['node_id']!r} under lease generation "
                                f"{run['generation']}; the session's lease is now node {run['lease_node']!r}'s, "
                                f"generation {run['lease_generation']} (the run is {run['status']!r}): "
                                "this late result is refused")
            if run["status"] != "running":
                raise RunNotRunning(f"run {run_id!r} is already {run['status']!r}; "
                                    "its result was written before, do not write it again")
            if content is None:
                content = run["partial_content"] or ""
            finish_in(db, run, status=status, content=content, last_seq=int(last_seq),
                      tool_calls=tool_calls or [], thinking=thinking, error=error,
                      error_code=error_code, stats=stats, now=now)
            db.execute("UPDATE sessions SET last_seq = GREATEST(last_seq, %s), updated_at = %s WHERE id = %s",
                       (int(last_seq), now, run["session_id"]))

    @_locked
    def recover_interrupted(self, reason: str = "server stopped during this turn",
                            seq_gap: int = 10**9, keep: Iterable[str] = ()) -> list[str]:
        """Finish this node's "running" runs but those in ``keep`` as "interrupted"; their ids, oldest first.

        Other nodes' runs are theirs (or the sweeper's, once their node is dead).
        """
        kept = set(keep)
        with self._tx() as db:
            runs = db.execute(
                "SELECT id, session_id, first_seq, last_seq, partial_content FROM runs"
                " WHERE status = 'running' AND (node_id = %s OR node_id IS NULL)"
                " ORDER BY started_at, n FOR UPDATE", (self.node_id,)).fetchall()
            runs = [run for run in runs if run["id"] not in kept]
            interrupt_in(db, runs, reason, seq_gap)
        return [r["id"] for r in runs]

    @_locked
    def running_runs(self) -> list[dict]:
        """This node's runs still "running": {"id", "session_id", "first_seq", "last_seq"}, oldest first."""
        return self._db.execute(
            "SELECT id, session_id, first_seq, last_seq FROM runs"
            " WHERE status = 'running' AND (node_id = %s OR node_id IS NULL) ORDER BY started_at, n",
            (self.node_id,)).fetchall()

    # -- the store itself --------------------------------------------------

    @_locked
    def probe(self) -> None:
        """A write transaction that changes nothing (the schema version, rewritten as it is)."""
        with self._tx() as db:
            db.execute("UPDATE navi_schema SET version = version")

    def failure(self, exc: BaseException, op: str) -> StoreFailure | None:
        """psycopg's own errors are failures of the database; refusals and bugs are not."""
        if isinstance(exc, StoreFailure):
            return exc
        if isinstance(exc, psycopg.Error):
            return _failure(op, exc)
        return None

    def batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Group commit: run ``calls`` in one transaction, one savepoint each, and commit once.

        A call that raises has its own writes rolled back to its savepoint;
        the others are kept. If the database itself fails (a lost connection,
        the commit refused), nothing of the batch is kept and the calls are
        run again one by one, each in its own transaction, so that each gets
        its own outcome.
        """
        if len(calls) <= 1:
            return run_each(calls)
        with self._lock:
            try:
                self._ensure_connected()
            except (StoreError, psycopg.Error):
                return run_each(calls)  # each fails on its own (closed, or the server is down)
            db = self._db
            out: list[tuple[bool, Any]] = []
            try:
                with db.transaction():
                    for call in calls:
                        out.append(self._one_call(db, call))
            except Exception as exc:
                log.warning("store.group_commit_failed", calls=len(calls), error=_reason(exc))
                return run_each(calls)
            return out

    @staticmethod
    def _one_call(db: psycopg.Connection[Any], call: Callable[[], Any]) -> tuple[bool, Any]:
        """One call of a batch inside its own savepoint: its outcome; a database failure propagates."""
        try:
            with db.transaction():
                return True, call()
        except (StoreFailure, psycopg.OperationalError):
            raise  # the database failed: the whole batch is retried call by call
        except Exception as exc:  # a refusal or a bug: this call's writes only are undone
            return False, exc

    def close(self) -> None:
        """Close the connection; later calls raise StoreError. Idempotent."""
        with self._lock:
            self._closed = True
            self._drop()


def _add_message(db: psycopg.Connection[Any], session_id: str, run_id: str | None,
                 role: str, content: str, data: dict, now: float) -> None:
    db.execute(
        "INSERT INTO messages (session_id, run_id, role, content, data, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (session_id, run_id, role, content, dumps(data), now))


def finish_in(db: psycopg.Connection[Any], run: dict, *, status: str, content: str, last_seq: int | None,
              tool_calls: list[dict], thinking: str, error: str | None, error_code: str | None,
              stats: dict | None, now: float) -> None:
    """Write a run's tool and assistant messages and close it (the caller checked it may)."""
    sid, rid = run["session_id"], run["id"]
    for tc in tool_calls:
        result = tc.get("result")
        _add_message(db, sid, rid, "tool", result if isinstance(result, str) else dumps(result),
                     {"tool": tc.get("tool"), "args": tc.get("args"), "success": tc.get("success"),
                      "is_subagent": bool(tc.get("is_subagent", False)), "metadata": tc.get("metadata")}, now)
    _add_message(db, sid, rid, "assistant", content,
                 {"status": status, "error": error, "error_code": error_code,
                  "thinking": thinking, "stats": stats or {}}, now)
    db.execute(
        "UPDATE runs SET status = %s, ended_at = %s, last_seq = %s, error = %s,"
        " error_code = %s, stats = %s, partial_content = NULL WHERE id = %s",
        (status, now, last_seq, error, error_code, None if stats is None else dumps(stats), rid))


def interrupt_in(db: psycopg.Connection[Any], runs: list[dict], reason: str, seq_gap: int) -> None:
    """Finish ``runs`` as interrupted with their checkpointed text; each session's last_seq jumps by the gap."""
    now = time.time()
    top: dict[str, int] = {}
    for run in runs:
        seq = run["last_seq"] if run["last_seq"] is not None else run["first_seq"]
        top[run["session_id"]] = max(top.get(run["session_id"], 0), int(seq or 0))
        finish_in(db, run, status="interrupted", content=run["partial_content"] or "",
                  last_seq=run["last_seq"], tool_calls=[], thinking="", error=reason,
                  error_code="interrupted", stats=None, now=now)
    for sid, seq in sorted(top.items()):
        db.execute("UPDATE sessions SET last_seq = GREATEST(last_seq, %s) + %s, updated_at = %s"
                   " WHERE id = %s", (seq, int(seq_gap), now, sid))


def node_lost_reason(node: str) -> str:
    """The error of a turn ended because its node stopped renewing its lease."""
    return f"the node running this turn ({node}) stopped answering: its lease expired"


def open_postgres(url: str, node_id: str | None = None) -> PostgresStore:
    """Connect to the PostgreSQL database ``url`` names (``postgresql://USER@HOST:PORT/DB``)."""
    return PostgresStore(url, node_id=node_id)
