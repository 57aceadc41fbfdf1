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
@pytest.mark.parametrize("abi", [3, 0])
async def test_auto_on_an_older_kernel_says_what_it_lacks_and_ps_shows_it(make_server, client, abi):
    """auto with ABI 3, or no Landlock at all: the server starts and serves, logs serve.sandbox_partial with
    what is missing, and ps --json shows each actor's sandbox with the ABI and the parts in force."""
    server = make_server("tests.agents:scripted", env={"NAVI_SANDBOX_ABI_LIMIT": str(abi)})
    c = client(server)
    _sid, ws = await c.open_session()
    assert (await run_turn(ws, "fast 3"))[-1]["type"] == "stream_end"
    partial = [e for e in _log_events(server) if e["event"] == "serve.sandbox_partial"]
    assert partial and partial[0]["landlock_abi"] == abi
    assert "tcp_bind" not in partial[0]["enforced"] and ("files" in partial[0]["enforced"]) == (abi > 0)
    assert {"seccomp", "capabilities"} <= set(partial[0]["enforced"])
    if abi == 0:
        assert any(m.startswith("files: needs Landlock") for m in partial[0]["missing"])
    done = subprocess.run([sys.executable, "-m", "navi_actor", "ps", "--json", "--data-dir", str(server.data_dir)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30)
    rows = json.loads(done.stdout)
    rows = rows["actors"] if isinstance(rows, dict) else rows
    assert rows and all(r["sandbox"]["landlock_abi"] == abi and r["sandbox"]["mode"] == "auto" for r in rows)


async def test_off_warns_at_every_start(make_server):
    """--sandbox off: a warning at start that agents run unconfined."""
    server = make_server("tests.agents:scripted", args=["--sandbox", "off"])
    events = [e for e in _log_events(server) if e["event"] == "serve.sandbox_off"]
    assert events and events[0]["level"] == "warning"


@needs_landlock
async def test_an_actor_that_cannot_confine_itself_fails_its_turn_with_sandbox_failed(make_server, client):
    """A session whose work folder is unusable (a file where .work should be): the turn ends with error
    sandbox_failed and the cause, no agent code runs, the server stays up, nothing respawns in a loop."""
    server = make_server("tests.agents:scripted", args=["--warm-actors", "1"])
    control = server.data_dir / "run" / "control.sock"
    wait_for(lambda: request(control, {"op": "status"})["warm"] == 1, 10, "a warm actor")
    c = client(server)
    sid = await c.new_session()
    folder = server.data_dir / "uploads" / sid
    assert (folder / ".work").is_dir() and (folder / ".tmp").is_dir(), "made with the session"
    (folder / ".work").rmdir()
    (folder / ".work").write_text("not a folder")
    ws = await c.connect(sid)
    events = await run_turn(ws, "fast 3")
    assert events[-1]["type"] == "error" and events[-1]["code"] == "sandbox_failed", events[-1]
    assert ".work is not a folder" in events[-1]["message"]
    assert not [e for e in events if e["type"] == "stream_delta"]
    spawns = request(control, {"op": "status"})["spawns"]
    wait_for(lambda: request(control, {"op": "status"})["warm"] == 1, 10, "the warm pool refilled")
    assert request(control, {"op": "status"})["spawns"] <= spawns + 1, "actors are respawned in a loop"
    assert server.proc.poll() is None
    async with c.http.get(server.url + "/metrics") as r:
        metrics = await r.text()
    assert "navi_sandbox_failures_total 1.0" in metrics, [l for l in metrics.splitlines() if "failures" in l]
    assert 'navi_sandbox_enforced{part="files"} 1.0' in metrics
    assert 'navi_sandbox_enforced{part="tcp_connect"} 0.0' in metrics  # no --sandbox-net-connect
    assert f'navi_sandbox_info{{landlock_abi="{landlock.abi()}",mode="auto"}} 1.0' in metrics


@needs_landlock
@pytest.mark.parametrize("warm", ["0", "1"])
async def test_threads_a_factory_starts_are_confined_too(make_server, client, warm):
    """A factory that starts a thread: a warm actor makes its agent after it is confined, so that thread
    cannot list the uploads root either (with or without a warm pool)."""
    server = make_server("tests.agents:threaded_factory", args=["--warm-actors", warm])
    if warm == "1":
        wait_for(lambda: request(server.data_dir / "run" / "control.sock", {"op": "status"})["warm"] == 1,
                 10, "a warm actor")
    c = client(server)
    _sid, ws = await c.open_session()
    events = await run_turn(ws, "hi")
    assert events[-1]["type"] == "stream_end" and events[-1]["content"] == "denied (EACCES)", events[-1]
