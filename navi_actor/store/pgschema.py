"""The PostgreSQL store's schema: its versioned migrations, and the SQL that says a node is alive.

Pure data: the backend (`navi_actor.store.postgres`) applies the migrations
in order at open, each version in the transaction that records it in
``navi_schema``.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "PG_SCHEMA_VERSION", "MIGRATION_LOCK", "ALIVE"]

#: The advisory lock key that serialises migrations ("navi" in ASCII, then 1).
MIGRATION_LOCK = 0x6E617669_0001

#: begin_run as one statement (one round trip, its own transaction outside a batch): lock the
#: session, refuse a reused run id, stop at another node's running turn (the caller sorts that
#: out: busy, or a dead node's turn to end first), take the lease (a new generation when it
#: changes hands), then write the run and its user message. Outcomes: ok, no_session,
#: run_exists, other_node; o_base is the session's last_seq, o_generation the lease's.
BEGIN_RUN = """
CREATE FUNCTION navi_begin_run(p_sid text, p_rid text, p_node text, p_now double precision,
                               p_content text, p_data text, p_title text)
RETURNS TABLE (o_outcome text, o_base bigint, o_generation bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_last bigint;
    v_gen bigint;
BEGIN
    SELECT s.last_seq INTO v_last FROM sessions s WHERE s.id = p_sid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_session'::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM runs r WHERE r.id = p_rid) THEN
        RETURN QUERY SELECT 'run_exists'::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM runs r WHERE r.session_id = p_sid AND r.status = 'running'
               AND r.node_id IS NOT NULL AND r.node_id <> p_node) THEN
        RETURN QUERY SELECT 'other_node'::text, v_last, NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO leases AS l (session_id, node_id, generation) VALUES (p_sid, p_node, 1)
        ON CONFLICT (session_id) DO UPDATE SET node_id = EXCLUDED.node_id,
            generation = l.generation + 1, taken_at = now()
        WHERE l.node_id <> EXCLUDED.node_id
        RETURNING l.generation INTO v_gen;
    IF v_gen IS NULL THEN  -- this node held it already: the same generation
        SELECT l.generation INTO v_gen FROM leases l WHERE l.session_id = p_sid;
    END IF;
    INSERT INTO runs (id, session_id, status, started_at, first_seq, node_id, generation)
        VALUES (p_rid, p_sid, 'running', p_now, v_last + 1, p_node, v_gen);
    INSERT INTO messages (session_id, run_id, role, content, data, created_at)
        VALUES (p_sid, p_rid, 'user', p_content, p_data, p_now);
    UPDATE sessions s SET updated_at = p_now,
        title = CASE WHEN p_title <> '' AND (s.title IS NULL OR s.title = '') THEN p_title ELSE s.title END
        WHERE s.id = p_sid;
    RETURN QUERY SELECT 'ok'::text, v_last, v_gen;
END
$$"""

#: Version 3's navi_begin_run: the same, with the message's client_message_id (``p_client``).
BEGIN_RUN_3 = """
CREATE FUNCTION navi_begin_run(p_sid text, p_rid text, p_node text, p_now double precision,
                               p_content text, p_data text, p_title text, p_client text)
RETURNS TABLE (o_outcome text, o_base bigint, o_generation bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_last bigint;
    v_gen bigint;
BEGIN
    SELECT s.last_seq INTO v_last FROM sessions s WHERE s.id = p_sid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_session'::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM runs r WHERE r.id = p_rid) THEN
        RETURN QUERY SELECT 'run_exists'::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM runs r WHERE r.session_id = p_sid AND r.status = 'running'
               AND r.node_id IS NOT NULL AND r.node_id <> p_node) THEN
        RETURN QUERY SELECT 'other_node'::text, v_last, NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO leases AS l (session_id, node_id, generation) VALUES (p_sid, p_node, 1)
        ON CONFLICT (session_id) DO UPDATE SET node_id = EXCLUDED.node_id,
            generation = l.generation + 1, taken_at = now()
        WHERE l.node_id <> EXCLUDED.node_id
        RETURNING l.generation INTO v_gen;
    IF v_gen IS NULL THEN  -- this node held it already: the same generation
        SELECT l.generation INTO v_gen FROM leases l WHERE l.session_id = p_sid;
    END IF;
    INSERT INTO runs (id, session_id, status, started_at, first_seq, node_id, generation)
        VALUES (p_rid, p_sid, 'running', p_now, v_last + 1, p_node, v_gen);
    INSERT INTO messages (session_id, run_id, role, content, data, created_at, client_message_id)
        VALUES (p_sid, p_rid, 'user', p_content, p_data, p_now, p_client);
    UPDATE sessions s SET updated_at = p_now,
        title = CASE WHEN p_title <> '' AND (s.title IS NULL OR s.title = '') THEN p_title ELSE s.title END
        WHERE s.id = p_sid;
    RETURN QUERY SELECT 'ok'::text, v_last, v_gen;
END
$$"""

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
        BEGIN_RUN,
    ),
    # The queue of messages waiting for their session's turn, client message ids, a session's if_busy.
    3: (
        """CREATE TABLE queue (
            message_id text PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY,
            session_id text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            ord bigint NOT NULL, content text NOT NULL, data text NOT NULL,
            client_message_id text, created_at double precision)""",
        "CREATE INDEX queue_session ON queue (session_id, ord)",
        "CREATE UNIQUE INDEX queue_client_id ON queue (session_id, client_message_id)",
        "ALTER TABLE messages ADD COLUMN client_message_id text",
        "CREATE UNIQUE INDEX messages_client_id ON messages (session_id, client_message_id)",
        "ALTER TABLE sessions ADD COLUMN if_busy text",
        "DROP FUNCTION navi_begin_run(text, text, text, double precision, text, text, text)",
        BEGIN_RUN_3,
    ),
}
PG_SCHEMA_VERSION = max(MIGRATIONS)

#: SQL: node ``n`` (a row of ``nodes``, LEFT JOINed: NULL when it never registered) is alive: its last
#: heartbeat is younger than its lease TTL, or PostgreSQL itself started less than that long ago
#: (after a restart of the database, every node gets a TTL to reconnect before it is judged dead).
ALIVE = ("COALESCE(n.heartbeat_at > now() - make_interval(secs => n.lease_ttl)"
         " OR now() < pg_postmaster_start_time() + make_interval(secs => n.lease_ttl), false)")
