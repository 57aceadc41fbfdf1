"""`navi-actor serve --store postgresql://…`: the real server on a real PostgreSQL (tests/pgserver.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import psutil
import psycopg
import pytest
from psycopg.rows import dict_row

from navi_actor.store.postgres import PG_SCHEMA_VERSION
from tests.conftest import ROOT, receive, run_turn, text_of
from tests.pgserver import CLUSTER_ENV

FAST = {"NAVI_AGENT_TOKENS_PER_SECOND": "0", **CLUSTER_ENV}
SCRIPTED = "tests.agents:scripted"


async def poll(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """``cond()`` once it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def rows(url: str, sql: str, *args: object) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


async def test_a_turn_on_postgres_is_kept_in_postgres(make_server, client, pg_url, tmp_path):
    """A turn served with --store postgresql://… leaves its run and messages in PostgreSQL, and no SQLite file."""
    data = tmp_path / "data"
    server = make_server("demo", FAST, args=["--store", pg_url], data_dir=data)
    c = client(server)
    sid, ws = await c.open_session()
    events = await run_turn(ws, "What is 2 + 40?")
    assert events[-1]["type"] == "stream_end"
    runs = rows(pg_url, "SELECT id, session_id, status, first_seq, last_seq FROM runs")
    assert runs == [{"id": events[0]["run_id"], "session_id": sid, "status": "done", "first_seq": 1,
                     "last_seq": events[-1]["seq"]}]
    msgs = rows(pg_url, "SELECT role, content FROM messages WHERE session_id = %s ORDER BY id", sid)
    assert [m["role"] for m in msgs] == ["user", "tool", "assistant"]
    assert msgs[0]["content"] == "What is 2 + 40?" and msgs[2]["content"] == events[-1]["content"]
    assert rows(pg_url, "SELECT version FROM navi_schema") == [{"version": PG_SCHEMA_VERSION}]
    assert not (data / "navi.sqlite3").exists()
    detail = await c.session(sid)
    assert [m["role"] for m in detail["messages"]] == ["user", "tool", "assistant"]
    await ws.close()
    assert server.stop() == 0
    # Another server, another data folder, the same database: the same session and its history.
    other = make_server("demo", FAST, args=["--store", pg_url], data_dir=tmp_path / "other")
    c2 = client(other)
    assert (await c2.session(sid))["messages"] == detail["messages"]
    ws2 = await c2.connect(sid)
    assert await receive(ws2) == {"type": "session_sync"}
    again = await run_turn(ws2, "and again")
    assert again[0]["seq"] == events[-1]["seq"] + 1 and "turn 2 of this session" in again[-1]["content"]


async def test_a_turn_cut_by_a_crash_ends_interrupted_in_postgres(make_server, client, pg_url, tmp_path):
    """kill -9 of the server mid-turn: the next start marks the run interrupted, keeping its checkpointed text."""
    data = tmp_path / "data"
    node = ["--store", pg_url, "--node-id", "n1"]  # restarted as the same node (--port 0 picks another port)
    server = make_server(SCRIPTED, args=node, data_dir=data, env=CLUSTER_ENV)
    c = client(server)
    sid, ws = await c.busy_session("slow 400 0.01")
    run_id = rows(pg_url, "SELECT id FROM runs WHERE status = 'running'")[0]["id"]
    # A checkpoint (about once a second) reaches the database.
    checkpointed = await poll(lambda: rows(pg_url, "SELECT partial_content FROM runs WHERE id = %s",
                                           run_id)[0]["partial_content"], "a checkpoint in PostgreSQL")
    family = server.descendants()
    server.proc.send_signal(signal.SIGKILL)
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # an actor may already have followed its supervisor
            p.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    await ws.close()
    restarted = make_server(SCRIPTED, args=node, data_dir=data, env=CLUSTER_ENV)
    run = rows(pg_url, "SELECT status, error_code FROM runs WHERE id = %s", run_id)[0]
    assert run == {"status": "interrupted", "error_code": "interrupted"}
    last = (await client(restarted).session(sid))["messages"][-1]
    assert last["role"] == "assistant" and last["status"] == "interrupted"
    assert last["content"].startswith(checkpointed)


