"""The sandbox's modes and failures with a real server: what it says at start, what it refuses to start
with, and what viewers get when one actor cannot confine itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from navi_actor.sandbox import landlock
from supervisor.control import request
from tests.conftest import ROOT, run_turn, wait_for

needs_landlock = pytest.mark.skipif(landlock.abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")


def _serve(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Start ``navi-actor serve`` that is expected to refuse: its exit code and output."""
    cmd = [sys.executable, "-m", "navi_actor", "serve", "--port", "0", "--data-dir", str(tmp_path / "var"),
           "--log-format", "json", *args]
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def _log_events(server) -> list[dict]:
    return [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]


@needs_landlock
def test_strict_refuses_an_older_kernel_with_exit_code_2(tmp_path):
    """--sandbox strict on a Landlock ABI 3 kernel (the ABI limit pretends one): exit 2, naming the feature."""
    done = _serve(tmp_path, "--sandbox", "strict", env={"NAVI_SANDBOX_ABI_LIMIT": "3"})
    assert done.returncode == 2, done.stderr
    assert "Landlock TCP rules (Linux 6.7, ABI 4)" in done.stderr
    assert "signal scoping (Linux 6.12, ABI 6)" in done.stderr


@pytest.mark.parametrize("args,message", [
    (["--sandbox-read", "/no/such/folder"], "--sandbox-read /no/such/folder: no such file or folder"),
    (["--sandbox-write", "{tmp}"], "contains the data folder"),
])
def test_bad_sandbox_paths_refuse_to_start(tmp_path, args, message):
    """A --sandbox-read path that does not exist, a --sandbox-write one holding the data folder: exit 2."""
    done = _serve(tmp_path, *[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2 and message in done.stderr, done.stderr


@needs_landlock
async def test_auto_on_an_older_kernel_says_what_it_lacks_and_ps_shows_it(make_server, client):
    """auto with ABI 3: the server starts, logs serve.sandbox_partial with what is missing, and ps --json
    shows each actor's sandbox with the ABI and the parts in force."""
    server = make_server("tests.agents:scripted", env={"NAVI_SANDBOX_ABI_LIMIT": "3"})
    c = client(server)
    _sid, ws = await c.open_session()
    assert (await run_turn(ws, "fast 3"))[-1]["type"] == "stream_end"
    partial = [e for e in _log_events(server) if e["event"] == "serve.sandbox_partial"]
    assert partial and partial[0]["landlock_abi"] == 3
    assert "tcp_bind" not in partial[0]["enforced"] and "files" in partial[0]["enforced"]
    done = subprocess.run([sys.executable, "-m", "navi_actor", "ps", "--json", "--data-dir", str(server.data_dir)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30)
    rows = json.loads(done.stdout)
    rows = rows["actors"] if isinstance(rows, dict) else rows
    assert rows and all(r["sandbox"]["landlock_abi"] == 3 and r["sandbox"]["mode"] == "auto" for r in rows)


async def test_off_warns_at_every_start(make_server):
    """--sandbox off: a warning at start that agents run unconfined."""
    server = make_server("tests.agents:scripted", args=["--sandbox", "off"])
    events = [e for e in _log_events(server) if e["event"] == "serve.sandbox_off"]
    assert events and events[0]["level"] == "warning"


@needs_landlock
async def test_an_actor_that_cannot_confine_itself_fails_its_turn_with_sandbox_failed(make_server, client):
    """A factory that starts a thread (which ABI 7 could not confine): the turn ends with error
    sandbox_failed and the cause; the server stays up and the warm pool does not respawn in a loop."""
    server = make_server("tests.agents:threaded_factory", args=["--warm-actors", "1"])
    c = client(server)
    _sid, ws = await c.open_session()
    events = await run_turn(ws, "hi")
    assert events[-1]["type"] == "error" and events[-1]["code"] == "sandbox_failed", events[-1]
    assert "threads were running" in events[-1]["message"]
    assert "should not run" not in json.dumps(events)
    status = request(server.data_dir / "run" / "control.sock", {"op": "status"})
    wait_for(lambda: request(server.data_dir / "run" / "control.sock", {"op": "status"})["warm"] == 1, 10,
             "the warm pool refilled once")
    spawns = request(server.data_dir / "run" / "control.sock", {"op": "status"})["spawns"]
    assert spawns <= status["spawns"] + 1, "actors are respawned in a loop"
    assert server.proc.poll() is None
