"""Operations: the real ps/kill scripts, the control socket, /runs, /metrics, SIGHUP reload."""

from __future__ import annotations

import asyncio
import json
import os
import time
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FINAL_TYPES, ROOT, receive, receive_until, run_turn, text_of, wait_for

LADDER = ["--stop-grace", "0.3", "--stop-term-after", "1", "--stop-kill-after", "1"]


def script(name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run scripts/<name> as an operator would."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def rows_of(server) -> list[dict]:
    out = script("navi-ps", "--data-dir", str(server.data_dir), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["actors"]


async def test_ps_lists_running_sessions(make_server, client):
    """navi-ps shows each actor with its session, pid, state, run and counters, as a table or JSON."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    s1, _ = await c.busy_session()
    s2, _ = await c.busy_session()
    rows = wait_for(lambda: [r for r in rows_of(server) if r["state"] == "running"] if
                    len([r for r in rows_of(server) if r["state"] == "running"]) == 2 else None, 10, "two running")
    assert {r["session_id"] for r in rows} == {s1, s2}
    for r in rows:
        assert r["pid"] in server.actor_pids() and len(r["run_id"]) == 32
        assert r["events"] >= 1 and r["viewers"] == 1 and r["rss"] > 1_000_000 and r["turn_age"] >= 0
    table = script("navi-ps", "--data-dir", str(server.data_dir), "--sort", "rss")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["SESSION", "PID", "STATE", "RUN"]
    assert s1 in table.stdout and s2 in table.stdout
    async with c.http.get(server.url + "/runs") as r:
        assert {row["session_id"] for row in (await r.json())["actors"]} == {s1, s2}


async def test_kill_one_session_stops_it_and_spares_the_other(make_server, client):
    """navi-kill SESSION runs the ladder on that run only: its viewer gets killed_by_operator, the other goes on."""
    server = make_server("tests.agents:scripted", args=LADDER)
    c = client(server)
    victim, vws = await c.busy_session()
    other, ows = await c.busy_session("slow 30 0.02")
    out = script("navi-kill", "--data-dir", str(server.data_dir), victim)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == [victim, str(out.stdout.split()[1]), "stopped"]
    final = (await receive_until(vws, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "stream_stopped" and final["reason"] == "killed_by_operator"
    assert (await receive_until(ows, lambda e: e["type"] in FINAL_TYPES))[-1]["type"] == "stream_end"
    saved = (await c.session(victim))["messages"][-1]
    assert saved["status"] == "stopped" and saved["error_code"] == "killed_by_operator"


async def test_force_kill_of_an_agent_that_ignores_stop(make_server, client):
    """--force SIGKILLs the actor's group at once; its viewer gets error killed_by_operator."""
    server = make_server("tests.agents:scripted", args=LADDER)
    c = client(server)
    sid, ws = await c.busy_session("ignore_stop")
    out = script("navi-kill", "--data-dir", str(server.data_dir), "--force", sid)
    assert out.returncode == 0 and out.stdout.split()[-1] == "killed", out.stdout + out.stderr
    final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))[-1]
    assert final["type"] == "error" and final["code"] == "killed_by_operator"
    assert "killed by an operator" in final["message"]