async def test_actors_cannot_read_the_postgresql_password_file(make_server, client, pg_url, tmp_path):
    """PGPASSFILE is left out of the actors' sandbox like the tokens file, even inside a folder they may read."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    passfile = secrets / "pgpass"
    passfile.write_text("*:*:*:navi:hunter2\n")
    passfile.chmod(0o600)
    (secrets / "notes.txt").write_text("not a secret")
    server = make_server(SCRIPTED, env={"PGPASSFILE": str(passfile), **CLUSTER_ENV},
                         args=["--store", pg_url, "--sandbox-read", str(secrets)])
    if "serve.sandbox_off" in server.log_text() or '"files": false' in server.log_text():
        pytest.skip("this kernel has no Landlock for files: nothing to confine the actor with")
    _sid, ws = await client(server).open_session()
    assert text_of(await run_turn(ws, f"canread {secrets / 'notes.txt'}")) == "open"
    assert text_of(await run_turn(ws, f"canread {passfile}")).startswith("denied")


def test_serve_says_so_when_postgresql_cannot_be_reached(tmp_path):
    """Nothing listens at the store's address: serve exits at once, with a message naming the store."""
    from supervisor.causes import EXIT_CANNOT_START
    from tests.pgserver import _free_port

    url = f"postgresql://navi@127.0.0.1:{_free_port()}/navi"
    out = subprocess.run([sys.executable, "-m", "navi_actor", "serve", "--port", "0", "--store", url,
                          "--data-dir", str(tmp_path / "var"), "--log-format", "json"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **CLUSTER_ENV})
    assert out.returncode == EXIT_CANNOT_START
    assert f"cannot use store {url}" in out.stderr and "Connection refused" in out.stderr


@pytest.mark.parametrize("env, args, says", [
    ({}, [], ["NAVI_CLUSTER_SECRET", "--cluster-secret-file"]),
    (CLUSTER_ENV, ["--cluster-secret-file", "SECRET_FILE"], ["given twice", "one way only"]),
    ({"NAVI_CLUSTER_SECRET": "short"}, [], ["NAVI_CLUSTER_SECRET", "5 bytes long", "at least 16"]),
    ({}, ["--cluster-secret-file", "SHORT_FILE"], ["--cluster-secret-file", "at least 16"]),
    ({}, ["--cluster-secret-file", "MISSING_FILE"], ["--cluster-secret-file", "cannot read"]),
    ({}, ["--cluster-secret-file", "OPEN_FILE"], ["--cluster-secret-file", "open to other users (mode 0644)",
                                                   "chmod 600"]),
])
def test_serve_on_postgresql_refuses_to_start_without_one_usable_cluster_secret(tmp_path, env, args, says):
    """A PostgreSQL store needs the nodes' secret, given one way: missing, given twice, too short, unreadable or open to other users,
    serve exits 2 at once (before it reaches the database), saying how to give it."""
    from supervisor.causes import EXIT_CANNOT_START
    from tests.pgserver import _free_port

    files = {"SECRET_FILE": "a-secret-in-a-file-0123456789\n", "SHORT_FILE": "short\n",
             "OPEN_FILE": "a-secret-anyone-may-read-0123456789\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o644 if name == "OPEN_FILE" else 0o600)
    args = [str(tmp_path / a) if a in (*files, "MISSING_FILE") else a for a in args]
    base = {k: v for k, v in os.environ.items() if not k.startswith("NAVI_")}
    url = f"postgresql://navi@127.0.0.1:{_free_port()}/navi"  # nothing listens: the secret is checked first
    out = subprocess.run([sys.executable, "-m", "navi_actor", "serve", "--port", "0", "--store", url,
                          "--data-dir", str(tmp_path / "var"), "--log-format", "json", *args],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env={**base, **env})
    assert out.returncode == EXIT_CANNOT_START, out.stderr
    for words in says:
        assert words in out.stderr, out.stderr
    assert "cannot use store" not in out.stderr and "a-secret" not in out.stderr + out.stdout
