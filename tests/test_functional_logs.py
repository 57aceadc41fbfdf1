"""What operators see: every log line tagged, one id per actor, process titles, ps as of now, counts that agree."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from tests.conftest import FINAL_TYPES, ROOT, receive_until, run_turn, text_of, wait_for

LADDER = ["--stop-grace", "0.3", "--stop-term-after", "1", "--stop-kill-after", "1"]
ROLES = {"supervisor", "front", "actor"}


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=30, env=env)


def log_lines(server) -> list[dict[str, Any]]:
    """Every line of the server's log as JSON; any other line fails the test (but the serving banner)."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("navi-actor: serving on "):
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"a log line that is not JSON: {line!r}") from None
    return out


async def test_every_line_has_pid_and_role_and_each_actor_one_id(make_server, client):
    """A real server takes turns on warm actors, a user's stop, an operator's stop and an operator's kill; then
    every line of its JSON log has pid and role, and all the lines about one actor process (its own, the
    supervisor's, the front's) name it by one actor_id, the one it was assigned."""
    server = make_server("tests.agents:scripted", args=[*LADDER, "--warm-actors", "2"])
    c = client(server)
    _, ws = await c.open_session()
    assert text_of(await run_turn(ws, "hello")) == "hello "
    stopped, sws = await c.busy_session()
    await c.stop(stopped)
    assert (await receive_until(sws, lambda e: e["type"] in FINAL_TYPES))[-1]["type"] == "stream_stopped"
    operator, ows = await c.busy_session()
    out = script("navi-kill", "--data-dir", str(server.data_dir), operator)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (await receive_until(ows, lambda e: e["type"] in FINAL_TYPES))[-1]["reason"] == "killed_by_operator"
    killed, kws = await c.busy_session("ignore_stop")
    out = script("navi-kill", "--data-dir", str(server.data_dir), "--force", killed)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (await receive_until(kws, lambda e: e["type"] in FINAL_TYPES))[-1]["code"] == "killed_by_operator"
    for w in (ws, sws, ows, kws):
        await w.close()
    assert server.stop() == 0

    lines = log_lines(server)
    untagged = [ln for ln in lines if type(ln.get("pid")) is not int or ln.get("role") not in ROLES]
    assert not untagged, f"{len(untagged)} lines without pid or role, e.g. {untagged[:3]}"
    events = {ln["event"] for ln in lines}
    assert {"actor.assigned", "actor.stop", "actor.operator_stop", "supervisor.actor_assigned"} <= events

    assigned = {ln["actor_pid"]: ln["actor_id"] for ln in lines if ln["event"] == "supervisor.actor_assigned"}
    assert len(assigned) >= 4 and any(ln.get("warm") for ln in lines if ln["event"] == "supervisor.actor_assigned")
    ids: dict[int, set[str]] = defaultdict(set)  # actor pid → every actor_id a line gives it
    for ln in lines:
        pid = ln["pid"] if ln["role"] == "actor" else ln.get("actor_pid")
        if pid is not None and "actor_id" in ln:
            ids[pid].add(ln["actor_id"])
    for pid, actor_id in assigned.items():
        assert ids[pid] == {actor_id}, f"actor {pid} is named {ids[pid]}, assigned {actor_id}"
    for ln in lines:
        if ln["role"] == "actor" and ln["event"] == "actor.assigned":
            own = [x for x in lines if x["pid"] == ln["pid"] and x["role"] == "actor"]
            after = own[own.index(ln):]
            assert all(x.get("actor_id") == assigned[ln["pid"]] for x in after), after
            assert ln["warm_id"] != ln["actor_id"]
            spawned = [x for x in lines if x["event"] == "supervisor.actor_spawned" and x["actor_pid"] == ln["pid"]]
            assert spawned and spawned[0]["warm_id"] == ln["warm_id"]  # the warm life, found by its own id


# ── process titles ──────────────────────────────────────────────────────────


