"""This node's part in a cluster of nodes sharing one PostgreSQL store: heartbeat, sweeper, stop/kill.

`PgNode` runs two threads, each with a connection of its own (never the
store's: a group commit must not wait behind them, nor they behind it):

- **beat**, every ``lease_ttl / 5`` seconds: renews this node's heartbeat
  (one row of ``nodes``: one write per node, never one per session or
  event), then runs the **sweeper** under a transaction-level advisory lock,
  so that one node at a time ends the running turns of nodes whose
  heartbeat is older than their lease TTL, as ``interrupted`` with their
  checkpointed text (then ``on_swept`` names their sessions: messages
  queued for those turns start on this node). When the beat finds it could not renew for a whole
  TTL (this node was paused, or the database was unreachable), other nodes
  may have taken its sessions: it calls ``on_lost``, and the front stops
  its own turns.
- **listen**: ``LISTEN navi_control``. A stop or kill for a turn that runs
  on another node is a durable row of ``control`` plus a ``NOTIFY`` naming
  that node (`request`, from any node). The owner runs it (``on_control``)
  and records the outcome in the row; its caller waits for that, with a
  deadline, and learns whether it was delivered. NOTIFY has no replay: the
  listener rescans the pending rows at every (re)connection and every
  second, and a dropped connection is opened again.

The front's lookups (who runs a session's turn, when a client connects; is
a run still running; the cluster's running turns) are short reads on
connections kept between calls (at most :data:`LOOKUP_IDLE` idle ones), so a
reconnecting crowd of clients does not open one PostgreSQL connection each. A
kept connection that fails is dropped and the read is tried once more on a
new one.

PostgreSQL's clock (``now()``) decides who is alive, never a node's.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable

import psycopg
from psycopg.rows import dict_row

from navi_actor import logs
from navi_actor.store.common import PG_SESSION_OPTIONS, redact
from navi_actor.store.pgschema import ALIVE
from navi_actor.store.postgres import interrupt_in, node_lost_reason

__all__ = ["PgNode", "CHANNEL", "SWEEP_LOCK", "OPS"]

log = logs.get("navi.cluster")
CHANNEL = "navi_control"
#: The advisory lock key of the sweeper ("navi" in ASCII, then 2).
SWEEP_LOCK = 0x6E617669_0002
RESCAN = 1.0  #: seconds between rescans of pending control requests, notified or not
ACK_WAIT = 1.5  #: seconds a stop/kill request waits for the owner's acknowledgement
LOOKUP_IDLE = 4  #: connections kept for the front's lookups between calls (more may be open at once)
#: What one node may ask of another: stop the turn (its stop event, as POST /sessions/ID/stop),
#: run the stop ladder on its actor (POST /runs/ID/kill), or SIGKILL it (with force); read the session's
#: queue again, a message having been queued or cancelled elsewhere, and for "interrupt" stop the turn
#: for it (front/elsewhere.py).
OPS = ("stop", "terminate", "kill", "queue", "interrupt")


class PgNode:
    """This node in the cluster: ``start()``, then ``request()`` from any thread; ``close()``."""

    def __init__(self, url: str, node_id: str, *, advertise_url: str = "", lease_ttl: float = 10.0,
                 on_lost: Callable[[str], None] = lambda reason: None,
                 on_control: Callable[[dict[str, Any]], str] = lambda req: "not handled",
                 on_swept: Callable[[list[str]], None] = lambda sessions: None) -> None:
        self.url = url
        self.node_id = node_id
        self.advertise_url = advertise_url
        self.lease_ttl = float(lease_ttl)
        self.incarnation = uuid.uuid4().hex
        self.on_lost = on_lost
        self.on_control = on_control
        self.on_swept = on_swept
        self.beat_every = max(0.1, self.lease_ttl / 5)
        self.last_beat: float | None = None  #: monotonic time of the last renewed heartbeat
        self.swept = 0  #: turns this node's sweeper ended
        self.listening = threading.Event()  #: set while the listener's LISTEN is in force
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._idle: list[psycopg.Connection[dict[str, Any]]] = []  # kept for lookups (_lookup)
        self._idle_lock = threading.Lock()
        self.lookup_connects = 0  #: connections opened for lookups

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Register this node (its first heartbeat) and start the beat and listen threads."""
        with self._connect() as conn:
            self._beat(conn)
        for name, target in (("beat", self._beat_loop), ("listen", self._listen_loop)):
            t = threading.Thread(target=target, name=f"cluster-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads; the heartbeat is left to expire (another node's sweeper does the rest)."""
        self._closing.set()  # the listener sees it within RESCAN, the beat at once
        for t in self._threads:
            t.join(timeout)
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=5,
                               application_name=f"navi-actor cluster {self.node_id}"[:63],
                               keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                               options=PG_SESSION_OPTIONS)

    def _lookup(self, query: str, params: tuple[Any, ...], one: bool) -> Any:
        """Run a read-only ``query`` on a kept connection (a new one when none is idle); its row
        (``one``) or rows. A kept connection that fails (the server restarted, or dropped it) is
        closed and the read tried once on a new connection, whose failure is the caller's."""
        with self._idle_lock:
            kept = self._idle.pop() if self._idle else None
        if kept is not None:
            try:
                return self._read_and_keep(kept, query, params, one)
            except psycopg.Error:
                pass  # closed by _read_and_keep; tried once on a new connection
        with self._idle_lock:
            self.lookup_connects += 1
        return self._read_and_keep(self._connect(), query, params, one)

    def _read_and_keep(self, conn: psycopg.Connection[dict[str, Any]], query: str, params: tuple[Any, ...],
                       one: bool) -> Any:
        """``query`` on ``conn``, then ``conn`` kept for the next lookup (closed if enough are, or on error)."""
        try:
            cur = conn.execute(query, params)
            out = cur.fetchone() if one else cur.fetchall()
        except BaseException:
            conn.close()
            raise
        with self._idle_lock:
            keep = not self._closing.is_set() and len(self._idle) < LOOKUP_IDLE
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()
        return out

    # -- heartbeat and sweeper ----------------------------------------------

    def _beat(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "INSERT INTO nodes (node_id, advertise_url, incarnation, lease_ttl) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), advertise_url = EXCLUDED.advertise_url,"
            " incarnation = EXCLUDED.incarnation, lease_ttl = EXCLUDED.lease_ttl",
            (self.node_id, self.advertise_url, self.incarnation, self.lease_ttl))
        self.last_beat = time.monotonic()

    def sweep(self, conn: psycopg.Connection[Any]) -> list[str]:
        """End the running turns of dead nodes as interrupted, if this node wins the sweeper's lock."""
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            if not cur.execute("SELECT pg_try_advisory_xact_lock(%s) AS won", (SWEEP_LOCK,)).fetchone()["won"]:
                return []  # another node sweeps now
            runs = cur.execute(
                "SELECT r.id, r.session_id, r.first_seq, r.last_seq, r.partial_content, r.node_id"
                " FROM runs r LEFT JOIN nodes n ON n.node_id = r.node_id"
                f" WHERE r.status = 'running' AND r.node_id IS NOT NULL AND r.node_id <> %s AND NOT {ALIVE}"
                " ORDER BY r.started_at, r.n FOR UPDATE OF r SKIP LOCKED", (self.node_id,)).fetchall()
            for node in sorted({r["node_id"] for r in runs}):
                theirs = [r for r in runs if r["node_id"] == node]
                interrupt_in(conn, theirs, node_lost_reason(node), 10**9)
                log.warning("cluster.swept", node=node, runs=[r["id"] for r in theirs])
        self.swept += len(runs)
        if runs:  # committed: their sessions are free, and what their queues hold may start
            try:
                self.on_swept(sorted({r["session_id"] for r in runs}))
            except Exception:  # noqa: BLE001 — the beat goes on whatever the callback did
                log.exception("cluster.on_swept_failed")
        return [r["id"] for r in runs]

    def _beat_loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        lost_since_beat: float | None = None  # the last_beat for which on_lost was called
        while not self._closing.wait(self.beat_every):
            last = self.last_beat
            if last is not None and time.monotonic() - last > self.lease_ttl and lost_since_beat != last:
                lost_since_beat = last
                gap = time.monotonic() - last
                log.error("cluster.lease_lost", node=self.node_id, seconds_since_heartbeat=round(gap, 1))
                self._call_lost(f"this node could not renew its lease for {gap:.1f} s (TTL {self.lease_ttl:g} s)")
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = self._connect()
                self._beat(conn)
                self.sweep(conn)
            except psycopg.Error as exc:
                log.warning("cluster.beat_failed", node=self.node_id, error=" ".join(str(exc).split()))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _call_lost(self, reason: str) -> None:
        try:
            self.on_lost(reason)
        except Exception:  # noqa: BLE001 — the beat goes on whatever the callback did
            log.exception("cluster.on_lost_failed")

    # -- stop and kill between nodes -----------------------------------------

    def _listen_loop(self) -> None:
        backoff = 0.1
        while not self._closing.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    log.info("cluster.listening", node=self.node_id)
                    backoff = 0.1
                    while not self._closing.is_set():
                        self._serve_pending(conn)  # at every (re)connection, and after each wake-up
                        for _ in conn.notifies(timeout=RESCAN, stop_after=1):
                            pass
            except psycopg.Error as exc:
                if self._closing.is_set():
                    break
                log.warning("cluster.listener_lost", node=self.node_id, error=" ".join(str(exc).split()),
                            retry_in=backoff)
            finally:
                self.listening.clear()
            self._closing.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _serve_pending(self, conn: psycopg.Connection[Any]) -> None:
        pending = conn.execute("SELECT id, session_id, run_id, op, requested_by FROM control"
                               " WHERE node_id = %s AND acked_at IS NULL ORDER BY id", (self.node_id,)).fetchall()
        for req in pending:
            try:
                result = self.on_control(req)
            except Exception as exc:  # noqa: BLE001 — the caller learns it failed
                log.exception("cluster.control_failed", request=req["id"])
                result = f"failed: {exc}"
            conn.execute("UPDATE control SET acked_at = now(), result = %s WHERE id = %s", (result, req["id"]))
            log.info("cluster.control_done", request=req["id"], session_id=req["session_id"], op=req["op"],
                     result=result, requested_by=req["requested_by"])

    def request(self, session_id: str, op: str, timeout: float = ACK_WAIT) -> dict[str, Any]:
        """Ask the node running the turn of ``session_id``, if another, to carry out an op (`OPS`); what became of it.

        ``{"delivered": True, "node", "result", "url", "run_id", "first_seq"}`` once the owner ran it
        (``url``: where it serves; ``run_id``, ``first_seq``: the turn that ran when it was asked);
        ``{"delivered": False, "node"?, "reason"}`` when no other node runs a
        turn of the session, the owner is dead (the sweeper ends its turn), or
        it did not answer within ``timeout`` seconds (the request stays, and
        the owner runs it when it reads it).
        """
        if op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, not {op!r}")
        with self._connect() as conn:
            with conn.transaction():
                run = conn.execute(
                    f"SELECT r.id, r.node_id, r.first_seq, n.advertise_url, {ALIVE} AS alive"
                    " FROM runs r LEFT JOIN nodes n ON n.node_id = r.node_id"
                    " WHERE r.session_id = %s AND r.status = 'running' AND r.node_id <> %s"
                    " ORDER BY r.started_at DESC LIMIT 1", (session_id, self.node_id)).fetchone()
                if run is None:
                    return {"delivered": False, "reason": "no turn of this session runs on another node"}
                if not run["alive"]:
                    return {"delivered": False, "node": run["node_id"],
                            "reason": "the node running it stopped answering; its turn is ended as interrupted"}
                rid = conn.execute(
                    "INSERT INTO control (session_id, run_id, node_id, op, requested_by) VALUES (%s, %s, %s, %s, %s)"
                    " RETURNING id", (session_id, run["id"], run["node_id"], op, self.node_id)).fetchone()["id"]
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run["node_id"]))
            deadline = time.monotonic() + timeout
            while True:
                row = conn.execute("SELECT acked_at, result FROM control WHERE id = %s", (rid,)).fetchone()
                if row["acked_at"] is not None:
                    return {"delivered": True, "node": run["node_id"], "result": row["result"],
                            "url": run["advertise_url"], "run_id": run["id"], "first_seq": run["first_seq"]}
                if time.monotonic() > deadline or self._closing.wait(0.01):
                    return {"delivered": False, "node": run["node_id"],
                            "reason": f"node {run['node_id']} did not acknowledge within {timeout:g} s"}

    def wait_ended(self, session_id: str, timeout: float) -> bool:
        """Wait until no live node runs a turn of ``session_id`` (True), or ``timeout`` seconds (False)."""
        deadline = time.monotonic() + timeout
        with self._connect() as conn:
            while conn.execute(
                    f"SELECT 1 FROM runs r LEFT JOIN nodes n ON n.node_id = r.node_id WHERE r.session_id = %s"
                    f" AND r.status = 'running' AND {ALIVE}", (session_id,)).fetchone() is not None:
                if time.monotonic() > deadline or self._closing.wait(0.05):
                    return False
        return True

    def owner(self, session_id: str) -> dict[str, Any] | None:
        """The live node other than this one that runs a turn of ``session_id``: ``{"node", "url", "run_id"}``."""
        return self._lookup(
            "SELECT r.node_id AS node, n.advertise_url AS url, r.id AS run_id FROM runs r"
            " JOIN nodes n ON n.node_id = r.node_id WHERE r.session_id = %s AND r.status = 'running'"
            f" AND r.node_id <> %s AND {ALIVE} ORDER BY r.started_at DESC LIMIT 1",
            (session_id, self.node_id), one=True)

    def run_running(self, run_id: str) -> bool:
        """Whether the run is still marked running (its node's or the sweeper's end not yet written)."""
        return self._lookup("SELECT 1 FROM runs WHERE id = %s AND status = 'running'", (run_id,), one=True) is not None

    def running(self) -> list[dict[str, Any]]:
        """The running turns of every live node: ``{"run_id", "session_id", "node", "url", "started_at"}``."""
        return self._lookup(
            "SELECT r.id AS run_id, r.session_id, r.node_id AS node, n.advertise_url AS url, r.started_at"
            f" FROM runs r JOIN nodes n ON n.node_id = r.node_id WHERE r.status = 'running' AND {ALIVE}"
            " ORDER BY r.started_at, r.n", (), one=False)

    def __repr__(self) -> str:
        return f"<PgNode {self.node_id} on {redact(self.url)} ttl={self.lease_ttl:g}s>"