async def test_older_than_and_dry_run_pick_only_old_turns(make_server, client):
    """--older-than selects running turns past the age; --dry-run reports and changes nothing."""
    server = make_server("tests.agents:scripted", args=LADDER)
    c = client(server)
    old, ows = await c.busy_session()
    idle = await c.new_session()
    iws = await c.connect(idle)
    await receive(iws)
    await run_turn(iws, "hi")
    wait_for(lambda: any(r["session_id"] == old and (r["turn_age"] or 0) >= 0.3 for r in rows_of(server)), 10,
             "the turn to age")
    dry = script("navi-kill", "--data-dir", str(server.data_dir), "--older-than", "300ms", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith(old) and "would stop" in dry.stdout
    assert idle not in dry.stdout
    assert any(r["session_id"] == old for r in rows_of(server)), "dry run changed nothing"
    idle_only = script("navi-kill", "--data-dir", str(server.data_dir), "--idle", "--dry-run")
    assert idle in idle_only.stdout and old not in idle_only.stdout
    out = script("navi-kill", "--data-dir", str(server.data_dir), "--older-than", "300ms")
    assert out.returncode == 0 and out.stdout.split()[0] == old
    assert (await receive_until(ows, lambda e: e["type"] in FINAL_TYPES))[-1]["type"] == "stream_stopped"


async def test_kill_works_while_the_front_is_down(make_server, client):
    """With the front killed, navi-kill still reaches the supervisor and the run ends and is saved."""
    server = make_server("tests.agents:scripted", args=LADDER)
    c = client(server)
    sid, _ = await c.busy_session()
    os.kill(server.front_pid, signal.SIGKILL)
    out = script("navi-kill", "--data-dir", str(server.data_dir), sid)
    assert out.returncode == 0, out.stdout + out.stderr
    detail = await c.wait_session(sid, lambda d: d["messages"][-1]["role"] == "assistant")
    assert detail["messages"][-1]["status"] in ("stopped", "interrupted")


def test_no_server_is_exit_2(tmp_path: Path):
    """Both scripts say clearly that no server runs there, with exit code 2; bad usage is also 2."""
    for name in ("navi-ps", "navi-kill"):
        out = script(name, "--data-dir", str(tmp_path), *(["--all"] if name == "navi-kill" else []))
        assert out.returncode == 2 and "no navi-actor server runs here" in out.stderr
    assert script("navi-kill", "--data-dir", str(tmp_path)).returncode == 2
    assert script("navi-kill", "--older-than", "soon").returncode == 2


def test_control_socket_is_private(make_server):
    """The runtime folder is 0700 and the control socket 0600."""
    server = make_server("tests.agents:scripted")
    run = server.data_dir / "run"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert stat.S_IMODE((run / "control.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700


async def test_metrics_count_crashes_and_stops(make_server, client):
    """/metrics parses as Prometheus text; crash, stop and spawn counters move."""
    server = make_server("tests.agents:scripted", args=LADDER)
    c = client(server)

    async def scrape() -> dict[tuple[str, tuple], float]:
        async with c.http.get(server.url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    before = await scrape()
    sid = await c.new_session()
    ws = await c.connect(sid)
    await receive(ws)
    await run_turn(ws, "crash")
    await ws.send_json({"type": "message", "content": "slow 500 0.02"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    await c.stop(sid)
    await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    spawns = before.get(("navi_actor_spawns_total", ()), 0) + 2
    # The idle state shows once the front has the turn's end; the warm pool's refill (the second
    # spawn) comes REFILL_DELAY after the turn took a warm actor, later on a loaded machine.
    deadline = time.monotonic() + 10
    while ((after := await scrape()).get(("navi_actors", (("state", "idle"),)), 0) < 1
           or after[("navi_actor_spawns_total", ())] < spawns):
        assert time.monotonic() < deadline, f"the idle actor or the refill never showed in /metrics: {after}"
        await asyncio.sleep(0.05)
    assert after[("navi_turns_total", (("outcome", "failed"),))] >= 1
    assert after[("navi_turns_total", (("outcome", "stopped"),))] >= 1
    assert after[("navi_stops_total", (("step", "event"),))] >= 1
    assert after[("navi_actor_exits_total", (("cause", "exit_3"),))] >= 1
    assert after[("navi_actor_spawns_total", ())] >= spawns
    assert after[("navi_events_forwarded_total", ())] > before[("navi_events_forwarded_total", ())]
    assert after[("navi_time_to_first_event_seconds_count", ())] >= 2
    assert after[("navi_actors", (("state", "idle"),))] >= 1
    assert ("navi_websocket_clients", ()) in after
    assert after[("navi_zygote_up", ())] == 1 and after[("navi_zygote_failures_total", ())] == 0
    batches, calls = after[("navi_store_batches_total", ())], after[("navi_store_calls_total", ())]
    assert 0 < batches <= calls
    assert calls > before[("navi_store_calls_total", ())]


async def test_sighup_reloads_agent_code_without_cutting_a_turn(make_server, client, tmp_path):
    """After SIGHUP the running turn finishes on the old code and the next turn runs the new."""
    pkg = tmp_path / "agentsrc"
    pkg.mkdir()
    module = pkg / "reloadable.py"
    source = textwrap.dedent('''
        import asyncio
        from navi_actor.events import TextDelta
        VERSION = "{v}"
        async def agent(turn):
            for i in range(int(turn.display_content)):
                yield TextDelta(VERSION + " ")
                await asyncio.sleep(0.02)
    ''')
    module.write_text(source.format(v="old"))
    server = make_server("reloadable:agent",
                         env={"PYTHONPATH": f"{ROOT}:{pkg}", "PYTHONDONTWRITEBYTECODE": "1"})
    c = client(server)
    sid = await c.new_session()
    ws = await c.connect(sid)
    await receive(ws)
    await ws.send_json({"type": "message", "content": "40"})
    await receive_until(ws, lambda e: e["type"] == "stream_delta")
    module.write_text(source.format(v="new"))
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "supervisor.reloaded" in server.log_text(), 10, "the reload")
    rest = await receive_until(ws, lambda e: e["type"] in FINAL_TYPES)
    assert rest[-1]["type"] == "stream_end" and set(rest[-1]["content"].split()) == {"old"}
    assert set(text_of(await run_turn(ws, "3")).split()) == {"new"}


def test_systemd_readiness_is_notified(make_server, tmp_path):
    """With NOTIFY_SOCKET set, the supervisor sends READY=1 once the front serves, STOPPING=1 on SIGTERM."""
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(15)
        server = make_server("echo", env={"NOTIFY_SOCKET": str(path)})
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1") and server.url in ready
        server.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert server.stop() == 0