def title(pid: int) -> str:
    """The process's title as ps -f shows it: /proc/PID/cmdline up to its first NUL."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode()


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def titled(server, text: str) -> int | None:
    """The pid of the server's process titled ``text``, if there is one."""
    for p in server.descendants():
        try:
            if title(p.pid) == text:
                return p.pid
        except OSError:
            continue
    return None


async def test_each_process_has_a_title_that_follows_the_actors_state(make_server, client):
    """ps shows navi-actor: supervisor / front, the zygote by its name, and each actor with its session and
    state: warm, running, stopping (while its agent ignores the stop), idle, read from /proc/PID/cmdline."""
    server = make_server("tests.agents:scripted", args=["--warm-actors", "1", "--stop-grace", "5",
                                                         "--stop-term-after", "8", "--stop-kill-after", "2"])
    assert (title(server.pid), comm(server.pid)) == ("navi-actor: supervisor", "navi-supervisor")
    assert (title(server.front_pid), comm(server.front_pid)) == ("navi-actor: front", "navi-front")
    (zygote,) = server.zygote_pids()
    assert (title(zygote), comm(zygote)) == ("navi-zygote", "navi-zygote")
    warm = wait_for(lambda: titled(server, "navi-actor: actor - warm"), 10, "a warm actor's title")
    assert comm(warm) == "navi-actor"
    c = client(server)
    sid, ws = await c.busy_session("ignore_stop")
    pid = wait_for(lambda: titled(server, f"navi-actor: actor {sid} running"), 10, "the running title")
    assert pid == warm  # the warm actor took the session, and its title says so
    await c.stop(sid)
    wait_for(lambda: title(pid) == f"navi-actor: actor {sid} stopping", 4, "the stopping title")
    final = (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES, timeout=15))[-1]
    assert final["type"] == "stream_stopped"
    wait_for(lambda: title(pid) == f"navi-actor: actor {sid} idle", 10, "the idle title")
    assert comm(pid) == "navi-actor"
    await ws.close()


# ── ps, /healthz and /metrics ───────────────────────────────────────────────


def ps(server, *args: str) -> subprocess.CompletedProcess[str]:
    return script("navi-ps", "--data-dir", str(server.data_dir), *args)


