"""The PostgreSQL store's schema: its versioned migrations, and the SQL that says a node is alive.

Pure data: the backend (`navi_actor.store.postgres`) applies the migrations
in order at open, each version in the transaction that records it in
``navi_schema``.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "PG_SCHEMA_VERSION", "MIGRATION_LOCK", "ALIVE"]

#: The advisory lock key that serialises migrations ("navi" in ASCII, then 1).
MIGRATION_LOCK = 0x6E617669_0001

# Version N's statements turn a version N-1 database into version N.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE sessions (
            id text PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY,
            title text, created_at double precision, updated_at double precision,
            last_seq bigint NOT NULL DEFAULT 0, owner text)""",
        "CREATE INDEX sessions_updated ON sessions (updated_at DESC, n DESC)",
        "CREATE INDEX sessions_owner ON sessions (owner, updated_at DESC, n DESC)",
        """CREATE TABLE runs (
            id text PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY,
            session_id text REFERENCES sessions(id) ON DELETE CASCADE,
            status text NOT NULL, started_at double precision, ended_at double precision,
            first_seq bigint, last_seq bigint, partial_content text,
            error text, error_code text, stats text)""",
        "CREATE INDEX runs_running ON runs (started_at, n) WHERE status = 'running'",
        "CREATE INDEX runs_session ON runs (session_id, started_at, n)",
        """CREATE TABLE messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id text REFERENCES sessions(id) ON DELETE CASCADE,
            run_id text, role text NOT NULL, content text, data text,
            created_at double precision)""",
        "CREATE INDEX messages_session ON messages (session_id, id)",
    ),
    # Several nodes on one database: who is alive, who holds which session, stop/kill between nodes.
    2: (
        """CREATE TABLE nodes (
            node_id text PRIMARY KEY, advertise_url text, incarnation text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(), heartbeat_at timestamptz NOT NULL DEFAULT now(),
            lease_ttl double precision NOT NULL)""",
        """CREATE TABLE leases (
            session_id text PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
            node_id text NOT NULL, generation bigint NOT NULL, taken_at timestamptz NOT NULL DEFAULT now())""",
        "ALTER TABLE runs ADD COLUMN node_id text, ADD COLUMN generation bigint",
        "CREATE INDEX runs_node_running ON runs (node_id) WHERE status = 'running'",
        "CREATE INDEX runs_session_running ON runs (session_id) WHERE status = 'running'",
        """CREATE TABLE control (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, session_id text NOT NULL, run_id text,
            node_id text NOT NULL, op text NOT NULL, requested_by text,
            requested_at timestamptz NOT NULL DEFAULT now(), acked_at timestamptz, result text)""",
        "CREATE INDEX control_pending ON control (node_id) WHERE acked_at IS NULL",
    ),
}
PG_SCHEMA_VERSION = max(MIGRATIONS)

#: SQL: node ``n`` (a row of ``nodes``, LEFT JOINed: NULL when it never registered) is alive: its last
#: heartbeat is younger than its lease TTL, or PostgreSQL itself started less than that long ago
#: (after a restart of the database, every node gets a TTL to reconnect before it is judged dead).
ALIVE = ("COALESCE(n.heartbeat_at > now() - make_interval(secs => n.lease_ttl)"
         " OR now() < pg_postmaster_start_time() + make_interval(secs => n.lease_ttl), false)")