async def scrape(c) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with c.http.get(c.server.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_ps_shows_the_state_as_of_the_moment_of_asking(make_server, client):
    """Half a second into a turn on a fresh actor, ps says running, with the events streamed so far, and that
    its state is 0 s old (the front is asked, not its report of up to a second ago)."""
    server = make_server("tests.agents:scripted", args=["--warm-actors", "0"])
    c = client(server)
    sid, ws = await c.open_session()
    await ws.send_json({"type": "message", "content": "slow 500 0.02"})
    seen = await receive_until(ws, lambda e: e["type"] == "stream_delta" and e["delta"] == "w4 ")
    out = ps(server, "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["actors"]
    assert row["session_id"] == sid and row["state"] == "running" and row["state_age"] == 0.0, row
    assert row["events"] >= len([e for e in seen if e["type"] == "stream_delta"])
    await ws.close()


def test_ps_says_how_old_a_state_is_when_the_front_could_not_answer():
    """The table shows a state older than 2 s with its age (the front was down or slow)."""
    from navi_actor.ops import format_listing

    row = {"session_id": "s1", "pid": 7, "state": "running", "state_age": 12.0, "run_id": "r" * 32,
           "turn_age": 30.0, "events": 3, "viewers": 1, "rss": 1 << 20, "cpu_percent": 0.0}
    table = format_listing([row, {**row, "session_id": "s2", "state_age": 0.0}], 2)
    assert "running (12s ago)" in table and table.count("ago") == 1
    assert table.endswith("(+ 2 warm actors ready for new sessions)")
    assert format_listing([], 1) == "no actors with a session; 1 warm actor ready for new sessions"


async def test_healthz_metrics_and_ps_count_the_same_actors(make_server, client):
    """Two warm actors and one idle session actor: /healthz says actors 3, warm 2; /metrics' navi_actors sum to 3
    with warm 2 and idle 1; ps lists the one session and the two warm ones."""
    server = make_server("tests.agents:scripted", args=["--warm-actors", "2"])
    c = client(server)
    _, ws = await c.open_session()
    assert text_of(await run_turn(ws, "hello")) == "hello "

    async def health() -> dict[str, Any]:
        async with c.http.get(server.url + "/healthz") as r:
            assert r.status == 200
            return await r.json()

    deadline = time.monotonic() + 10
    while (body := await health())["warm"] != 2:  # the pool is refilled REFILL_DELAY after a turn took one
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)
    assert (body["actors"], body["warm"], body["runs"]) == (3, 2, 0), body
    m = await scrape(c)
    states = {labels[0][1]: v for (name, labels), v in m.items() if name == "navi_actors"}
    assert sum(states.values()) == 3 and states["warm"] == 2 and states["idle"] == 1, states
    listing = json.loads(ps(server, "--json").stdout)
    assert [r["state"] for r in listing["actors"]] == ["idle"] and listing["warm"] == 2
    assert ps(server).stdout.rstrip().endswith("(+ 2 warm actors ready for new sessions)")
    async with c.http.get(server.url + "/runs") as r:
        assert (await r.json())["warm"] == 2
    await ws.close()


async def test_every_stop_is_timed(make_server, client):
    """A user's stop and two operators' stops: navi_stops_total counts 3, and navi_stop_seconds has 3 samples."""
    server = make_server("tests.agents:scripted", args=LADDER)
    c = client(server)
    sid, ws = await c.busy_session()
    await c.stop(sid)
    assert (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))[-1]["type"] == "stream_stopped"
    for _ in range(2):
        sid, ws = await c.busy_session()
        out = script("navi-kill", "--data-dir", str(server.data_dir), sid)
        assert out.returncode == 0, out.stdout + out.stderr
        assert (await receive_until(ws, lambda e: e["type"] in FINAL_TYPES))[-1]["type"] == "stream_stopped"
    m = await scrape(c)
    stops = sum(v for (name, _), v in m.items() if name == "navi_stops_total")
    assert stops == 3 and m[("navi_stop_seconds_count", ())] == 3, m
    assert 0 < m[("navi_stop_seconds_sum", ())] < 3 * 10


# ── the command line ────────────────────────────────────────────────────────


async def test_kill_says_when_no_actor_matches_and_fails(make_server, client):
    """kill --older-than 10m (or --idle) with nothing that old says so and exits 1, as an unknown session does;
    the running turn is untouched."""
    server = make_server("tests.agents:scripted")
    c = client(server)
    sid, ws = await c.busy_session()
    out = script("navi-kill", "--data-dir", str(server.data_dir), "--older-than", "10m")
    assert (out.returncode, out.stdout) == (1, "no actor matches --older-than 10m (1 with a session)\n"), out
    out = script("navi-kill", "--data-dir", str(server.data_dir), "--idle", "--dry-run")
    assert (out.returncode, out.stdout) == (1, "no actor matches --idle (1 with a session)\n"), out
    out = script("navi-kill", "--data-dir", str(server.data_dir), "f" * 32)
    assert (out.returncode, out.stdout) == (1, f"{'f' * 32}  -  not found\n"), out
    assert (await receive_until(ws, lambda e: e["type"] == "stream_delta"))  # still streaming
    await ws.close()


def test_help_says_none_for_empty_defaults():
    """serve --help shows (none), never "default ]", for options whose default is empty."""
    text = subprocess.run([sys.executable, "-m", "navi_actor", "serve", "--help"], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout
    text = " ".join(text.split())  # argparse wraps lines where it likes
    assert "default ]" not in text and "NAVI_TOKENS_FILE; default (none)]" in text
    assert "NAVI_ALLOWED_ORIGINS; default (none)]" in text
